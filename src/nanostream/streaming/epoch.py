"""One reader's epoch: ``EpochWalk`` reads its node's piece as far as the bound lets it, then the rest by the
settled deal; ``Tally`` keeps ``K`` (the row groups left among shards with known counts) and settles the epoch;
``EpochCounts`` adds the reader's waits for more counts. The file provider hears where the reader is
(``reader_at``) before each file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from ..errors import ConfigError
from ..fetch.partial import part_path
from ..sources.counts import FETCH_EVERY, CountBook
from ..sources.footers import local_count
from .files import FolderFiles
from .order import Cursor, EpochDeal, NeedCounts, SettledDeal, reader_place
from .plan import Plan, Position
from .reader import file_id

log = logging.getLogger(__name__)
Gate = Callable[[int], Awaitable[bool]]
T = TypeVar("T")
GRACE = 2.0  # seconds to wait for other nodes' counts before reading footers remotely
LANDING = 30.0  # ... and for a download of the node's under way (a stalled one does not hold the reader)
BATCH = 16  # remote footers read at once


class Tally:
    """``K`` of one epoch's deal, and the settled deal once every count of the epoch is known."""

    def __init__(self, deal: EpochDeal, book: CountBook) -> None:
        self.deal, self.book = deal, book
        self._left_at = {deal.order[p]: p for p in deal.left}
        self._seen = 0  # entries of book.log counted
        self._unknown = len(self._left_at)
        self.known_left = 0
        self.settled: SettledDeal | None = None

    def length_lower(self) -> int:
        """Row groups every reader reads this epoch: exact once settled, else a lower bound (``K // R``)."""
        self.refresh()
        return self.settled.length if self.settled is not None else self.known_left // self.deal.world_size

    def refresh(self) -> bool:
        """Count what the book learned since the last call (True if anything); settle once every count is known."""
        log, seen = self.book.log, self._seen
        while self._seen < len(log):
            shard = log[self._seen]
            self._seen += 1
            p = self._left_at.pop(shard, None)
            if p is not None:
                self.known_left += len(self.deal.places(p, self.book.get(shard) or 0))
                self._unknown -= 1
        if self._unknown == 0 and self.settled is None:
            self.settled = SettledDeal(self.deal, self.book.snapshot())
        return self._seen > seen


class EpochCounts(Tally):
    """One reader's tally of one epoch, and its waits for more counts: woken by what ``watch`` learns; after
    ``GRACE`` s without enough (none on one node, ``LANDING`` while the node's next download lands) it reads
    remote footers, ``BATCH`` at a time, the ones the bound needs soonest first."""

    def __init__(self, deal: EpochDeal, book: CountBook, plan: Plan, credentials: Any) -> None:
        super().__init__(deal, book)
        self.plan, self.credentials = plan, credentials
        self.node = plan.ranks.rank // deal.local_world_size
        self.at = 0  # index into the node's piece of the shard being read (what to ask for first)
        self._learned = asyncio.Event()

    def refresh(self) -> bool:
        if super().refresh():
            self._learned.set()
            return True
        return False

    async def until_safe(self, j: int) -> bool:
        """Wait until row group ``j`` of the node's piece may be read: True; False once the epoch is settled
        (the reader then goes on by the settled deal)."""
        await self._wait(lambda: self.settled is not None or j < self.deal.safe(self.known_left))
        return self.settled is None

    async def settle(self) -> SettledDeal:
        """The settled deal, waiting for every count of the epoch."""
        await self._wait(lambda: self.settled is not None)
        assert self.settled is not None
        return self.settled

    async def _wait(self, ok: Callable[[], bool]) -> None:
        self.refresh()
        since = time.monotonic()
        while not ok():
            landing = any(part_path(self.plan.folder / self.book.files[s].path).exists() for s in self._own_next())
            grace = LANDING if landing else GRACE if self.deal.nodes > 1 else 0.0
            left = grace - (time.monotonic() - since)
            if left <= 0:
                await self.book.read_remote(self._priority()[:BATCH], self.credentials, self.plan.options.retry)
            else:
                self._learned.clear()
                with contextlib.suppress(asyncio.TimeoutError):  # woken by what ``watch`` learns
                    await asyncio.wait_for(self._learned.wait(), min(left, 1.0))
            self.refresh()

    async def watch(self) -> None:
        """While the reader reads: learn the counts of the node's next shards as they land, and what the counts
        file and the sharers tell."""
        while self.settled is None:  # polled: downloads, the counts file and sharers are other processes' work
            landed = [s for s in self._own_next() if (self.plan.folder / self.book.files[s].path).exists()]
            await self.book.look(landed)
            self.refresh()
            await asyncio.sleep(FETCH_EVERY)

    def _own_next(self) -> list[int]:
        piece = self.deal.piece(self.node)
        nxt = [self.deal.order[p] for p in piece[self.at:]]
        return [s for s in nxt if s in self._left_at][: self.plan.options.read_ahead.files + 1]

    def _priority(self) -> list[int]:
        """Shards whose counts are unknown, the ones the bound needs soonest first."""
        out = self._own_next()
        pieces = [self.deal.piece(n) for n in range(self.deal.nodes)]
        for k in range(max((len(x) for x in pieces), default=0)):
            for piece in pieces:
                if k < len(piece) and self.deal.order[piece[k]] in self._left_at:
                    out.append(self.deal.order[piece[k]])
        return list(dict.fromkeys(out))



class Emitter(Protocol):
    """What hands a shard's row groups over (``Producer``); ``length``: the reader's row groups this epoch
    once settled (-1 before), so the last one is marked."""

    length: int

    async def emit_shard(self, epoch: int, shard: int, groups: list[int], first: int, upcoming: list[int],
                         base: Cursor | None, gate: Gate | None = None) -> int: ...


async def with_counts(book: CountBook, plan: Plan, answer: Callable[[Mapping[int, int]], T]) -> T:
    """``answer(counts)``, learning the counts it needs first (``NeedCounts``) until it can tell."""
    while True:
        try:
            return answer(book.snapshot())
        except NeedCounts as exc:
            await book.require(list(exc.shards), plan.credentials(), plan.options.retry)


def taken_at(deal: EpochDeal, rank: int, position: Position, counts: Mapping[int, int]) -> int:
    """How many of its row groups reader ``rank`` had taken at ``position`` (checked against the deal;
    ``NeedCounts`` if the counts do not tell yet)."""
    try:
        if position.taken > 0:
            p, g = reader_place(deal, rank, position.taken - 1, counts)
            if (deal.order[p], deal.row_group(p, g, counts[deal.order[p]])) == (position.shard, position.row_group):
                return position.taken
    except IndexError:
        pass
    raise ConfigError(f"resume position {position}: row group {position.row_group} of shard {position.shard} is "
                      f"not one rank {rank} reads in epoch {position.epoch}; resume with the same data, Ranks, "
                      "shuffle and seed")


class EpochWalk:
    """One reader's way through its epochs."""

    def __init__(self, plan: Plan, book: CountBook, files: FolderFiles, out: Emitter) -> None:
        self.plan, self.book, self.files, self.out = plan, book, files, out

    async def taken_at(self, deal: EpochDeal, start: Position) -> int:
        return await with_counts(self.book, self.plan, lambda c: taken_at(deal, self.plan.ranks.rank, start, c))

    async def read(self, epoch: int, deal: EpochDeal, counts: EpochCounts, skip: int) -> None:
        """The reader's row groups of one epoch: its node's piece as far as the bound lets it (while counts
        arrive), then the rest by the settled deal."""
        p, files = self.plan, self.files
        ahead = p.options.read_ahead.files
        L, node, i = deal.local_world_size, p.ranks.rank // deal.local_world_size, p.ranks.rank % deal.local_world_size
        taken = skip  # the reader's row groups handed over (or skipped by a resume) this epoch
        counts.refresh()
        self.out.length = counts.settled.length if counts.settled is not None else -1
        if counts.settled is None:
            piece, offset = deal.piece(node), 0
            for k, pos in enumerate(piece):
                counts.at = k
                shard = deal.order[pos]
                upcoming = [deal.order[q] for q in piece[k + 1:k + 1 + ahead]]
                skipping = (offset + (i - offset) % L) // L < taken  # a resume may have read all of it
                if not skipping:  # before the download that may count it
                    await files.reader_at(epoch, taken, deal)
                n = await self._count(shard, upcoming, skipping)
                places = deal.places(pos, n)
                todo = [(j, deal.row_group(pos, places[j - offset], n))
                        for j in range(offset + (i - offset) % L, offset + len(places), L) if j // L >= taken]
                offset += len(places)
                if not todo:
                    continue
                await files.reader_at(epoch, taken, deal)  # again, with its count known now

                async def gate(m: int, todo: list[tuple[int, int]] = todo) -> bool:
                    return await counts.until_safe(todo[m][0])

                done = await self.out.emit_shard(epoch, shard, [g for _, g in todo], taken, upcoming, deal.base, gate)
                taken += done
                if done < len(todo):
                    break  # settled meanwhile: go on by the settled deal
        settled = await counts.settle()
        self.out.length = settled.length
        runs = shard_runs(settled.sequence(p.ranks.rank), taken)
        for k, (shard, first, groups) in enumerate(runs):
            upcoming = _next_shards(runs, k, ahead)
            await files.reader_at(epoch, first, deal, settled)
            await self.out.emit_shard(epoch, shard, groups, first, upcoming, deal.base)

    async def _count(self, shard: int, upcoming: list[int], skipping: bool = False) -> int:
        """The row groups of a shard of the node's piece: known, else from its footer (downloaded if missing;
        ``skipping``: a resume may have read all of it already, so its footer alone is asked for)."""
        files, book = self.files, self.book
        n = book.get(shard)
        if n is None:
            await book.look([shard])
            n = book.get(shard)
        if n is None and skipping:
            n = (await book.require([shard], files.credentials, self.plan.options.retry))[shard]
        if n is None:  # the node reads it anyway: its footer comes with it
            lock = await files.hold(shard, upcoming)
            try:
                n = await asyncio.to_thread(local_count, lock.path, files.remote(shard))
                if n is None:  # unreadable: fetched once more (as a read would)
                    old, lock = lock, None
                    seen = file_id(old.path)
                    old.release()
                    log.warning("%s is not a readable parquet file; fetching it again", old.path)
                    lock = await files.refetch(shard, seen)
                    n = await asyncio.to_thread(local_count, lock.path, False)
            finally:
                if lock is not None:
                    lock.release()
            assert n is not None
            book.learn(shard, n, f"the footer of {self.plan.folder / self.plan.files[shard].path}")
        landed = [s for s in upcoming if book.get(s) is None and files.path(s).exists()]
        if landed:  # the next shards downloaded meanwhile: their counts, for the bound and the other nodes
            await book.look(landed)
        await book.sync()
        return n


def shard_runs(seq: list[tuple[int, int]], skip: int) -> list[tuple[int, int, list[int]]]:
    """``seq[skip:]`` as runs of one shard: ``(shard, count before the run, row groups)``."""
    runs: list[tuple[int, int, list[int]]] = []
    for i in range(skip, len(seq)):
        shard, group = seq[i]
        if not runs or runs[-1][0] != shard:
            runs.append((shard, i, []))
        runs[-1][2].append(group)
    return runs


def _next_shards(runs: list[tuple[int, int, list[int]]], k: int, n: int) -> list[int]:
    """The first ``n`` shards after run ``k`` other than its own."""
    out: list[int] = []
    for j in range(k + 1, len(runs)):
        if len(out) >= n:
            break
        if runs[j][0] != runs[k][0] and runs[j][0] not in out:
            out.append(runs[j][0])
    return out
