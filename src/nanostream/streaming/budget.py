"""One stream's part in a data folder's disk budget (``cache_limit``): admit downloads, evict, publish the future.

The budget is the folder's. Every stream under a limit that reads the folder (the ranks and
DataLoader workers of a node, a validation stream beside training) takes part through the
folder's cache lock and holder files (``usage.py``); the limit applied is the smallest that
any live stream of the folder asked for. What counts is every file under the folder as
allocated on disk (``usage.scan``), plus, for each download admitted but not yet on disk at
its full size, the rest of its reservation (``usage.reserve_size``).

``admit(file, size, now)``: a download starts only once its reservation fits. If it does not,
files are evicted until it does, by the known future (Belady's rule): first the files no
reader of the node needs again, then those needed latest (ties: least recently read). Only a
``data`` file (listed by the folder's record with a URL) or the part of a dead download may
go; never a file a reader holds (``ReadHold``), one another stream reserved, nor a local-only
or unlisted file. A demand (``now``: a reader waits for the file) may evict any of those; a
prefetch only files needed later than itself, and it leaves room for the demands other
streams wait on, so prefetching goes only as far as the budget allows. ``policy="lru"``
orders victims by last read instead (the ablation in ``bench/cache_bench.py``).

``needs``: the smallest limit that works (``Needs``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..shards import RECORD_NAME
from ..sources.catalog import Catalog, DataFile
from ..sources.census import CACHE_NAME
from ..sources.record import catalog_to_json, read_catalog
from .usage import (
    BLOCK,
    HOLDER_ROOM,
    STATE_BYTES,
    FolderScan,
    Holder,
    HolderInfo,
    cache_lock,
    evict,
    file_blocks,
    live_holders,
    reserve_size,
    scan,
)

log = logging.getLogger(__name__)


def fmt(n: float) -> str:
    """Bytes for people: ``812.4 MB``, ``3.20 GB``, ``52.1 kB``."""
    if abs(n) >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB" if abs(n) >= 1e3 else f"{int(n)} bytes"


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
                for victim, part in self._victims(view, holders, reserved, rel, now):
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

    def _victims(self, view: FolderScan, holders: list[HolderInfo], reserved: dict[str, int], rel: str,
                 now: bool) -> list[tuple[str, bool]]:
        """What may be evicted for ``rel``, in eviction order: (path, is a part)."""
        record = self.record()
        remote = {f.path for f in record.files if f.url} if record is not None else set()
        cands = [(r, False) for r, kind in view.kinds.items() if kind == "data" and r not in reserved and r != rel]
        cands += [(r, True) for r in view.parts if r in remote and r not in reserved and r != rel]
        if self.policy == "lru":
            return sorted(cands, key=lambda c: view.atime.get(c[0], 0))
        nxt: dict[str, float] = {}
        for h in holders:
            for r, d in h.future.items():
                nxt[r] = min(nxt.get(r, math.inf), d)
        if not now:
            mine = nxt.get(rel, math.inf)
            cands = [c for c in cands if nxt.get(c[0], math.inf) > mine]
        return sorted(cands, key=lambda c: (-nxt.get(c[0], math.inf), view.atime.get(c[0], 0)))

    def release(self, rel: str) -> None:
        """Drop the reservation of ``rel`` (a reader holds it now, or its download ended)."""
        h = self.holder
        if h is None or (rel not in h.info.reserved and rel not in h.info.waiting):
            return
        with cache_lock(self.folder):
            h.info.reserved.pop(rel, None)
            h.info.waiting.pop(rel, None)
            h.write()

    def publish(self, future: dict[str, int]) -> None:
        """Tell the folder's other streams when this node's readers need which file next (row groups from now)."""
        if self.holder is not None and self.holder.info.future == future:
            return
        with cache_lock(self.folder):
            mine = self._own()
            mine.info.future = future
            mine.write()

    def close(self) -> None:
        """Leave the budget: this stream's reservations and future go with its holder file."""
        if self.holder is not None:
            with cache_lock(self.folder):
                self.holder.close()
            self.holder = None


def _reserved(holders: list[HolderInfo]) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in holders:
        for r, b in h.reserved.items():
            out[r] = max(out.get(r, 0), b)
    return out


@dataclass(frozen=True)
class Needs:
    """The smallest ``cache_limit`` that works for a stream, and how it is made up.

    Each of the node's ``readers`` holds at most the one file it reads; a reader that moves on
    releases it before it waits for the next. So the work never deadlocks if, beside what cannot
    be evicted, the budget holds ``readers + 1`` files of the largest size at once (every reader's
    file and one more: the next download, or another stream such as validation), the state files
    of two downloads at once, the streams' holder files and the bookkeeping still to be written. ``prefetch`` also fits ``fetch_ahead``
    files downloaded ahead; below it, fewer are."""

    minimum: int
    prefetch: int
    files: int  # files that must fit at once
    largest: int  # the largest file's reservation
    pinned: int  # bytes no eviction can free
    local: int  # of which local-only and unlisted files
    room: int  # holder files and bookkeeping still to be written
    estimated: bool  # some sizes were not known and were estimated

    def message(self, limit: int, folder: Path, readers: int, fetch_ahead: int) -> str:
        if self.local and self.local + self.room > limit:
            return (f"cache_limit={fmt(limit)} is below what {folder} must keep: {fmt(self.local)} of files the "
                    f"folder's record gives no source for (local-only or not listed) are never evicted, so "
                    f"nothing was deleted; the smallest cache_limit that works is {self.minimum} "
                    f"({fmt(self.minimum)})")
        est = " (sizes partly estimated)" if self.estimated else ""
        return (f"cache_limit={fmt(limit)} is too small for {folder}: the smallest that works is {self.minimum} "
                f"bytes ({fmt(self.minimum)}){est} = {self.files} files of up to {fmt(self.largest)} at once "
                f"(each of the {readers} reader(s) on this node holds the file it reads, and one more downloads) "
                f"+ {fmt(self.pinned)} that cannot be evicted + {fmt(self.room)} of bookkeeping; prefetching "
                f"fetch_ahead={fetch_ahead} file(s) as well needs {fmt(self.prefetch)}")


def needs(folder: Path, catalog: Catalog, files: list[DataFile], sizes: list[int | None], readers: int,
          fetch_ahead: int) -> Needs:
    """``Needs`` of a stream whose node has ``readers`` readers of ``files`` (sizes as known; None: unknown).
    Blocking (scans the folder)."""
    view = scan(folder, read_catalog(folder) if folder.is_dir() else None) if folder.is_dir() else FolderScan(folder)
    known = [s for s in sizes if s is not None]
    guess = max(known) if known else 0
    remote = sorted((file_blocks(s if s is not None else guess) for f, s in zip(files, sizes, strict=True)
                     if f.url), reverse=True)
    k = min(readers + 1, len(remote))
    downloads = min(2, k)  # downloads running at once at the minimum, each with its state file
    room = HOLDER_ROOM * (readers + 2) + _bookkeeping_to_come(folder, catalog, len(files))
    pinned = view.pinned()
    local = pinned - (view.bookkeeping - view.holders)
    base = pinned + room
    ahead = min(k + fetch_ahead, len(remote)) - k
    return Needs(minimum=base + sum(remote[:k]) + downloads * STATE_BYTES,
                 prefetch=base + sum(remote[:k + ahead]) + (downloads + ahead) * STATE_BYTES, files=k,
                 largest=remote[0] if remote else 0, pinned=pinned, local=local, room=room,
                 estimated=len(known) < len(sizes))


def _bookkeeping_to_come(folder: Path, catalog: Catalog, n: int) -> int:
    """Room for bookkeeping still to be written: the record (if absent), the row-group census (it grows by
    about 64 bytes a file) and the temporary copy ``write_json`` makes of either while replacing it."""
    record = 0 if (folder / RECORD_NAME).exists() else len(json.dumps(catalog_to_json(catalog), indent=1)) + BLOCK
    census = 64 * n + BLOCK
    return 4 * BLOCK + record + census + max(record, census, _size(folder / RECORD_NAME), _size(folder / CACHE_NAME))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size + BLOCK
    except FileNotFoundError:
        return 0
