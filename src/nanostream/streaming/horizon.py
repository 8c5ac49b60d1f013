"""When the node's readers need each file next: the future that eviction decides by (Belady's rule).

Every epoch's order and deal are known in advance (``order.py``), so a reader can tell, for
each reader of its node, which files come next and when. ``Horizon.future(epoch, plan,
taken)`` assumes the node's readers are level with this one (they read equal work, and DDP
keeps ranks within a few batches of each other) and returns ``{file path: row groups from now
until a reader of the node first needs it}`` over the rest of this epoch and, if the run has
one, the next, for the nearest ``FILES`` files, and for the files being read now when they are
needed again. A file missing from it is needed later than
all of those, or never again: it is evicted first. Each stream publishes its future in its
holder (``budget.FolderBudget.publish``) at every change of file; a file's next use is the
smallest any live stream of the folder gives, so a reader that lags behind still counts.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from typing import Any

from .cursor import Cursor
from .plan import Plan
from .settle import EpochPlan

FILES = 512  # files the future covers (the nearest ones); the holder file cuts it further if needed


class Horizon:
    """The node's future order of one reader's stream (see the module docstring); keeps two epochs' plans."""

    def __init__(self, plan: Plan, counts: dict[int, int]) -> None:
        self.plan, self.counts = plan, counts
        local = plan.local_world_size or plan.world_size
        node = plan.rank // local
        self.readers = range(node * local, node * local + local)
        self._plans: OrderedDict[tuple[int, Cursor | None], EpochPlan] = OrderedDict()
        self._runs: OrderedDict[tuple[int, Cursor | None], tuple[EpochPlan, Any]] = OrderedDict()

    def epoch_plan(self, epoch: int, base: Cursor | None = None) -> EpochPlan:
        """The epoch's plan, built once (the producer reads by the same one)."""
        key = (epoch, base)
        if key not in self._plans:
            self._plans[key] = self.plan.epoch_plan(self.counts, epoch, base)
            while len(self._plans) > 2:
                self._plans.popitem(last=False)
        return self._plans[key]

    def _reader_runs(self, epoch: int, ep: EpochPlan) -> tuple[list[tuple[list[int], list[int]]], dict[int, int]]:
        """Per local reader: where each of its runs of one shard starts, and that shard; and where the node
        first needs each shard."""
        key = (epoch, ep.base)
        got = self._runs.get(key)
        if got is None or got[0] is not ep:
            runs = []
            for r in self.readers:
                starts: list[int] = []
                shards: list[int] = []
                for k, (shard, _) in enumerate(ep.sequence(r)):
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

    def future(self, epoch: int, ep: EpochPlan, taken: int) -> tuple[dict[str, int], dict[str, int]]:
        """With this reader at ``taken`` of ``ep`` (epoch ``epoch``): ``{path: row groups until first needed}``,
        and for the files the node's readers are reading now, ``{path: row groups until needed again after
        this read}`` (-1: never), which tells a prefetch to wait for one of those rather than evict a
        file needed sooner (``budget.victims``)."""
        dist: dict[int, int] = {}
        again: dict[int, float] = {}
        runs, _ = self._reader_runs(epoch, ep)
        for starts, shards in runs:
            _add(dist, starts, shards, taken, 0)
            i = max(bisect.bisect_right(starts, taken) - 1, 0)
            if i < len(shards):
                cur = shards[i]
                later = next((starts[j] - taken for j in range(i + 1, len(shards)) if shards[j] == cur), math.inf)
                again[cur] = min(again.get(cur, math.inf), later)
        nxt = epoch + 1
        if self.plan.epochs is None or nxt < self.plan.epochs:
            offset = max(ep.length - taken, 0)
            runs2, first2 = self._reader_runs(nxt, self.epoch_plan(nxt))
            for starts, shards in runs2:
                _add(dist, starts, shards, 0, offset)
            again = {s: d if d < math.inf or s not in first2 else offset + first2[s] for s, d in again.items()}
        nearest = sorted(dist.items(), key=lambda kv: kv[1])[:FILES]
        files = self.plan.files
        return ({files[s].path: d for s, d in nearest},
                {files[s].path: int(d) if d < math.inf else -1 for s, d in again.items()})


def _add(dist: dict[int, int], starts: list[int], shards: list[int], at: int, offset: int) -> None:
    """Fold one reader's runs from place ``at`` into ``dist`` (first need of each shard, plus ``offset``)."""
    first = max(bisect.bisect_right(starts, at) - 1, 0)
    seen = 0
    for i in range(first, len(starts)):
        d = max(starts[i] - at, 0) + offset
        s = shards[i]
        if d < dist.get(s, d + 1):
            dist[s] = d
        seen += 1
        if seen >= FILES:
            break
