"""A reader's side of the row-group counts in one epoch: ``Tally`` keeps ``K`` (the row groups left among
shards with known counts) and settles the epoch; ``EpochCounts`` adds the reader's waits for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from ..errors import ConfigError
from ..fetch.partial import part_path
from ..sources.counts import FETCH_EVERY, CountBook
from .order import EpochDeal, NeedCounts, SettledDeal
from .plan import Plan, Position

log = logging.getLogger(__name__)
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
        self.known_left = 0
        self.settled: SettledDeal | None = None

    def length_lower(self) -> int:
        """Row groups every reader reads this epoch: exact once settled, else a lower bound (``K // R``)."""
        self.refresh()
        return self.settled.length if self.settled is not None else self.known_left // self.deal.world_size

    def refresh(self) -> bool:
        """Count what the book learned since the last call (True if anything); settle once every count is known."""
        new = self.book.log[self._seen:]
        self._seen += len(new)
        for shard in new:
            p = self._left_at.pop(shard, None)
            if p is not None:
                self.known_left += len(self.deal.places(p, self.book.get(shard) or 0))
        if not self._left_at and self.settled is None:
            self.settled = SettledDeal(self.deal, self.book.snapshot())
        return bool(new)


class EpochCounts(Tally):
    """One reader's tally of one epoch, and its waits for more counts: woken by what ``watch`` learns; after
    ``GRACE`` s without enough (none on one node, ``LANDING`` while the node's next download lands) it reads
    remote footers, ``BATCH`` at a time, the ones the bound needs soonest first."""

    def __init__(self, deal: EpochDeal, book: CountBook, plan: Plan) -> None:
        super().__init__(deal, book)
        self.plan = plan
        self.node = plan.ranks.rank // deal.local_world_size
        self.at = 0  # index into the node's piece of the shard being read (what to ask for first)
        self._learned = asyncio.Event()

    async def until_safe(self, taken: int) -> bool:
        """Wait until the reader's row group number ``taken`` (of the node's piece: place ``rank % L + L *
        taken``) may be read: True; False once the epoch is settled (the reader then goes on by the settled deal)."""
        j = self.plan.ranks.rank % self.deal.local_world_size + self.deal.local_world_size * taken
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
                await self.book.read_remote(self._priority()[:BATCH], self.plan.credentials, self.plan.options.retry)
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
            if self.refresh():
                self._learned.set()
            await asyncio.sleep(FETCH_EVERY)

    def _own_next(self) -> list[int]:
        nxt = [self.deal.order[p] for p in self.deal.pieces[self.node][self.at:]]
        return [s for s in nxt if s in self._left_at][: self.plan.options.read_ahead.files + 1]

    def _priority(self) -> list[int]:
        """Shards whose counts are unknown, the ones the bound needs soonest first."""
        out = self._own_next()
        for places in itertools.zip_longest(*self.deal.pieces):
            out.extend(self.deal.order[p] for p in places if p is not None and self.deal.order[p] in self._left_at)
        return list(dict.fromkeys(out))


async def with_counts(book: CountBook, plan: Plan, answer: Callable[[Mapping[int, int]], T]) -> T:
    """``answer(counts)``, learning the counts it needs first (``NeedCounts``) until it can tell."""
    while True:
        try:
            return answer(book.snapshot())
        except NeedCounts as exc:
            await book.require(list(exc.shards), plan.credentials, plan.options.retry)


def taken_at(deal: EpochDeal, rank: int, position: Position, counts: Mapping[int, int]) -> int:
    """How many of its row groups reader ``rank`` had taken at ``position`` (checked against the deal;
    ``NeedCounts`` if the counts do not tell yet)."""
    with contextlib.suppress(IndexError):  # past its share
        if position.taken > 0:
            p, g = deal.reader_place(rank, position.taken - 1, counts)
            if (deal.order[p], deal.row_group(p, g, counts[deal.order[p]])) == (position.shard, position.row_group):
                return position.taken
    raise ConfigError(f"resume position {position}: row group {position.row_group} of shard {position.shard} is "
                      f"not one rank {rank} reads in epoch {position.epoch}; resume with the same data, Ranks, "
                      "shuffle and seed")
