"""One stream's side of a data folder's disk budget: reserve room for a download, evicting by the readers' needs
(Belady's rule, or ``lru`` for the ablation), release it, publish the reader's needs; and ``prune``.
Every call blocks. The rules are docs/cache.md's "How it works".
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from ...shards import RECORD_NAME
from ...sources.catalog import Catalog, read_catalog
from .claims import Claim, ClaimInfo, Needs, cache_lock, evict, live_claims
from .usage import STATE_BYTES, FolderScan, file_blocks, fmt, scan

log = logging.getLogger(__name__)
STALLED_S = 60.0  # a reader whose place has not changed for this long protects nothing from a demand


class FolderBudget:
    """This stream's side of its folder's budget; every method blocks (run them off the event loop)."""

    def __init__(self, folder: Path, limit: int, policy: str = "belady") -> None:
        self.folder, self.limit, self.policy = folder, limit, policy
        self.claim: Claim | None = None
        self.evicted = 0  # files this stream evicted
        self.shortfall = ""  # why the last refused reservation did not fit (for the waiting log)
        self._record: tuple[tuple[int, int], Catalog | None] | None = None
        self._moved: dict[str, tuple[int, float, bool]] = {}  # claim -> (place, since when, stall said)

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

    def _own(self) -> Claim:
        if self.claim is None:
            self.claim = Claim(self.folder, self.limit, self.policy)
        return self.claim

    def reserve(self, rel: str, size: int, now: bool) -> bool:
        """Reserve room for downloading ``rel`` (``size`` bytes), evicting as needed; False if it does not
        fit now (a demand is then recorded as waiting, so prefetches leave it room)."""
        need = file_blocks(size) + STATE_BYTES  # what its part file and state file may take while it runs
        with cache_lock(self.folder):
            mine = self._own()
            view, others = scan(self.folder, self.record()), live_claims(self.folder, skip=mine.name)
            if view.kinds.get(rel) is not None and rel not in view.parts:
                return True  # already there (finished by another process)
            claims = [*others, mine.info]
            reserved = reservations(claims)
            limit = min([self.limit, *(o.limit for o in others if o.limit is not None)])
            used = view.used(reserved)
            extra = max(0, need - max(view.on_disk(rel), reserved.get(rel, 0)))
            room = limit - used
            if not now:  # a prefetch leaves room for what other streams wait on (but the file itself)
                room -= sum(max(0, b - view.on_disk(r)) for o in others for r, b in o.waiting.items()
                            if r not in reserved and r != rel)
            if extra > room:
                room = self._evict_for(rel, extra, room, now, view, claims, reserved)
            if extra <= room:
                mine.info.reserved[rel] = need
                mine.info.waiting.pop(rel, None)
                mine.write()
                return True
            if now and mine.info.waiting.get(rel) != need:
                mine.info.waiting[rel] = need
                mine.write()
            return False

    def _evict_for(self, rel: str, extra: int, room: int, now: bool, view: FolderScan, claims: list[ClaimInfo],
                   reserved: dict[str, int]) -> int:
        """Evict (``victims``) until ``extra`` more bytes fit for ``rel``; the room then. If they do not fit,
        ``shortfall`` says why. Under the cache lock."""
        mine = self._own().info
        others = [h for h in claims if h is not mine]
        order = victims(self.policy, view, claims, reserved, rel, now, mine,
                        self._moving(others) if now else None)
        if not now and room + sum(view.on_disk(v) for v, _ in order) < extra:
            order = []  # a prefetch evicts only if that makes it fit: the room freed would go to another
        for victim, part in order:
            freed = evict(self.folder, victim, part=part)
            if freed:
                self.evicted += 1
                room += freed
                log.debug("%s: evicted %s (%s, next needed at %s) for %s (%s at %d)", self.folder, victim,
                          fmt(freed), next_uses(claims, mine.needs).get(victim), rel,
                          "demand" if now else "prefetch", mine.needs.at)
                if extra <= room:
                    return room
        if now and len(order) < len(victims(self.policy, view, claims, reserved, rel, now, mine,
                                            behind=[])):
            log.debug("%s: %s waits for a reader behind this one to move on", self.folder, rel)
            self.shortfall = (f"{rel} waits for a reader behind this one to read the files it would evict (a "
                              f"reader that does not move on for {STALLED_S:.0f}s stops counting)")
        else:
            self.shortfall = (f"{rel} needs {fmt(extra)} more than the {fmt(max(room, 0))} that can be freed now "
                              f"under cache_limit: {fmt(view.pinned())} cannot be evicted, the rest is held by "
                              f"readers or being downloaded ({len(others)} other stream(s) on {self.folder})")
        return room

    def holds(self, rel: str) -> bool:
        """Does this stream reserve room for ``rel``, or wait for it?"""
        return self.claim is not None and (rel in self.claim.info.reserved or rel in self.claim.info.waiting)

    def release(self, rel: str) -> None:
        """Drop the reservation of ``rel`` (a reader holds it now, or its download ended): ask ``holds`` first."""
        with cache_lock(self.folder):
            info = self.claim.info
            info.reserved.pop(rel, None)
            info.waiting.pop(rel, None)
            self.claim.write()

    def _moving(self, others: list[ClaimInfo]) -> list[ClaimInfo]:
        """The other streams' claims, less those whose place has not changed for ``STALLED_S``."""
        now, out, moved = time.monotonic(), [], {}
        for h in others:
            at, since, told = self._moved.get(h.name, (None, now, False))
            if at != h.needs.at:
                since, told = now, False
            if now - since < STALLED_S:
                out.append(h)
            elif not told:
                told = True
                log.info("%s: a reader (%s) has not moved on for %.0fs: the files it needs next may be evicted "
                         "and downloaded again when it reads them", self.folder, h.name, STALLED_S)
            moved[h.name] = (h.needs.at, since, told)
        self._moved = moved
        return out

    def publish(self, needs: Needs) -> None:
        """Tell the folder's other streams when this stream's reader needs which file next, and where it is
        (``needs.ReaderNeeds``)."""
        if self.claim is not None and self.claim.info.needs == needs:
            return
        with cache_lock(self.folder):
            mine = self._own()
            mine.info.needs = needs
            mine.write()

    def close(self) -> None:
        """Leave the budget: this stream's reservations and future go with its claim file."""
        if self.claim is not None:
            with cache_lock(self.folder):
                self.claim.close()
            self.claim = None


def victims(policy: str, view: FolderScan, claims: list[ClaimInfo], reserved: dict[str, int], rel: str | None = None, now: bool = True, me: ClaimInfo | None = None,
            behind: list[ClaimInfo] | None = None) -> list[tuple[str, bool]]:
    """What may be evicted (for ``rel``, by the stream of claim ``me``), in eviction order: (path, is a
    part). A demand keeps the files that the readers of ``behind`` (default: every claim but ``me``)
    need before ``me``'s place."""
    cands = [(r, False) for r, kind in view.kinds.items() if kind == "data" and r not in reserved and r != rel]
    cands += [(r, True) for r in view.parts if r in view.remote and r not in reserved and r != rel]
    if policy == "lru":
        return sorted(cands, key=lambda c: view.atime.get(c[0], 0))
    mine = me.needs if me is not None else Needs({}, {})
    nxt = next_uses(claims, mine)
    order = sorted(cands, key=lambda c: (-nxt.get(c[0], math.inf), view.atime.get(c[0], 0)))
    if rel is None:
        return order
    if now:  # needed at our own place: keep what a reader behind us needs before it gets here
        kept = next_uses([h for h in claims if h is not me] if behind is None else behind, mine)
        return [c for c in order if kept.get(c[0], math.inf) >= mine.at]
    place = nxt.get(rel, math.inf)  # a prefetch: only files needed after it, ...
    order = [c for c in order if nxt.get(c[0], math.inf) > place]
    if order and _freed_soon(claims, mine) > nxt.get(order[0][0], math.inf):
        return []  # ... and none while a file read now will be a better victim once it is released
    return order


def _place(h: Needs, at: int, me: Needs) -> int:
    """Place ``at`` of ``h``'s clock on ``me``'s: the same within one run, else as far from ``me``'s place as
    it is from ``h``'s."""
    return at if h.run == me.run else me.at + (at - h.at)


def next_uses(claims: list[ClaimInfo], me: Needs) -> dict[str, float]:
    """Each file's next use, the earliest place any of ``claims`` gives, on ``me``'s clock."""
    nxt: dict[str, float] = {}
    for h in claims:
        for r, d in h.needs.future.items():
            nxt[r] = min(nxt.get(r, math.inf), _place(h.needs, d, me))
    return nxt


def _freed_soon(claims: list[ClaimInfo], me: Needs) -> float:
    """Of the files read now, the latest next use once this read is over (-inf: none)."""
    later: dict[str, float] = {}
    needs = [h.needs for h in claims]
    for n in needs:
        for r, d in n.after.items():
            later[r] = min(later.get(r, math.inf), math.inf if d < 0 else _place(n, d, me))
    for n in needs:
        for r, d in n.future.items():
            if r in later and d > n.at:  # needed later by a reader that does not read it now
                later[r] = min(later[r], _place(n, d, me))
    return max(later.values(), default=-math.inf)


def prune(folder: Path, target: int, policy: str = "belady") -> tuple[int, int, int]:
    """Evict from ``folder`` as streaming would until it takes at most ``target`` bytes (never a file in use,
    reserved, local-only or unlisted): (files evicted, bytes freed, bytes it takes now). Blocking."""
    with cache_lock(folder):
        view, claims = scan(folder, read_catalog(folder)), live_claims(folder)
        reserved = reservations(claims)
        used = view.used(reserved)
        count = freed = 0
        for victim, part in victims(policy, view, claims, reserved):
            if used - freed <= target:
                break
            got = evict(folder, victim, part=part)
            if got:
                count, freed = count + 1, freed + got
        return count, freed, used - freed


def reservations(claims: list[ClaimInfo]) -> dict[str, int]:
    """The bytes reserved for each file: the most any of ``claims`` reserves."""
    out: dict[str, int] = {}
    for h in claims:
        for r, b in h.reserved.items():
            out[r] = max(out.get(r, 0), b)
    return out
