"""``CachedFiles``: the file provider under a ``cache_limit``; every download first gets room in the folder's
budget (``cache.budget``), and ``ReaderNeeds`` (when the reader needs each file next, on the run's clock) is
published for every stream's evictions (docs/cache.md).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..sources.counts import CountBook
from .cache.budget import FolderBudget
from .cache.claims import Needs, ReadLock
from .cache.usage import Minimum, minimum
from .files import FolderFiles
from .order import Cursor, EpochDeal, SettledDeal
from .plan import Plan

log = logging.getLogger(__name__)
WAIT_LOG_S = 30.0  # a demand that waits this long for room says what holds the budget
FILES = 512  # files a reader's needs cover (the nearest ones); the claim file cuts it further if needed


def folder_minimum(plan: Plan, sizes: list[int | None]) -> Minimum:
    """The smallest ``cache_limit`` that works for ``plan``'s stream (sizes: as known). Blocking."""
    return minimum(plan.folder, plan.catalog, [plan.files[s] for s in plan.shards], sizes,
                   plan.ranks.local_world_size, plan.options.read_ahead.files)


def check_limit(plan: Plan, sizes: list[int | None]) -> None:
    """ConfigError, with the sizes and the smallest limit that works, if ``plan.cache_limit`` is below it."""
    m = folder_minimum(plan, sizes)
    if plan.cache_limit < m.size:
        raise ConfigError(m.message(plan.cache_limit, plan.folder, plan.ranks.local_world_size,
                                    plan.options.read_ahead.files))


class CachedFiles(FolderFiles):
    """``FolderFiles`` whose downloads wait for room in the folder's budget, publishing the reader's needs."""

    touch = True  # the last read sets a file's access time: LRU order, and ties

    def __init__(self, plan: Plan, book: CountBook) -> None:
        super().__init__(plan)
        assert plan.cache_limit is not None
        self.budget = FolderBudget(plan.folder, plan.cache_limit, plan.config.cache_policy)
        self.needs = ReaderNeeds(plan, book)
        self._demands: set[str] = set()  # files a reader waits for
        self._queued: list[str] = []  # prefetches not given room yet, in the order they are needed
        self._woken = asyncio.Event()  # set (and replaced) when a file becomes a demand or a prefetch moves up

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await super().__aexit__(*exc)
        finally:
            await asyncio.to_thread(self.budget.close)  # leave the budget: every reservation goes with it

    async def prepare(self) -> None:
        """Before any download, a budget too small for the work fails at once."""
        await asyncio.to_thread(check_limit, self.plan, await self.split_sizes())

    async def reader_at(self, epoch: int, taken: int, deal: EpochDeal, settled: SettledDeal | None = None) -> None:
        await asyncio.to_thread(lambda: self.budget.publish(self.needs.needs(epoch, taken, deal.base, settled)))

    @property
    def evicted(self) -> int:
        return self.budget.evicted

    def unlockable(self, path: Path, exc: OSError) -> ReadLock:
        raise ConfigError(f"cannot lock {path} for reading ({exc.strerror or exc}): a cache_limit needs flock on "
                          "the data folder") from exc

    async def _local(self, index: int) -> ReadLock:
        rel = self.files[index].path
        self._demands.add(rel)
        self._wake()
        try:
            return await super()._local(index)
        finally:
            self._demands.discard(rel)
            await self._release(rel)  # the reader holds it (or gave up on it): no longer reserved

    async def _download(self, index: int) -> Path:
        file = self.files[index]
        size = file.size if file.size is not None else await self.size(index)
        await self._wait_for_room(file.path, size)
        try:
            return await super()._download(index)
        finally:
            if file.path not in self._demands:  # a prefetch: on disk now (or failed), no longer reserved
                await self._release(file.path)

    async def _wait_for_room(self, rel: str, size: int) -> None:
        """Wait until the budget has reserved room to download ``rel``; prefetches in the order asked for. Room
        is freed by other processes' readers and evictions, which cannot wake this one: asked again every
        20-250 ms (a prefetch up to every second, or at once when it becomes a demand or moves up)."""
        delay = 0.02
        since = told = time.monotonic()
        self._queued.append(rel)
        try:
            while True:
                now = rel in self._demands
                if (now or self._queued[0] == rel) and await asyncio.to_thread(self.budget.reserve, rel, size, now):
                    return
                if now and time.monotonic() - told > WAIT_LOG_S:
                    told = time.monotonic()
                    log.warning("waiting %.0fs for room under cache_limit: %s", told - since, self.budget.shortfall)
                with contextlib.suppress(asyncio.TimeoutError):  # a prefetch that becomes a demand, or moves up,
                    await asyncio.wait_for(self._woken.wait(), delay)  # asks again at once
                delay = min(delay * 1.5, 0.25 if now else 1.0)
        finally:
            self._queued.remove(rel)
            self._wake()

    def _wake(self) -> None:
        woken, self._woken = self._woken, asyncio.Event()
        woken.set()

    async def _release(self, rel: str) -> None:
        if self.budget.holds(rel):  # else no trip to a thread
            await asyncio.to_thread(self.budget.release, rel)


class ReaderNeeds:
    """The needs of one stream's reader over its epochs; one per stream."""

    def __init__(self, plan: Plan, book: CountBook) -> None:
        self.plan, self.book, o = plan, book, plan.options
        run = (o.split, plan.shards, o.seed, o.shuffle, o.ranks.world_size, o.ranks.local_world_size,
               o.ranks.drop_last, o.epochs, plan.first_epoch(), plan.start_base())
        self.run = hashlib.sha1(repr(run).encode()).hexdigest()[:16]  # shared by the readers of this run only
        self._starts: dict[int, int] = {}  # epoch -> the clock at its first row group
        self._estimates: dict[tuple[int, Cursor | None, int], SettledDeal] = {}

    def estimate(self, epoch: int, base: Cursor | None = None) -> SettledDeal:
        """The epoch's deal settled by the counts the book knows, the others estimated by their mean (1 if none
        is known): the file order exact. Made again when the book learns a count."""
        key = (epoch, base, len(self.book.log))
        if key not in self._estimates:
            known = self.book.snapshot()
            mean = round(sum(known.values()) / len(known)) if known else 1
            if len(self._estimates) >= 2:
                self._estimates.pop(next(iter(self._estimates)))
            self._estimates[key] = SettledDeal(self.plan.deal(epoch, base),
                                               {s: known.get(s, mean) for s in self.plan.shards})
        return self._estimates[key]

    def needs(self, epoch: int, taken: int, base: Cursor | None, settled: SettledDeal | None) -> Needs:
        """The reader at ``taken`` of epoch ``epoch`` (its deal from ``base``: ``settled``, else estimated):
        ``{path: place where it needs the file next}`` over this epoch and the next, ``{path of the file read
        now: place where it is needed again}`` (-1: never), its own place and the run's name."""
        begin = self._starts.setdefault(epoch, max(self._starts.values(), default=0))  # the run starts at 0
        if settled is not None:  # the next epoch starts that much later
            self._starts = {epoch: begin, epoch + 1: begin + settled.length}
        deal = settled or self.estimate(epoch, base)
        rank, need = self.plan.ranks.rank, {}
        runs = deal.runs(rank)
        i = _add(need, runs, taken, begin)
        now = runs[i][1] if runs else None  # the shard read now, and when it is needed again
        again = next((begin + k for k, s in itertools.islice(runs, i + 1, None) if s == now), -1)
        nxt = epoch + 1
        if self.plan.options.epochs is None or nxt < self.plan.options.epochs:
            begin2 = self._starts.get(nxt, begin + max(deal.length, taken))  # never before the reader's place
            runs2 = self.estimate(nxt).runs(rank)
            _add(need, runs2, 0, begin2)
            if again < 0:
                again = next((begin2 + k for k, s in runs2 if s == now), -1)
        nearest = sorted(need.items(), key=lambda kv: kv[1])[:FILES]
        files = self.plan.files
        return Needs({files[s].path: d for s, d in nearest}, {} if now is None else {files[now].path: again},
                     begin + taken, self.run)


def _add(need: dict[int, int], runs: list[tuple[int, int]], at: int, offset: int) -> int:
    """Fold the reader's runs (``SettledDeal.runs``) from place ``at`` into ``need`` (first need of each shard on
    the clock, the epoch starting at ``offset``), the nearest ``FILES`` of them; the index of the run at ``at``."""
    first = max(bisect.bisect_right(runs, (at, math.inf)) - 1, 0)
    for k, shard in runs[first:first + FILES]:
        d = offset + max(k, at)
        if d < need.get(shard, d + 1):
            need[shard] = d
    return first
