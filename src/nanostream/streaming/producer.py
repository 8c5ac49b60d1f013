"""The producer behind a ``Stream``, its one task: per epoch, the reader's row groups (its node's piece as far
as the bound lets it, then the rest by the settled deal) while ``EpochCounts.watch`` learns counts; each row
group is read on the reader thread into the bounded queue. The file provider hears where the reader is
(``reader_at``) before each file.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import pyarrow as pa

from ..concurrency import hand_off, task_group
from ..errors import ConfigError, CorruptShardError
from ..sources.counts import CountBook
from .epoch import EpochCounts, taken_at, with_counts
from .files import FolderFiles
from .order import Cursor, EpochDeal
from .plan import Chunk, Plan, Position
from .reader import ShardReader, file_id

log = logging.getLogger(__name__)
T = TypeVar("T")
Gate = Callable[[int], Awaitable[bool]]  # called with the reader's count of the epoch
READS_QUEUED = 2  # row-group reads queued on the reader thread beyond the one being handed over


class Producer:
    """Reads ``plan``'s row groups in order through ``files`` and puts ``Chunk``s into ``queue``."""

    def __init__(self, plan: Plan, book: CountBook, files: FolderFiles) -> None:
        self.plan, self.book, self.files = plan, book, files
        self.queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue(plan.options.read_ahead.row_groups)
        self.produced = 0  # row groups put into the queue
        self.max_queued = 0  # largest queue size seen right after a put
        self.length = -1  # row groups the reader reads this epoch, once settled (-1: not yet)
        # the reader thread (started by the first job): its jobs run in order, so a file is never closed under a
        # read; the result of a job nobody awaits is dropped with its future
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nanostream-read")

    async def run(self) -> None:
        """Every row group, then None (or the error that ended the stream). The reader thread and every file
        opened are gone when it returns, also when it is cancelled."""
        end: BaseException | None = None
        try:
            async with self.files:
                await self.files.prepare()
                await self._produce()
        except Exception as exc:  # noqa: BLE001  (delivered to the consumer, raised there)
            end = exc
        finally:
            await asyncio.to_thread(self._executor.shutdown)  # joined once it has finished everything queued
            try:
                await self.book.sync(force=True)  # what this stream learned, for the others
            except Exception as exc:  # noqa: BLE001  (best effort at the end: the counts are learned again)
                log.debug("could not save or share the row-group counts: %s", exc)
        await self.queue.put(end)

    async def _produce(self) -> None:
        p, start = self.plan, self.plan.start
        if p.options.replay:
            await self._replay()
        first, end = p.first_epoch(), p.options.epochs
        for epoch in itertools.count(first) if end is None else range(first, end):
            deal = p.deal(epoch, p.start_base() if start is not None else None)
            counts = EpochCounts(deal, self.book, p)
            skip = 0
            if isinstance(start, Position):  # a resume: the reader's row groups of the epoch before it
                skip = await with_counts(self.book, p, partial(taken_at, deal, p.ranks.rank, start))
            async with task_group() as group:
                watcher = group.create_task(counts.watch(), name="nanostream-counts")
                await self._read_epoch(epoch, deal, counts, skip)
                watcher.cancel()
            start = None

    async def _read_epoch(self, epoch: int, deal: EpochDeal, counts: EpochCounts, skip: int) -> None:
        """The reader's row groups of one epoch: its node's piece as far as the bound lets it (while counts
        arrive), then the rest by the settled deal."""
        p, files = self.plan, self.files
        ahead = p.options.read_ahead.files
        L, node, i = deal.local_world_size, p.ranks.rank // deal.local_world_size, p.ranks.rank % deal.local_world_size
        taken = skip  # the reader's row groups handed over (or skipped by a resume) this epoch
        counts.refresh()
        self.length = counts.settled.length if counts.settled is not None else -1
        if counts.settled is None:
            piece, offset = deal.pieces[node], 0
            for k, pos in enumerate(piece):
                counts.at = k
                shard = deal.order[pos]
                upcoming = [deal.order[q] for q in piece[k + 1:k + 1 + ahead]]
                skipping = (offset + (i - offset) % L) // L < taken  # a resume may have read all of it
                if not skipping:  # before the download that may count it
                    await files.reader_at(epoch, taken, deal)
                n = await self._count(shard, upcoming, skipping)
                places = deal.places(pos, n)
                todo = [deal.row_group(pos, places[j - offset], n)  # the reader's: j = i + L * (its count)
                        for j in range(offset + (i - offset) % L, offset + len(places), L) if j // L >= taken]
                offset += len(places)
                if not todo:
                    continue
                await files.reader_at(epoch, taken, deal)  # again, with its count known now
                done = await self.emit_shard(epoch, shard, todo, taken, upcoming, deal.base, counts.until_safe)
                taken += done
                if done < len(todo):
                    break  # settled meanwhile: go on by the settled deal
        settled = await counts.settle()
        self.length = settled.length
        seq, runs = settled.sequence(p.ranks.rank), settled.runs(p.ranks.rank)
        for k, (start, shard) in enumerate(runs):
            end = runs[k + 1][0] if k + 1 < len(runs) else len(seq)
            if end > taken:
                first = max(start, taken)
                await files.reader_at(epoch, first, deal, settled)
                await self.emit_shard(epoch, shard, [g for _, g in seq[first:end]], first,
                                      _next_shards(runs, k, ahead), deal.base)

    async def _count(self, shard: int, upcoming: list[int], skipping: bool = False) -> int:
        """The row groups of a shard of the node's piece: known, else from its footer (downloaded if missing;
        ``skipping``: a resume may have read all of it already, so its footer alone is asked for)."""
        files, book = self.files, self.book
        n = book.get(shard)
        if n is None:
            await book.look([shard])
            n = book.get(shard)
        if n is None and skipping:
            n = (await book.require([shard], self.plan.credentials, self.plan.options.retry))[shard]
        if n is None:  # the node reads it anyway: its footer comes with it
            n = await self._with_file(shard, upcoming, self._footer_count)
            book.learn(shard, n, f"the footer of {files.path(shard)}")
        landed = [s for s in upcoming if book.get(s) is None and files.path(s).exists()]
        if landed:  # the next shards downloaded meanwhile: their counts, for the bound and the other nodes
            await book.look(landed)
        await book.sync()
        return n

    async def _replay(self) -> None:
        """Put the options' ``replay`` row groups (sorted by shard), each once, flagged, before the order."""
        replay = sorted(set(self.plan.options.replay))
        shards = [s for s, _ in itertools.groupby(s for s, _ in replay)]
        for k, (shard, pairs) in enumerate(itertools.groupby(replay, key=lambda sg: sg[0])):
            await self.emit_shard(0, shard, [g for _, g in pairs], 0, shards[k + 1:], None, replay=True)

    async def _with_file(self, shard: int, upcoming: list[int], use: Callable[[Path], Awaitable[T]]) -> T:
        """``use(path)`` of the shard's local file, read-locked until the reader thread is done with it; a corrupt
        file that can be fetched again is, once, and used again."""
        lock = await self.files.hold(shard, upcoming)
        try:
            seen = file_id(lock.path)
            try:
                return await use(lock.path)
            except CorruptShardError as exc:
                if not self.files.remote(shard):
                    raise
                log.warning("%s; fetching it again", exc)
            # queued after the file's close; if this wait is cancelled, ``finally`` releases it (twice is harmless)
            await asyncio.wrap_future(self._executor.submit(lock.release))
            lock = await self.files.refetch(shard, seen)
            return await use(lock.path)
        finally:
            self._executor.submit(lock.release)

    async def _footer_count(self, path: Path) -> int:
        handle = await self._open(path)
        self._executor.submit(handle.close)
        return handle.num_row_groups

    async def emit_shard(self, epoch: int, shard: int, groups: list[int], first: int, upcoming: list[int],
                         base: Cursor | None, gate: Gate | None = None, replay: bool = False) -> int:
        """Put row groups ``groups`` of one shard; ``first`` is the reader's count before them; ``gate(t)`` is
        awaited before its ``t``-th is put (False: stop there); ``replay``: the options' ``replay`` row groups.
        Up to ``READS_QUEUED`` reads wait on the reader thread so it never idles. Returns how many were put."""
        done = 0  # of ``groups``, handed over so far (a re-fetched file goes on from there)

        async def emit(path: Path) -> int:
            nonlocal done
            handle = await self._open(path)
            pending: collections.deque[Future[pa.ChunkedArray]] = collections.deque()
            try:
                self.book.learn(shard, handle.num_row_groups, f"the footer of {path}")
                beyond = [g for g in groups if g >= handle.num_row_groups]
                if beyond:
                    raise ConfigError(f"{path} has {handle.num_row_groups} row groups, but a resume state names row "
                                      f"group {beyond[0]}: resume with the files the run was started with")
                while done < len(groups):
                    while len(pending) < READS_QUEUED and done + len(pending) < len(groups):
                        pending.append(self._executor.submit(handle.read, groups[done + len(pending)]))
                    if gate is not None and not await gate(first + done):
                        break
                    column = await asyncio.wrap_future(pending.popleft())  # if cancelled: dropped unless started
                    taken = first + done + 1
                    await self.queue.put(Chunk(column, path, Position(epoch, shard, groups[done], taken, base),
                                               last=not replay and taken == self.length, replay=replay))
                    done += 1
                    self.produced += 1
                    self.max_queued = max(self.max_queued, self.queue.qsize())
                return done
            finally:
                for fut in pending:  # reads ahead that nobody will take: dropped if not started
                    fut.cancel()
                self._executor.submit(handle.close)  # queued after any read of this file

        return await self._with_file(shard, upcoming, emit)

    async def _open(self, path: Path) -> ShardReader:
        # a cancelled open's file is closed on the reader thread, as it ends
        return await hand_off(self._executor.submit(ShardReader, path, self.plan.catalog.text_column), ShardReader.close)


def _next_shards(runs: list[tuple[int, int]], k: int, n: int) -> list[int]:
    """The first ``n`` shards of the runs (``SettledDeal.runs``) after run ``k``, other than its own."""
    out: list[int] = []
    for _, shard in itertools.islice(runs, k + 1, None):
        if len(out) >= n:
            break
        if shard != runs[k][1] and shard not in out:
            out.append(shard)
    return out
