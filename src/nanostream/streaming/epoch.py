"""One reader's epoch: its node's piece as far as the bound lets it, then the rest by the settled plan.

``EpochWalk.read`` decides which row groups of which shard the reader hands over next, in order,
and when it waits for row-group counts (``counting.py``); the producer (``producer.py``: the
reader thread, the queue) opens the files and hands the row groups over (``Emitter``). Before
the settlement a shard's count comes from its footer, downloaded if need be (the node reads it
anyway), and each row group waits at the bound (a gate); once settled, the reader goes on by
``EpochPlan.sequence`` from where it is. Also where a resumed ``Position`` is in an epoch
(``resume_taken``, ``resume_index``), and the node's future order for evictions under a
``cache_limit`` (``horizon.py``: one per stream, published before each file is asked for, with
unknown counts estimated by the mean of those known).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from ..errors import ConfigError
from ..sources.counts import CountBook
from ..sources.footers import local_count
from .counting import EpochCounts
from .cursor import Cursor
from .horizon import Horizon
from .order import EpochDeal, NeedCounts
from .plan import Plan, Position
from .settle import reader_place, settle
from .supply import ShardSource, file_id

log = logging.getLogger(__name__)
Gate = Callable[[int], Awaitable[bool]]


class Emitter(Protocol):
    """What hands a shard's row groups over (``Producer``); ``length``: the reader's row groups this epoch
    once settled (-1 before), so the last one is marked."""

    length: int

    async def emit_shard(self, source: ShardSource, epoch: int, shard: int, groups: list[int], first: int,
                         upcoming: list[int], base: Cursor | None, gate: Gate | None = None) -> int: ...


class EpochWalk:
    """One reader's way through its epochs (see the module docstring)."""

    def __init__(self, plan: Plan, book: CountBook, source: ShardSource, out: Emitter) -> None:
        self.plan, self.book, self.source, self.out = plan, book, source, out
        # the reader's future order for evictions under a cache_limit, on the run's clock (one per stream)
        self.horizon = Horizon(plan, book) if source.budget is not None else None

    async def deal(self, epoch: int, base: Cursor | None) -> EpochDeal:
        while True:
            try:
                return self.plan.epoch_deal(epoch, base, self.book.snapshot())
            except NeedCounts as exc:  # a cursor saved before spans: every count first
                await self.book.require(list(exc.shards), self.source.access, self.plan.retry)

    async def read(self, epoch: int, deal: EpochDeal, counts: EpochCounts, skip: int) -> None:
        """The reader's row groups of one epoch: its node's piece as far as the bound lets it (while counts
        arrive), then the rest by the settled plan."""
        p, source = self.plan, self.source
        L, node, i = deal.local_world_size, p.rank // deal.local_world_size, p.rank % deal.local_world_size
        taken = skip  # the reader's row groups handed over (or skipped by a resume) this epoch
        horizon = self.horizon
        counts.refresh()
        self.out.length = counts.plan.length if counts.plan is not None else -1
        if counts.plan is None:
            piece, offset = deal.piece(node), 0
            for k, pos in enumerate(piece):
                counts.at = k
                shard = deal.order[pos]
                upcoming = [deal.order[q] for q in piece[k + 1:k + 1 + p.fetch_ahead]]
                skipping = (offset + (i - offset) % L) // L < taken  # a resume may have read all of it
                if horizon is not None and not skipping:  # before the download that may count it (a demand)
                    await self._publish(epoch, deal, taken)
                n = await self._count(shard, upcoming, skipping)
                places = deal.places(pos, n)
                todo = [(j, deal.row_group(pos, places[j - offset], n))
                        for j in range(offset + (i - offset) % L, offset + len(places), L) if j // L >= taken]
                offset += len(places)
                if not todo:
                    continue
                if horizon is not None:  # again, by its count now (the budget skips a future that did not change)
                    await self._publish(epoch, deal, taken)

                async def gate(m: int, todo: list[tuple[int, int]] = todo) -> bool:
                    return await counts.until_safe(todo[m][0])

                done = await self.out.emit_shard(source, epoch, shard, [g for _, g in todo], taken, upcoming,
                                                 deal.base, gate)
                taken += done
                if done < len(todo):
                    break  # settled meanwhile: go on by the plan
        plan = await counts.settled()
        self.out.length = plan.length
        if horizon is not None:
            horizon.settled(epoch, plan.length)
        runs = shard_runs(plan.sequence(p.rank), taken)
        for k, (shard, first, groups) in enumerate(runs):
            upcoming: dict[int, None] = {}
            for r in itertools.islice(runs, k + 1, None):
                if len(upcoming) >= p.fetch_ahead:
                    break
                if r[0] != shard:
                    upcoming[r[0]] = None
            if horizon is not None:  # the reader's future order, for every stream's evictions
                await source.publish(await asyncio.to_thread(horizon.future, epoch, plan, first))
            await self.out.emit_shard(source, epoch, shard, groups, first, list(upcoming), deal.base)

    async def _publish(self, epoch: int, deal: EpochDeal, taken: int) -> None:
        """Before the settlement: this reader's future order, by the counts known so far, the others estimated
        (``horizon.py``), published before it asks for its next file."""
        assert self.horizon is not None
        await self.source.publish(await asyncio.to_thread(self.horizon.early_future, epoch, deal.base, taken))

    async def _count(self, shard: int, upcoming: list[int], skipping: bool = False) -> int:
        """The row groups of a shard of the node's piece: known, else from its footer (downloaded if missing;
        ``skipping``: a resume may have read all of it already, so its footer alone is asked for)."""
        source = self.source
        n = self.book.get(shard)
        if n is None:
            await self.book.look([shard])
            n = self.book.get(shard)
        if n is None and skipping:
            n = (await self.book.require([shard], source.access, self.plan.retry))[shard]
        if n is None:  # the node reads it anyway: its footer comes with it
            hold = await source.get(shard, upcoming)
            try:
                n = await asyncio.to_thread(local_count, hold.path, source.remote_known(shard))
                if n is None:  # unreadable: fetched once more (as a read would)
                    old, hold = hold, None
                    seen = file_id(old.path)
                    old.release()
                    log.warning("%s is not a readable parquet file; fetching it again", old.path)
                    hold = await source.replace(shard, seen)
                    n = await asyncio.to_thread(local_count, hold.path, False)
            finally:
                if hold is not None:
                    hold.release()
            assert n is not None
            self.book.learn(shard, n, f"the footer of {self.plan.data_dir / self.plan.files[shard].path}")
        landed = [s for s in upcoming if self.book.get(s) is None and source.path(s).exists()]
        if landed:  # the next shards downloaded meanwhile: their counts, for the bound and the other nodes
            await self.book.look(landed)
        await self.book.sync()
        return n

    async def resume_taken(self, deal: EpochDeal, start: Position) -> int:
        """How many of its row groups the reader had taken at ``start``: ``start.taken``, checked against the
        deal, else found in the settled plan."""
        key = (start.shard, start.row_group)
        while True:
            counts = self.book.snapshot()
            try:
                if start.taken > 0:
                    p, g = reader_place(deal, self.plan.rank, start.taken - 1, counts)
                    if (deal.order[p], deal.row_group(p, g, counts[deal.order[p]])) == key:
                        return start.taken
                seq = settle(deal, counts).sequence(self.plan.rank)
                return resume_index(seq, start, self.plan.data_dir)
            except NeedCounts as exc:
                await self.book.require(list(exc.shards), self.source.access, self.plan.retry)
            except IndexError:
                return resume_index(settle(deal, await self.book.require(
                    [deal.order[q] for q in deal.left], self.source.access, self.plan.retry)).sequence(self.plan.rank),
                    start, self.plan.data_dir)


def shard_runs(seq: list[tuple[int, int]], skip: int) -> list[tuple[int, int, list[int]]]:
    """``seq[skip:]`` as runs of one shard: ``(shard, count before the run, row groups)``."""
    runs: list[tuple[int, int, list[int]]] = []
    for i in range(skip, len(seq)):
        shard, group = seq[i]
        if not runs or runs[-1][0] != shard:
            runs.append((shard, i, []))
        runs[-1][2].append(group)
    return runs


def resume_index(seq: list[tuple[int, int]], start: Position, data_dir: Path) -> int:
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
