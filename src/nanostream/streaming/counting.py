"""A reader's side of the counts in one epoch: how far the bound lets it read, and what it asks for when it waits.

``Tally`` keeps ``K`` (the row groups left this epoch among the shards whose counts the book
knows; a running total over ``CountBook.log``) for ``EpochDeal.safe``, and settles the epoch
(``EpochDeal.settle``) as soon as every count of it is known (``TokenDataset`` bounds its batch
count with one). ``EpochCounts`` is a reader's tally and its waits: a reader that reaches the
bound (``until_safe``) or the end of its piece (``settled``) waits for counts, asking the
cheapest source first:

1. its node's next shards' footers, as their downloads land (a shard whose part file exists is
   being downloaded, by this reader or another of the node: its footer comes with it);
2. the folder's census file and the count sharers, polled every ``counts.FETCH_EVERY`` s;
3. after ``GRACE`` s without enough (at once on a single node, where nobody else can tell; up to
   ``LANDING`` s while a download of the node's next shards is under way), remote footers, 16 at a
   time in this order: the node's own next shards, then every node's piece from its start, round
   robin -- the counts the bound needs soonest.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from ..fetch.partial import part_path
from ..sources.counts import FETCH_EVERY, CountBook
from .order import EpochDeal
from .settle import EpochPlan, settle

GRACE = 2.0  # seconds to wait for other nodes' counts before reading footers remotely
LANDING = 30.0  # ... and for a download of the node's under way (a stalled one does not hold the reader)
WATCH_EVERY = 0.1  # seconds between looks for landed downloads and shared counts while reading
BATCH = 16  # remote footers read at once


class Tally:
    """``K`` of one epoch's deal, a running total over the book's log, and the settled plan once every count
    of the epoch is known."""

    def __init__(self, deal: EpochDeal, book: CountBook) -> None:
        self.deal, self.book = deal, book
        self._left_at = {deal.order[p]: p for p in deal.left}
        self._seen = 0  # entries of book.log counted
        self._unknown = len(self._left_at)
        self.known_left = 0
        self.plan: EpochPlan | None = None

    def length_lower(self) -> int:
        """Row groups every reader reads this epoch: exact once settled, else a lower bound (``K // R``)."""
        self.refresh()
        return self.plan.length if self.plan is not None else self.known_left // self.deal.world_size

    def refresh(self) -> None:
        """Count what the book learned since the last call; settle once every count is known."""
        log = self.book.log
        while self._seen < len(log):
            shard = log[self._seen]
            self._seen += 1
            p = self._left_at.pop(shard, None)
            if p is not None:
                self.known_left += len(self.deal.places(p, self.book.get(shard) or 0))
                self._unknown -= 1
        if self._unknown == 0 and self.plan is None:
            self.plan = settle(self.deal, self.book.snapshot())


class EpochCounts(Tally):
    """One reader's tally of one epoch, and its waits for more counts."""

    def __init__(self, deal: EpochDeal, book: CountBook, reader: int, data_dir: Path, access: Any,
                 retry: Any, ahead: int) -> None:
        super().__init__(deal, book)
        self.data_dir, self.access, self.retry = data_dir, access, retry
        self.node = reader // deal.local_world_size
        self.ahead = ahead
        self.at = 0  # index into the node's piece of the shard being read (for what to ask first)

    def safe(self) -> int:
        """Row groups of its piece the node may read now (all of the settled share once settled)."""
        self.refresh()
        if self.plan is not None:
            return self.deal.local_world_size * self.plan.length
        return self.deal.safe(self.known_left)

    async def until_safe(self, j: int) -> bool:
        """Wait until row group ``j`` of the node's piece may be read: True; False once the epoch is settled
        (the reader then goes on by the settled plan)."""
        await self._wait(lambda: self.plan is not None or j < self.deal.safe(self.known_left))
        return self.plan is None

    async def settled(self) -> EpochPlan:
        """The settled plan, waiting for every count of the epoch."""
        await self._wait(lambda: self.plan is not None)
        assert self.plan is not None
        return self.plan

    async def _wait(self, ok: Any) -> None:
        self.refresh()
        since = time.monotonic()
        while not ok():
            own = self._own_next()
            await self.book.look(own)
            self.refresh()
            if ok():
                return
            landing = any(part_path(self.data_dir / self.book.files[s].path).exists() for s in own)
            grace = LANDING if landing else GRACE if self.deal.nodes > 1 else 0.0
            if time.monotonic() - since >= grace:
                await self.book.read_remote(self._priority()[:BATCH], self.access, self.retry)
                self.refresh()
                continue
            await asyncio.sleep(FETCH_EVERY / 2)
            self.refresh()

    async def watch(self) -> None:
        """While the reader reads (a task of the producer's): learn the counts of its node's next shards as
        their downloads land, and what the census file and the sharers tell, so the bound keeps ahead and
        the other nodes hear of this node's counts at once."""
        while self.plan is None:
            landed = [s for s in self._own_next() if (self.data_dir / self.book.files[s].path).exists()]
            await self.book.look(landed)
            self.refresh()
            await asyncio.sleep(WATCH_EVERY)

    def _own_next(self) -> list[int]:
        piece = self.deal.piece(self.node)
        nxt = [self.deal.order[p] for p in piece[self.at:]]
        return [s for s in nxt if s in self._left_at][: self.ahead + 1]

    def _priority(self) -> list[int]:
        """Shards whose counts are unknown, the ones the bound needs soonest first."""
        out = self._own_next()
        pieces = [self.deal.piece(n) for n in range(self.deal.nodes)]
        for k in range(max((len(x) for x in pieces), default=0)):
            for piece in pieces:
                if k < len(piece) and self.deal.order[piece[k]] in self._left_at:
                    out.append(self.deal.order[piece[k]])
        return list(dict.fromkeys(out))
