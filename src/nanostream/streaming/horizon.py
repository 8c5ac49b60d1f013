"""When this stream's reader needs each file next, on the run's clock: the future that eviction decides by.

Every epoch's order and deal are known in advance (``order.py``), so a reader knows which
files it reads next and at which of its row groups. The run's *clock* counts a reader's row
groups from the run's start, epoch after epoch: every reader of the run reads the same number
per epoch (equal work), so the readers of a run that keep level (DDP keeps ranks within a few
batches of each other) reach the same place on the clock at the same time, and a reader that
lags is at an earlier place. An epoch starts on the clock where the one before ended, at its
settled length (``settled``: the same on every reader; none reads past an epoch before it is
settled). Before the settlement the places of a reader's next files are estimated
(``estimate``: the counts the book knows now, the mean of those for the rest), its own place is
exact, and no place it publishes is before its own (``budget.victims`` relies on that).

``Horizon.future(epoch, plan, taken)`` returns this reader's ``Needs``: ``{file path: the place on
the clock where it needs the file next}`` over the rest of this epoch and, if the run has one, the
next, for the nearest ``FILES`` files; for the file it reads now, where it needs it again; its own
place; and the run's name (``run_name``: the same for every reader of the run, another for another
split, seed or layout). Each stream publishes its ``Needs`` in its holder
(``budget.FolderBudget.publish``) at every change of file; a file's next use is the earliest place
any live reader of the folder gives, so a reader that lags behind still counts, and its files count
as needed sooner than a leader's (``budget.victims``). Each reader publishes only its own needs: no
reader guesses where another one is.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import OrderedDict
from typing import Any

from ..sources.counts import CountBook
from .cache.holders import Needs
from .cursor import Cursor
from .plan import Plan, Position
from .settle import EpochPlan

FILES = 512  # files the future covers (the nearest ones); the holder file cuts it further if needed


def run_name(plan: Plan) -> str:
    """What the readers of one run share (split, order, layout, start) and no other run does."""
    start = plan.start.epoch if isinstance(plan.start, (Position, Cursor)) else 0
    key = (plan.split, plan.shards, plan.seed, plan.shuffle, plan.world_size, plan.local_world_size,
           plan.drop_last, plan.epochs, start, plan.start_base())
    return hashlib.sha1(repr(key).encode()).hexdigest()[:16]


class Horizon:
    """The future order of one reader's stream over its epochs (see the module docstring); one per stream."""

    def __init__(self, plan: Plan, book: CountBook) -> None:
        self.plan, self.book = plan, book
        self.readers = range(plan.rank, plan.rank + 1)  # this stream's reader: each publishes its own
        self.run = run_name(plan)
        self._starts: dict[int, int] = {}  # epoch -> the clock at its first row group (``settled``)
        self._counts: tuple[int, dict[int, int]] | None = None  # (counts the book knew, every count estimated)
        self._plans: OrderedDict[tuple[int, Cursor | None], tuple[int, EpochPlan]] = OrderedDict()
        self._runs: OrderedDict[tuple[int, Cursor | None], tuple[EpochPlan, Any]] = OrderedDict()

    def counts(self) -> dict[int, int]:
        """Every shard's count: the book's where it knows it, else the mean of those it knows (1 if none)."""
        version = len(self.book.log)
        if self._counts is None or self._counts[0] != version:
            known = self.book.snapshot()
            mean = round(sum(known.values()) / len(known)) if known else 1
            self._counts = (version, {s: known.get(s, mean) for s in self.plan.shards})
        return self._counts[1]

    def estimate(self, epoch: int, base: Cursor | None = None) -> EpochPlan:
        """The epoch's plan by ``counts()``: the file order exact, the places of shards whose counts are not
        known yet estimated; exact once the epoch is settled. Built again when the book learns a count."""
        key, version = (epoch, base), len(self.book.log)
        got = self._plans.get(key)
        if got is None or got[0] != version:
            self._plans[key] = got = (version, self.plan.epoch_plan(self.counts(), epoch, base))
            while len(self._plans) > 2:
                self._plans.popitem(last=False)
        return got[1]

    def early_future(self, epoch: int, base: Cursor | None, taken: int) -> Needs:
        """``future`` before the epoch is settled, by ``estimate``."""
        return self.future(epoch, self.estimate(epoch, base), taken)

    def settled(self, epoch: int, length: int) -> None:
        """Epoch ``epoch`` is settled at ``length`` row groups a reader: the next one starts that much later
        on the clock (the same on every reader of the run, whatever it estimated before)."""
        begin = self._starts.setdefault(epoch, max(self._starts.values(), default=0))
        self._starts = {epoch: begin, epoch + 1: begin + length}

    def _reader_runs(self, epoch: int, ep: EpochPlan) -> tuple[list[tuple[list[int], list[int]]], dict[int, int]]:
        """Per local reader: where each of its runs of one shard starts, and that shard; and where the node
        first needs each shard."""
        key = (epoch, ep.base)
        got = self._runs.get(key)
        if got is None or got[0] is not ep:
            runs = []
            order = ep.deal.order
            for r in self.readers:
                starts: list[int] = []
                shards: list[int] = []
                for k, (p, _) in enumerate(ep.places(r)):  # the shards only: no row-group order needed
                    shard = order[p]
                    if not shards or shards[-1] != shard:
                        starts.append(k)
                        shards.append(shard)
                runs.append((starts, shards))
            first: dict[int, int] = {}
            for starts, shards in runs:
                for k, shard in zip(starts, shards, strict=True):
                    first.setdefault(shard, k)
                    first[shard] = min(first[shard], k)
            self._runs[key] = got = (ep, (runs, first))
            while len(self._runs) > 2:
                self._runs.popitem(last=False)
        return got[1]

    def future(self, epoch: int, ep: EpochPlan, taken: int) -> Needs:
        """This reader at ``taken`` of ``ep`` (epoch ``epoch``): ``{path: place on the clock where it is needed
        next}``, and for the file read now ``{path: place where it is needed again after this read}`` (-1:
        never), which tells a prefetch to wait for it rather than evict a file needed sooner
        (``budget.victims``); with this reader's own place and the run's name."""
        begin = self._starts.setdefault(epoch, max(self._starts.values(), default=0))  # the run starts at 0
        need: dict[int, int] = {}
        again: dict[int, float] = {}
        runs, _ = self._reader_runs(epoch, ep)
        for starts, shards in runs:
            _add(need, starts, shards, taken, begin)
            i = max(bisect.bisect_right(starts, taken) - 1, 0)
            if i < len(shards):
                cur = shards[i]
                later = next((begin + starts[j] for j in range(i + 1, len(shards)) if shards[j] == cur), math.inf)
                again[cur] = min(again.get(cur, math.inf), later)
        nxt = epoch + 1
        if self.plan.epochs is None or nxt < self.plan.epochs:
            # settled: exact; else estimated, and never before this reader's own place
            begin2 = self._starts.get(nxt, begin + max(ep.length, taken))
            runs2, first2 = self._reader_runs(nxt, self.estimate(nxt))
            for starts, shards in runs2:
                _add(need, starts, shards, 0, begin2)
            again = {s: d if d < math.inf or s not in first2 else begin2 + first2[s] for s, d in again.items()}
        nearest = sorted(need.items(), key=lambda kv: kv[1])[:FILES]
        files = self.plan.files
        return Needs({files[s].path: d for s, d in nearest},
                     {files[s].path: int(d) if d < math.inf else -1 for s, d in again.items()}, begin + taken, self.run)


def _add(dist: dict[int, int], starts: list[int], shards: list[int], at: int, offset: int) -> None:
    """Fold one reader's runs from place ``at`` into ``dist`` (first need of each shard on the clock, the epoch
    starting at ``offset``)."""
    first = max(bisect.bisect_right(starts, at) - 1, 0)
    seen = 0
    for i in range(first, len(starts)):
        d = offset + max(starts[i], at)
        s = shards[i]
        if d < dist.get(s, d + 1):
            dist[s] = d
        seen += 1
        if seen >= FILES:
            break
