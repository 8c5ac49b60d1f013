"""The smallest ``cache_limit`` that works for a stream (``Minimum``): docs/cache.md says why it always
lets some reader go on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...shards import RECORD_NAME
from ...sources.catalog import Catalog, DataFile, catalog_to_json, read_catalog
from ...sources.counts import COUNTS_FILE
from .usage import BLOCK, CLAIM_ROOM, STATE_BYTES, FolderScan, file_blocks, fmt, scan


@dataclass(frozen=True)
class Minimum:
    """The smallest ``cache_limit`` that works for a stream (``size``), how it is made up, and the size at which
    every file ``ReadAhead.files`` asks for is prefetched too (``prefetch``)."""

    size: int
    prefetch: int
    files: int  # files that must fit at once
    largest: int  # the largest file's reservation
    pinned: int  # bytes no eviction can free
    local: int  # of which local-only and unlisted files
    room: int  # claim files and bookkeeping still to be written
    estimated: bool  # some sizes were not known and were estimated

    def message(self, limit: int, folder: Path, readers: int, ahead: int) -> str:
        if self.local and self.local + self.room > limit:
            return (f"cache_limit={fmt(limit)} is below what {folder} must keep: {fmt(self.local)} of files the "
                    f"folder's record gives no source for (local-only or not listed) are never evicted, so "
                    f"nothing was deleted; the smallest cache_limit that works is {self.size} "
                    f"({fmt(self.size)})")
        est = " (sizes partly estimated)" if self.estimated else ""
        return (f"cache_limit={fmt(limit)} is too small for {folder}: the smallest that works is {self.size} "
                f"bytes ({fmt(self.size)}){est} = {self.files} files of up to {fmt(self.largest)} at once "
                f"(each of the {readers} reader(s) on this node holds the file it reads, and one more downloads) "
                f"+ {fmt(self.pinned)} that cannot be evicted + {fmt(self.room)} of bookkeeping; prefetching "
                f"ReadAhead(files={ahead}) as well needs {fmt(self.prefetch)}")


def minimum(folder: Path, catalog: Catalog, files: list[DataFile], sizes: list[int | None], readers: int,
            ahead: int) -> Minimum:
    """``Minimum`` of a stream whose node has ``readers`` readers of ``files`` (sizes as known; None: unknown).
    Blocking (scans the folder)."""
    view = scan(folder, read_catalog(folder) if folder.is_dir() else None) if folder.is_dir() else FolderScan(folder)
    known = [s for s in sizes if s is not None]
    guess = max(known) if known else 0
    remote = sorted((file_blocks(s if s is not None else guess) for f, s in zip(files, sizes, strict=True)
                     if f.url), reverse=True)
    k = min(readers + 1, len(remote))
    downloads = min(2, k)  # downloads running at once at the minimum, each with its state file
    room = CLAIM_ROOM * (readers + 2) + _bookkeeping_to_come(folder, catalog, len(files))
    pinned = view.pinned()
    local = sum(b for rel, b in view.files.items() if view.kinds[rel] != "data")
    base = pinned + room
    extra = min(k + ahead, len(remote)) - k  # prefetched files that fit at most
    return Minimum(size=base + sum(remote[:k]) + downloads * STATE_BYTES,
                   prefetch=base + sum(remote[:k + extra]) + (downloads + extra) * STATE_BYTES, files=k,
                   largest=remote[0] if remote else 0, pinned=pinned, local=local, room=room,
                   estimated=len(known) < len(sizes))


def _bookkeeping_to_come(folder: Path, catalog: Catalog, n: int) -> int:
    """Room for the record and the row-group counts file (about 64 bytes a file), as they are or will be, and
    for the temporary copy ``shards.write_json`` makes of either while replacing it: the same whether
    they exist yet or not, so every process of a run computes the same minimum."""
    record = max(_allocated(folder / RECORD_NAME),
                 file_blocks(len(json.dumps(catalog_to_json(catalog), indent=1))))
    counts = max(_allocated(folder / COUNTS_FILE), file_blocks(64 * n))
    return 4 * BLOCK + record + counts + max(record, counts)


def _allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0
