"""The producer behind a ``Stream``, its one task: per epoch, ``EpochWalk`` decides what comes next while
``EpochCounts.watch`` learns counts; each row group is read on the reader thread into the bounded queue.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from ..concurrency import hand_off, task_group
from ..errors import ConfigError, CorruptShardError
from ..sources.counts import CountBook
from .cache.claims import ReadLock
from .epoch import EpochCounts, EpochWalk, Gate
from .files import FolderFiles
from .order import Cursor
from .plan import Chunk, Plan, Position
from .reader import ShardReader, file_id

log = logging.getLogger(__name__)
T = TypeVar("T")
READS_QUEUED = 2  # row-group reads queued on the reader thread beyond the one being handed over


class Producer:
    """Reads ``plan``'s row groups in order through ``files`` and puts ``Chunk``s into ``queue``."""

    def __init__(self, plan: Plan, book: CountBook, files: FolderFiles) -> None:
        self.plan, self.book, self.files = plan, book, files
        self.queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue(plan.options.read_ahead.row_groups)
        self.produced = 0  # row groups put into the queue
        self.max_queued = 0  # largest queue size seen right after a put
        self.length = -1  # row groups the reader reads this epoch, once settled (-1: not yet)
        self._left = 0  # row groups of the current shard not yet handed over
        self._executor: ThreadPoolExecutor | None = None
        self._replaying = False  # the chunks put now are the options' ``replay`` row groups

    async def run(self) -> None:
        """Every row group, then None (or the error that ended the stream). The reader thread and every file
        opened are gone when it returns, also when it is cancelled."""
        end: BaseException | None = None
        try:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="nanostream-read")
            async with self.files:
                await self.files.prepare()
                await self._produce()
        except Exception as exc:  # noqa: BLE001  (delivered to the consumer, raised there)
            end = exc
        finally:
            await self._stop_thread()
            try:
                await self.book.sync(force=True)  # what this stream learned, for the others
            except Exception as exc:  # noqa: BLE001  (best effort at the end: the counts are learned again)
                log.debug("could not save or share the row-group counts: %s", exc)
        await self.queue.put(end)

    def _epochs(self) -> Iterator[int]:
        first, epochs = self.plan.first_epoch(), self.plan.options.epochs
        return itertools.count(first) if epochs is None else iter(range(first, epochs))

    async def _produce(self) -> None:
        p, start = self.plan, self.plan.start
        if p.options.replay:
            await self._replay()
        walk = EpochWalk(p, self.book, self.files, self)
        for epoch in self._epochs():
            deal = p.deal(epoch, p.start_base() if start is not None else None)
            counts = EpochCounts(deal, self.book, p, self.files.credentials)
            skip = await walk.taken_at(deal, start) if isinstance(start, Position) else 0
            async with task_group() as group:
                watcher = group.create_task(counts.watch(), name="nanostream-counts")
                await walk.read(epoch, deal, counts, skip)
                watcher.cancel()
            start = None

    async def _replay(self) -> None:
        """Put the options' ``replay`` row groups (sorted by shard), each once, flagged, before the order."""
        replay = sorted(set(self.plan.options.replay))
        shards = [s for s, _ in itertools.groupby(s for s, _ in replay)]
        self._replaying = True
        try:
            for k, (shard, pairs) in enumerate(itertools.groupby(replay, key=lambda sg: sg[0])):
                await self.emit_shard(0, shard, [g for _, g in pairs], 0, shards[k + 1:], None)
        finally:
            self._replaying = False

    async def emit_shard(self, epoch: int, shard: int, groups: list[int], first: int, upcoming: list[int],
                         base: Cursor | None, gate: Gate | None = None) -> int:
        """Put row groups ``groups`` of one shard; ``first`` is the reader's count before them; ``gate(k)`` is
        awaited before the ``k``-th is put (False: stop there). The file is locked from before it is opened
        until after it is closed (both on the reader thread). Returns how many were put."""
        done = 0  # of ``groups``, handed over so far
        refetched = False
        lock: ReadLock | None = await self.files.hold(shard, upcoming)
        try:
            while True:
                assert lock is not None
                path, seen = lock.path, None
                try:
                    handle = await self._open(path)
                    seen = handle.seen
                    try:
                        self.book.learn(shard, handle.num_row_groups, f"the footer of {path}")
                        beyond = [g for g in groups if g >= handle.num_row_groups]
                        if beyond:
                            raise ConfigError(f"{path} has {handle.num_row_groups} row groups, but a resume state "
                                              f"names row group {beyond[0]}: resume with the files the run was "
                                              "started with")
                        self._left = len(groups) - done
                        try:
                            await self._emit_row_groups(handle, epoch, shard, groups[done:], first + done, base,
                                                        gate, done)
                        finally:
                            done = len(groups) - self._left  # handed over so far, for a retry after a re-fetch
                        return done
                    finally:  # queued after any read of this file; the thread is drained before the producer ends
                        self._submit(handle.close).add_done_callback(_retrieve)
                except CorruptShardError as exc:
                    if refetched or not self.files.remote(shard):
                        raise
                    refetched = True
                    log.warning("%s; fetching it again", exc)
                    old, lock = lock, None
                    await self._submit(old.release)  # after the close: the reader thread runs them in order
                    lock = await self.files.refetch(shard, seen or file_id(path))
        finally:
            if lock is not None:  # released once the reader thread has closed the file
                self._submit(lock.release).add_done_callback(_retrieve)

    async def _emit_row_groups(self, handle: ShardReader, epoch: int, shard: int, groups: list[int], taken: int,
                               base: Cursor | None, gate: Gate | None = None, gated: int = 0) -> None:
        """Read ``groups`` in order and put them (``gate(gated + k)`` awaited before the ``k``-th: False stops),
        with up to ``READS_QUEUED`` reads waiting on the reader thread so it never idles meanwhile."""
        pending: collections.deque[asyncio.Future[pa.ChunkedArray]] = collections.deque()
        try:
            for k, group in enumerate(groups):
                while len(pending) < READS_QUEUED and k + len(pending) < len(groups):
                    pending.append(self._submit(handle.read, groups[k + len(pending)]))
                if gate is not None and not await gate(gated + k):
                    return
                column = await pending.popleft()  # if cancelled: dropped unless started
                await self.queue.put(Chunk(column, handle.path, Position(epoch, shard, group, taken + k + 1, base),
                                           last=not self._replaying and taken + k + 1 == self.length,
                                           replay=self._replaying))
                self.produced += 1
                self.max_queued = max(self.max_queued, self.queue.qsize())
                self._left -= 1
        finally:
            for fut in pending:  # reads ahead that nobody will take: dropped if not started
                fut.cancel()
                fut.add_done_callback(_retrieve)

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn`` on the reader thread: first in first out, so a file is never closed under a read."""
        assert self._executor is not None
        return asyncio.wrap_future(self._executor.submit(fn, *args))

    async def _open(self, path: Path) -> ShardReader:
        assert self._executor is not None  # a cancelled open's file is closed on the reader thread, as it ends
        return await hand_off(self._executor.submit(ShardReader, path, self.plan.catalog.text_column), ShardReader.close)

    async def _stop_thread(self) -> None:
        """Join the reader thread once it has finished everything queued on it."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Done callback for results nobody awaits: mark their exception as seen."""
    if not fut.cancelled():
        fut.exception()
