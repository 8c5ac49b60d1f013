"""The producer behind ``stream()``: what comes next, read on a worker thread, into a bounded queue.

Owns the row-group census at start (``nanostream.sources.census``; the reader's first shard,
known without it on a fresh start, downloads meanwhile), each epoch's plan
(``nanostream.streaming.order``: the same global order on every rank, dealt to nodes and
readers, equal work), resume skipping, the single reader thread (pyarrow releases
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
from ..sources.census import row_group_counts
from .cache.budget import FolderBudget
from .cache.holders import ReadHold
from .horizon import Horizon
from .order import Cursor
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

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.queue: asyncio.Queue[Chunk | _End] = asyncio.Queue(maxsize=plan.queue_size)
        self.produced = 0  # batches put into the queue
        self.max_queued = 0  # largest queue size seen right after a put
        self.source: ShardSource | None = None
        self._left = 0  # row groups of the current shard not yet handed over
        self.counts: dict[int, int] | None = None  # row groups per shard (census), set by Stream or run()
        self._executor: ThreadPoolExecutor | None = None

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
        if self.counts is None:
            first = p.first_shard()
            if first is not None:  # known without the counts: download it while the footers are read
                source.want([first])
            self.counts = await row_group_counts(p.data_dir, p.shards, p.files, source.access, retry=p.retry)
        start = p.start
        horizon = Horizon(p, self.counts) if source.budget is not None else None
        for epoch in self._epochs():
            base = p.start_base() if start is not None else None
            ep = horizon.epoch_plan(epoch, base) if horizon is not None else p.epoch_plan(self.counts, epoch, base)
            seq = ep.sequence(p.rank)
            taken = _resume_index(seq, start, p.data_dir) if isinstance(start, Position) else 0
            runs = _runs(seq, taken)
            for k, (shard, first, groups) in enumerate(runs):
                upcoming: dict[int, None] = {}
                for r in itertools.islice(runs, k + 1, None):
                    if len(upcoming) >= p.fetch_ahead:
                        break
                    if r[0] != shard:
                        upcoming[r[0]] = None
                if horizon is not None:  # the node's future order, for every stream's evictions
                    await source.publish(await asyncio.to_thread(horizon.future, epoch, ep, first))
                await self._emit_shard(source, epoch, shard, groups, first, list(upcoming), ep.base)
            start = None

    async def _emit_shard(self, source: ShardSource, epoch: int, shard: int, groups: list[int], first: int,
                          upcoming: list[int], base: Cursor | None) -> None:
        """Put row groups ``groups`` of one shard; ``first`` is the reader's count before them. The file is
        held from before it is opened until after it is closed (both on the reader thread)."""
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
                        self._check_count(handle, shard)
                        self._left = len(groups) - done
                        try:
                            await self._emit_row_groups(handle, epoch, shard, groups[done:], first + done, base)
                        finally:
                            done = len(groups) - self._left  # handed over so far, for a retry after a re-fetch
                        return
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

    def _check_count(self, handle: ShardReader, shard: int) -> None:
        assert self.counts is not None
        if handle.num_row_groups != self.counts[shard]:
            raise ConfigError(f"{handle.path} has {handle.num_row_groups} row groups, but "
                              f"{self.plan.data_dir}/.nanostream.rowgroups.json says {self.counts[shard]}: the "
                              "folder's shards changed; delete that file and start again")

    async def _emit_row_groups(self, handle: ShardReader, epoch: int, shard: int, groups: list[int], taken: int,
                               base: Cursor | None) -> None:
        """Read ``groups`` in order and put them. Up to ``READ_AHEAD`` reads wait on the reader thread,
        so it never idles while the loop hands a batch over."""
        pending: collections.deque[asyncio.Future[pa.ChunkedArray]] = collections.deque()
        try:
            for k, group in enumerate(groups):
                while len(pending) < READ_AHEAD and k + len(pending) < len(groups):
                    pending.append(self._submit(handle.read, groups[k + len(pending)]))
                column = await pending.popleft()  # if cancelled: dropped unless started
                await self._put(Chunk(column, handle.path, shard, group, epoch, taken + k + 1, base))
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


def _runs(seq: list[tuple[int, int]], skip: int) -> list[tuple[int, int, list[int]]]:
    """``seq[skip:]`` as runs of one shard: ``(shard, count before the run, row groups)``."""
    runs: list[tuple[int, int, list[int]]] = []
    for i in range(skip, len(seq)):
        shard, group = seq[i]
        if not runs or runs[-1][0] != shard:
            runs.append((shard, i, []))
        runs[-1][2].append(group)
    return runs


def _resume_index(seq: list[tuple[int, int]], start: Position, data_dir: Path) -> int:
    """How many of ``seq`` the reader had taken at ``start`` (found by ``taken``, else searched)."""
    key = (start.shard, start.row_group)
    if 0 < start.taken <= len(seq) and seq[start.taken - 1] == key:
        return start.taken
    try:
        return seq.index(key) + 1
    except ValueError:
        raise ConfigError(f"resume position {start}: row group {start.row_group} of shard {start.shard} in "
                          f"{data_dir} is not one this rank reads in epoch {start.epoch}; resume with the same "
                          "rank, world_size, local_world_size, shuffle and seed (or from a Cursor)") from None
