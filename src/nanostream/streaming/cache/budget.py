"""One stream's part in a data folder's disk budget (``cache_limit``): admit downloads, evict, publish the future.

The budget is the folder's. Every stream under a limit that reads the folder (the ranks and
DataLoader workers of a node, a validation stream beside training) takes part through the
folder's cache lock and holder files (``holders.py``); the limit applied is the smallest that
any live stream of the folder asked for. What counts is every file under the folder as
allocated on disk (``usage.scan``), plus, for each download admitted but not yet on disk at
its full size, the rest of its reservation (``usage.reserve_size``).

``admit(file, size, now)``: a download starts only once its reservation fits. If it does not,
files are evicted until it does, by the known future (Belady's rule): first the files no
reader of the node needs again, then those needed latest (ties: least recently read). Only a
``data`` file (listed by the folder's record with a URL) or the part of a dead download may
go; never a file a reader holds (``holders.ReadHold``), one another stream reserved, nor a local-only
or unlisted file. A demand (``now``: a reader waits for the file) may evict any of those; a
prefetch only files needed later than itself, and it leaves room for the demands other
streams wait on, so prefetching goes only as far as the budget allows. ``policy="lru"``
orders victims by last read instead (the ablation in ``bench/cache_bench.py``).

The smallest limit that works is ``minimum.needs``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from ...shards import RECORD_NAME
from ...sources.catalog import Catalog
from ...sources.record import read_catalog
from .holders import Holder, HolderInfo, cache_lock, evict, live_holders
from .usage import FolderScan, fmt, reserve_size, scan

log = logging.getLogger(__name__)


class FolderBudget:
    """This stream's side of its folder's budget; every method blocks (run them off the event loop)."""

    def __init__(self, folder: Path, limit: int, policy: str = "belady") -> None:
        self.folder, self.limit, self.policy = folder, limit, policy
        self.holder: Holder | None = None
        self.evicted = 0  # files this stream evicted
        self.shortfall = ""  # why the last refused admission did not fit (for the waiting log)
        self._record: tuple[tuple[int, int], Catalog | None] | None = None

    def record(self) -> Catalog | None:
        """The folder's record, read again only when it changed."""
        try:
            st = os.stat(self.folder / RECORD_NAME)
        except FileNotFoundError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        if self._record is None or self._record[0] != key:
            self._record = (key, read_catalog(self.folder))
        return self._record[1]

    def _own(self) -> Holder:
        if self.holder is None:
            self.holder = Holder(self.folder, self.limit, self.policy)
        return self.holder

    def admit(self, rel: str, size: int, now: bool) -> bool:
        """Reserve room for downloading ``rel`` (``size`` bytes), evicting as needed; False if it does not
        fit now (a demand is then recorded as waiting, so prefetches leave it room)."""
        need = reserve_size(size)
        with cache_lock(self.folder):
            mine = self._own()
            view, others = scan(self.folder, self.record()), live_holders(self.folder, skip=mine.name)
            if view.kinds.get(rel) is not None and rel not in view.parts:
                return True  # already there (finished by another process)
            holders = [*others, mine.info]
            reserved = _reserved(holders)
            limit = min([self.limit, *(o.limit for o in others if o.limit is not None)])
            used = view.total + sum(max(0, b - view.on_disk(r)) for r, b in reserved.items())
            extra = max(0, need - max(view.on_disk(rel), reserved.get(rel, 0)))
            room = limit - used
            if not now:  # a prefetch leaves room for what other streams wait on
                room -= sum(max(0, b - view.on_disk(r)) for o in others for r, b in o.waiting.items()
                            if r not in reserved)
            if extra > room:
                for victim, part in victims(self.policy, view, self.record(), holders, reserved, rel, now):
                    freed = evict(self.folder, victim, part=part)
                    if freed:
                        self.evicted += 1
                        room += freed
                        log.debug("%s: evicted %s (%s) for %s (%s)", self.folder, victim, fmt(freed), rel,
                                  "demand" if now else "prefetch")
                        if extra <= room:
                            break
            if extra <= room:
                mine.info.reserved[rel] = need
                mine.info.waiting.pop(rel, None)
                mine.write()
                return True
            self.shortfall = (f"{rel} needs {fmt(need)}, {fmt(max(room, 0))} of cache_limit {fmt(limit)} can be "
                              f"freed now: {fmt(view.pinned())} cannot be evicted, the rest is held by readers "
                              f"or being downloaded ({len(others)} other stream(s) on {self.folder})")
            if now and mine.info.waiting.get(rel) != need:
                mine.info.waiting[rel] = need
                mine.write()
            return False

    def release(self, rel: str) -> None:
        """Drop the reservation of ``rel`` (a reader holds it now, or its download ended)."""
        h = self.holder
        if h is None or (rel not in h.info.reserved and rel not in h.info.waiting):
            return
        with cache_lock(self.folder):
            h.info.reserved.pop(rel, None)
            h.info.waiting.pop(rel, None)
            h.write()

    def publish(self, future: dict[str, int], after: dict[str, int]) -> None:
        """Tell the folder's other streams when this node's readers need which file next (row groups from now),
        and when the files they read now are needed again (``horizon.Horizon.future``)."""
        if self.holder is not None and (self.holder.info.future, self.holder.info.after) == (future, after):
            return
        with cache_lock(self.folder):
            mine = self._own()
            mine.info.future, mine.info.after = future, after
            mine.write()

    def close(self) -> None:
        """Leave the budget: this stream's reservations and future go with its holder file."""
        if self.holder is not None:
            with cache_lock(self.folder):
                self.holder.close()
            self.holder = None


def victims(policy: str, view: FolderScan, record: Catalog | None, holders: list[HolderInfo],
            reserved: dict[str, int], rel: str | None = None, now: bool = True) -> list[tuple[str, bool]]:
    """What may be evicted (for ``rel``), in eviction order: (path, is a part). See the module docstring."""
    remote = {f.path for f in record.files if f.url} if record is not None else set()
    cands = [(r, False) for r, kind in view.kinds.items() if kind == "data" and r not in reserved and r != rel]
    cands += [(r, True) for r in view.parts if r in remote and r not in reserved and r != rel]
    if policy == "lru":
        return sorted(cands, key=lambda c: view.atime.get(c[0], 0))
    nxt: dict[str, float] = {}
    for h in holders:
        for r, d in h.future.items():
            nxt[r] = min(nxt.get(r, math.inf), d)
    order = sorted(cands, key=lambda c: (-nxt.get(c[0], math.inf), view.atime.get(c[0], 0)))
    if now or rel is None:
        return order
    mine = nxt.get(rel, math.inf)  # a prefetch: only files needed after it, ...
    order = [c for c in order if nxt.get(c[0], math.inf) > mine]
    if order and _freed_soon(holders, nxt) > nxt.get(order[0][0], math.inf):
        return []  # ... and none while a file read now will be a better victim once it is released
    return order


def _freed_soon(holders: list[HolderInfo], nxt: dict[str, float]) -> float:
    """Of the files read now, the latest next use once this read is over (-inf: none)."""
    later: dict[str, float] = {}
    for h in holders:
        for r, d in h.after.items():
            later[r] = min(later.get(r, math.inf), math.inf if d < 0 else d)
        for r, d in h.future.items():
            if d > 0:
                later[r] = min(later.get(r, math.inf), d)
    return max((later.get(r, math.inf) for r, d in nxt.items() if d == 0), default=-math.inf)


def prune(folder: Path, target: int, policy: str = "belady") -> tuple[int, int, int]:
    """Evict from ``folder`` as streaming would until it takes at most ``target`` bytes (never a file in use,
    reserved, local-only or unlisted): (files evicted, bytes freed, bytes it takes now). Blocking."""
    with cache_lock(folder):
        view, holders = scan(folder, read_catalog(folder)), live_holders(folder)
        reserved = _reserved(holders)
        used = view.total + sum(max(0, b - view.on_disk(r)) for r, b in reserved.items())
        count = freed = 0
        for victim, part in victims(policy, view, read_catalog(folder), holders, reserved):
            if used - freed <= target:
                break
            got = evict(folder, victim, part=part)
            if got:
                count, freed = count + 1, freed + got
        return count, freed, used - freed


def _reserved(holders: list[HolderInfo]) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in holders:
        for r, b in h.reserved.items():
            out[r] = max(out.get(r, 0), b)
    return out
