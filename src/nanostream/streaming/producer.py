"""The producer behind ``stream()``: what comes next, read on a worker thread, into a bounded queue.

Owns each epoch's reading order (``nanostream.streaming.order``: the same global order on every
rank, dealt to nodes and readers, equal work): first the reader's share of its node's piece,
started at once and read as far as the bound allows while row-group counts arrive (a shard's
count from its footer as it is opened, the others through ``counting.py``), then the rest by
the settled plan; resume skipping, the single reader thread (pyarrow releases
the GIL while it decodes; the file reading itself is ``nanostream.streaming.reader``), the one
re-fetch of a corrupt shard, and the hand-over of batches (or the error that ended
the stream) to the consumer through an ``asyncio.Queue`` of at most ``queue_size``
row groups, kept in Arrow memory until the consumer takes them. The producer task,
its thread and every file it opened are gone when ``run()`` returns, also when it
is cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from ..errors import ConfigError, CorruptShardError
from ..sources.counts import CountBook, book_for
from .cache.budget import FolderBudget
from .cache.holders import ReadHold
from .counting import EpochCounts
from .cursor import Cursor
from .epoch import EpochWalk, Gate
from .plan import Chunk, Plan, Position
from .reader import ShardReader, close_opened
from .supply import ShardSource, file_id

__all__ = ["Producer"]

log = logging.getLogger(__name__)
T = TypeVar("T")
READ_AHEAD = 2  # row-group reads queued on the reader thread beyond the batch being handed over


class _End:
    """Queue sentinel: the stream is over (``error`` is None) or failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Producer:
    """Reads the plan's row groups in order and puts ``Chunk``s into ``queue``."""

    def __init__(self, plan: Plan, book: CountBook | None = None) -> None:
        self.plan = plan
        self.book = book if book is not None else book_for(plan.data_dir, plan.files, plan.sharer, plan.scope())
        self.queue: asyncio.Queue[Chunk | _End] = asyncio.Queue(maxsize=plan.queue_size)
        self.produced = 0  # batches put into the queue
        self.max_queued = 0  # largest queue size seen right after a put
        self.source: ShardSource | None = None
        self._left = 0  # row groups of the current shard not yet handed over
        self.length = -1  # row groups the reader reads this epoch, once settled (-1: not yet)
        self._executor: ThreadPoolExecutor | None = None
        self._replaying = False  # the chunks put now are the plan's ``replay`` row groups

    async def run(self) -> None:
        """The producer task: every batch, then an end marker (carrying the error, if one ended it)."""
        end = _End()
        try:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="nanostream-read")
            p = self.plan
            # a folder with nothing to fetch has nothing to evict either: its size was checked up front
            bounded = p.cache_limit is not None and p.access() is not None
            budget = FolderBudget(p.data_dir, p.cache_limit, p.cache_policy) if bounded else None
            async with ShardSource(p.data_dir, p.catalog, access=p.access(), text_column=p.text_column,
                                   workers=p.fetch_workers, ahead=p.fetch_ahead, retry=p.retry,
                                   budget=budget) as source:
                self.source = source
                await self._produce(source)
        except Exception as exc:  # noqa: BLE001  (delivered to the consumer, raised there)
            end = _End(exc)
        finally:
            await self._stop_thread()
            try:
                await self.book.sync(force=True)  # what this stream learned, for the others
            except Exception as exc:  # noqa: BLE001  (best effort at the end: the counts are learned again)
                log.debug("could not save or share the row-group counts: %s", exc)
        await self.queue.put(end)

    def _epochs(self) -> Iterator[int]:
        first = self.plan.start.epoch if self.plan.start else 0
        return itertools.count(first) if self.plan.epochs is None else iter(range(first, self.plan.epochs))

    async def _produce(self, source: ShardSource) -> None:
        p = self.plan
        if p.cache_limit is not None:  # before any download: a budget too small fails at once
            sizes = p.split_sizes()
            if None in sizes:
                sizes = await source.learn_sizes(p.shards, sizes)
            await asyncio.to_thread(p.check_cache, sizes)
        if p.replay:
            await self._replay(source)
        start = p.start
        walk = EpochWalk(p, self.book, source, self)
        for epoch in self._epochs():
            base = p.start_base() if start is not None else None
            deal = await walk.deal(epoch, base)
            counts = EpochCounts(deal, self.book, p.rank, p.data_dir, source.access, p.retry, p.fetch_ahead)
            skip = await walk.resume_taken(deal, start) if isinstance(start, Position) else 0
            watcher = asyncio.create_task(counts.watch(), name="nanostream-counts")
            try:
                await walk.read(epoch, deal, counts, skip)
            finally:
                watcher.cancel()
                await asyncio.wait([watcher])
            failed = None if watcher.cancelled() else watcher.exception()
            if failed is not None:
                raise failed
            start = None

    async def _replay(self, source: ShardSource) -> None:
        """Put the plan's ``replay`` row groups (sorted by shard), each once, flagged, before the order."""
        shards = [s for s, _ in itertools.groupby(s for s, _ in self.plan.replay)]
        self._replaying = True
        try:
            for k, (shard, pairs) in enumerate(itertools.groupby(self.plan.replay, key=lambda sg: sg[0])):
                await self.emit_shard(source, 0, shard, [g for _, g in pairs], 0, shards[k + 1:], None)
        finally:
            self._replaying = False

    async def emit_shard(self, source: ShardSource, epoch: int, shard: int, groups: list[int], first: int,
                         upcoming: list[int], base: Cursor | None, gate: Gate | None = None) -> int:
        """Put row groups ``groups`` of one shard; ``first`` is the reader's count before them; ``gate(k)`` is
        awaited before the ``k``-th is put (False: stop there). The file is held from before it is opened
        until after it is closed (both on the reader thread). Returns how many were put."""
        done = 0  # of ``groups``, handed over so far
        refetched = False
        hold: ReadHold | None = await source.get(shard, upcoming)
        try:
            while True:
                assert hold is not None
                path = hold.path
                seen = None
                try:
                    handle = await self._open(path)
                    seen = handle.seen
                    try:
                        self.book.learn(shard, handle.num_row_groups, f"the footer of {path}")
                        beyond = [g for g in groups if g >= handle.num_row_groups]
                        if beyond:
                            raise ConfigError(f"{path} has {handle.num_row_groups} row groups, but row group "
                                              f"{beyond[0]} was asked for: a resume state of other data? resume "
                                              "with the files the run was started with")
                        self._left = len(groups) - done
                        try:
                            await self._emit_row_groups(handle, epoch, shard, groups[done:], first + done, base,
                                                        gate, done)
                        finally:
                            done = len(groups) - self._left  # handed over so far, for a retry after a re-fetch
                        return done
                    finally:
                        # queued on the reader thread after any read of this file; not awaited (the
                        # thread is drained before the producer ends)
                        self._submit(handle.close).add_done_callback(_retrieve)
                except CorruptShardError as exc:
                    if refetched or not source.remote_known(shard):
                        raise
                    refetched = True
                    log.warning("%s; fetching it again", exc)
                    old, hold = hold, None
                    await self._submit(old.release)  # after the close: the reader thread runs them in order
                    hold = await source.replace(shard, seen or file_id(path))
        finally:
            if hold is not None:  # released once the reader thread has closed the file
                self._submit(hold.release).add_done_callback(_retrieve)

    async def _emit_row_groups(self, handle: ShardReader, epoch: int, shard: int, groups: list[int], taken: int,
                               base: Cursor | None, gate: Gate | None = None, gated: int = 0) -> None:
        """Read ``groups`` in order and put them (``gate(gated + k)`` awaited before the ``k``-th: False stops).
        Up to ``READ_AHEAD`` reads wait on the reader thread, so it never idles while the loop hands a batch
        over."""
        pending: collections.deque[asyncio.Future[pa.ChunkedArray]] = collections.deque()
        try:
            for k, group in enumerate(groups):
                while len(pending) < READ_AHEAD and k + len(pending) < len(groups):
                    pending.append(self._submit(handle.read, groups[k + len(pending)]))
                if gate is not None and not await gate(gated + k):
                    return
                column = await pending.popleft()  # if cancelled: dropped unless started
                await self._put(Chunk(column, handle.path, shard, group, epoch, taken + k + 1, base,
                                      last=not self._replaying and taken + k + 1 == self.length,
                                      replay=self._replaying))
                self._left -= 1
        finally:
            for fut in pending:  # reads ahead that nobody will take: drop them if not started
                fut.cancel()
                fut.add_done_callback(_retrieve)

    async def _put(self, chunk: Chunk) -> None:
        await self.queue.put(chunk)
        self.produced += 1
        self.max_queued = max(self.max_queued, self.queue.qsize())

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn`` on the reader thread. One thread, first in first out: a ``close`` queued
        after a read runs after it, so a file is never closed under a read in flight."""
        assert self._executor is not None
        cf: Future[T] = self._executor.submit(fn, *args)
        return asyncio.wrap_future(cf)

    async def _open(self, path: Path) -> ShardReader:
        assert self._executor is not None
        cf: Future[ShardReader] = self._executor.submit(ShardReader, path, self.plan.text_column)
        try:
            return await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            self._executor.submit(close_opened, cf)  # runs after the open: closes what it opened
            raise

    async def _stop_thread(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        fence = asyncio.wrap_future(executor.submit(lambda: None))
        executor.shutdown(wait=False)
        await asyncio.wait([fence])  # the thread has finished everything queued on it
        executor.shutdown(wait=True)  # joins a thread that is already exiting


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Done callback for results nobody awaits: mark their exception as seen."""
    if not fut.cancelled():
        fut.exception()
