"""One reader's epoch (``EpochWalk``): its node's piece as far as the bound lets it, then the rest by the
settled deal; the file provider hears where the reader is before each file (``reader_at``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from ..errors import ConfigError
from ..sources.counts import CountBook
from ..sources.footers import local_count
from .counting import EpochCounts
from .cursor import Cursor
from .files import FolderFiles
from .order import EpochDeal, NeedCounts
from .plan import Plan, Position
from .reader import file_id
from .settle import reader_place

log = logging.getLogger(__name__)
Gate = Callable[[int], Awaitable[bool]]
T = TypeVar("T")


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
