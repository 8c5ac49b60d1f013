"""When this stream's reader needs each file next, on the run's clock: what a cache evicts by (docs/cache.md).
"""

from __future__ import annotations

import bisect
import hashlib
import math

from ..sources.counts import CountBook
from .cache.claims import Needs
from .order import Cursor, SettledDeal
from .plan import Plan

FILES = 512  # files a reader's needs cover (the nearest ones); the claim file cuts it further if needed


def run_name(plan: Plan) -> str:
    """What the readers of one run share (split, order, layout, start) and no other run does."""
    o = plan.options
    key = (o.split, plan.shards, o.seed, o.shuffle, o.ranks.world_size, o.ranks.local_world_size,
           o.ranks.drop_last, o.epochs, plan.first_epoch(), plan.start_base())
    return hashlib.sha1(repr(key).encode()).hexdigest()[:16]


class ReaderNeeds:
    """The needs of one stream's reader over its epochs; one per stream."""

    def __init__(self, plan: Plan, book: CountBook) -> None:
        self.plan, self.book = plan, book
        self.run = run_name(plan)
        self._starts: dict[int, int] = {}  # epoch -> the clock at its first row group (``settled``)
        self._counts: tuple[int, dict[int, int]] | None = None  # (counts the book knew, every count estimated)
        self._estimates: dict[tuple[int, Cursor | None], tuple[int, SettledDeal]] = {}
        self._runs: dict[int, tuple[SettledDeal, list[int], list[int]]] = {}

    def counts(self) -> dict[int, int]:
        """Every shard's count: the book's where it knows it, else the mean of those it knows (1 if none)."""
        version = len(self.book.log)
        if self._counts is None or self._counts[0] != version:
            known = self.book.snapshot()
            mean = round(sum(known.values()) / len(known)) if known else 1
            self._counts = (version, {s: known.get(s, mean) for s in self.plan.shards})
        return self._counts[1]

    def estimate(self, epoch: int, base: Cursor | None = None) -> SettledDeal:
        """The epoch's deal settled by ``counts()``: the file order exact, the places of shards whose counts
        are not known yet estimated. Made again when the book learns a count."""
        key, version = (epoch, base), len(self.book.log)
        got = self._estimates.get(key)
        if got is None or got[0] != version:
            if len(self._estimates) >= 2:
                self._estimates.pop(next(iter(self._estimates)))
            self._estimates[key] = got = (version, SettledDeal(self.plan.deal(epoch, base), self.counts()))
        return got[1]

    def settled(self, epoch: int, length: int) -> None:
        """Epoch ``epoch`` is settled at ``length`` row groups a reader: the next one starts that much later."""
        begin = self._starts.setdefault(epoch, max(self._starts.values(), default=0))
        self._starts = {epoch: begin, epoch + 1: begin + length}

    def _shard_runs(self, epoch: int, deal: SettledDeal) -> tuple[list[int], list[int]]:
        """Where each of the reader's runs of one shard starts (its row groups taken), and that shard."""
        got = self._runs.get(epoch)
        if got is None or got[0] is not deal:
            starts: list[int] = []
            shards: list[int] = []
            for k, (p, _) in enumerate(deal.places(self.plan.ranks.rank)):  # shards only: no row-group order
                if not shards or shards[-1] != deal.deal.order[p]:
                    starts.append(k)
                    shards.append(deal.deal.order[p])
            if len(self._runs) >= 2:
                self._runs.pop(next(iter(self._runs)))
            self._runs[epoch] = got = (deal, starts, shards)
        return got[1], got[2]

    def needs(self, epoch: int, deal: SettledDeal, taken: int) -> Needs:
        """The reader at ``taken`` of ``deal`` (settled or estimated): ``{path: place where it needs the file
        next}`` over this epoch and the next, ``{path of the file read now: place where it is needed again}``
        (-1: never), its own place and the run's name."""
        begin = self._starts.setdefault(epoch, max(self._starts.values(), default=0))  # the run starts at 0
        need: dict[int, int] = {}
        starts, shards = self._shard_runs(epoch, deal)
        _add(need, starts, shards, taken, begin)
        i = max(bisect.bisect_right(starts, taken) - 1, 0)
        again: dict[int, float] = {}
        if i < len(shards):
            later = (begin + starts[j] for j in range(i + 1, len(shards)) if shards[j] == shards[i])
            again[shards[i]] = next(later, math.inf)
        nxt = epoch + 1
        if self.plan.options.epochs is None or nxt < self.plan.options.epochs:
            begin2 = self._starts.get(nxt, begin + max(deal.length, taken))  # never before the reader's place
            starts2, shards2 = self._shard_runs(nxt, self.estimate(nxt))
            _add(need, starts2, shards2, 0, begin2)
            first2 = dict(zip(reversed(shards2), reversed(starts2), strict=True))
            again = {s: d if d < math.inf or s not in first2 else begin2 + first2[s] for s, d in again.items()}
        nearest = sorted(need.items(), key=lambda kv: kv[1])[:FILES]
        files = self.plan.files
        return Needs({files[s].path: d for s, d in nearest},
                     {files[s].path: int(d) if d < math.inf else -1 for s, d in again.items()}, begin + taken, self.run)


def _add(need: dict[int, int], starts: list[int], shards: list[int], at: int, offset: int) -> None:
    """Fold the reader's runs from place ``at`` into ``need`` (first need of each shard on the clock, the epoch
    starting at ``offset``), the nearest ``FILES`` of them."""
    first = max(bisect.bisect_right(starts, at) - 1, 0)
    for i in range(first, min(len(starts), first + FILES)):
        d = offset + max(starts[i], at)
        if d < need.get(shards[i], d + 1):
            need[shards[i]] = d
