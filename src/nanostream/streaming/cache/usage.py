"""What a data folder takes on disk (``st_blocks * 512``), file by file, sorted by the folder's record into
evictable data files, local-only and unlisted files, parts and bookkeeping; and the smallest ``cache_limit``
that works for a stream (``Minimum``: docs/cache.md says why it always lets some reader go on).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...fetch.partial import SLOT
from ...shards import BOOKKEEPING_PREFIX, RECORD_NAME
from ...sources.catalog import Catalog, DataFile, catalog_to_json, read_catalog
from ...sources.counts import COUNTS_FILE

BLOCK = 4096  # allocation unit assumed for a file not on disk yet (one more is added as slack)
STATE_BYTES = 2 * SLOT  # a download's state file, reserved whole (``partial.PartFiles``)
CLAIM_PREFIX = f"{BOOKKEEPING_PREFIX}.cache."
CLAIM_SUFFIX = ".claim"
CLAIM_ROOM = 16 << 10  # the most a claim file takes (its ``future`` is cut to fit: ``claims.Claim``)
RECORDS = (RECORD_NAME, COUNTS_FILE)
TEMP_PREFIX = f"{BOOKKEEPING_PREFIX}.tmp."  # ``shards.write_json``'s temporary file
DOWNLOAD = re.compile(rf"{re.escape(BOOKKEEPING_PREFIX)}\.(.+)\.(part|state)")  # a download's part or state file


def fmt(n: float) -> str:
    """Bytes for people: ``812.4 MB``, ``3.20 GB``, ``52.1 kB``."""
    for unit, size, digits in (("GB", 1e9, 2), ("MB", 1e6, 1), ("kB", 1e3, 1)):
        if abs(n) >= size:
            return f"{n / size:.{digits}f} {unit}"
    return f"{int(n)} bytes"


def allocated(st: os.stat_result) -> int:
    return st.st_blocks * 512


def file_blocks(size: int) -> int:
    """What a ``size``-byte file takes on disk: whole blocks, and one more of slack."""
    return -(-size // BLOCK) * BLOCK + BLOCK


def filesystem_bytes(folder: Path) -> int:
    """Size of the filesystem ``folder`` is (or will be) on: its nearest existing ancestor's."""
    at = folder
    while not at.exists() and at != at.parent:
        at = at.parent
    st = os.statvfs(at)
    return st.f_blocks * st.f_frsize


def folder_bytes(folder: Path) -> int:
    """Every file under ``folder``, as allocated on disk: what a ``cache_limit`` bounds."""
    return scan(folder, None).total


@dataclass
class FolderScan:
    """A folder's files by kind (paths relative to the folder; a part is filed under its data file's path)."""

    folder: Path
    files: dict[str, int] = field(default_factory=dict)  # data files (final names): allocated bytes
    kinds: dict[str, str] = field(default_factory=dict)  # data file -> "data" | "local" | "unlisted"
    atime: dict[str, int] = field(default_factory=dict)  # data file or part -> last read (ns)
    parts: dict[str, int] = field(default_factory=dict)  # data file -> its part + state files' bytes
    bookkeeping: int = 0  # the other .nanostream* files (record, counts file, claims, locks)
    claims: int = 0  # of which claim files
    records: int = 0  # of which the record and the row-group counts file (and their temporary copies)
    total: int = 0
    remote: set[str] = field(default_factory=set)  # the record's files that can be fetched again

    def on_disk(self, rel: str) -> int:
        return self.files.get(rel, 0) + self.parts.get(rel, 0)

    def used(self, reserved: dict[str, int]) -> int:
        """Bytes the folder takes with every reservation counted in full (``reserved``: file -> bytes)."""
        return self.total + sum(max(0, b - self.on_disk(r)) for r, b in reserved.items())

    def pinned(self) -> int:
        """Bytes that no eviction can free: local-only and unlisted files, and the bookkeeping other than the
        claims, the record and the counts file (``minimum.needs`` counts those apart)."""
        keep = sum(n for rel, n in self.files.items() if self.kinds[rel] != "data")
        return keep + self.bookkeeping - self.claims - self.records


def scan(folder: Path, record: Catalog | None) -> FolderScan:
    """Every file under ``folder``, sorted by ``record``."""
    urls = {f.path: bool(f.url) for f in record.files} if record is not None else {}
    out = FolderScan(folder, remote={rel for rel, url in urls.items() if url})
    for root, _dirs, names in os.walk(folder):
        rel_dir = os.path.relpath(root, folder)
        under = "" if rel_dir == "." else f"{Path(rel_dir).as_posix()}/"
        for n in names:
            try:
                st = os.lstat(os.path.join(root, n))
            except FileNotFoundError:
                continue
            size = allocated(st)
            out.total += size
            download, rel = DOWNLOAD.fullmatch(n), under + n
            if download is not None:
                key = under + download[1]
                out.parts[key] = out.parts.get(key, 0) + size
                if n.endswith(".part"):
                    out.atime[key] = max(out.atime.get(key, 0), st.st_atime_ns)
            elif n.startswith(BOOKKEEPING_PREFIX):
                out.bookkeeping += size
                if n.startswith(CLAIM_PREFIX) and n.endswith(CLAIM_SUFFIX):
                    out.claims += size
                elif (rel_dir == "." and n in RECORDS) or n.startswith(TEMP_PREFIX):
                    out.records += size
            else:
                out.files[rel] = size
                out.kinds[rel] = "unlisted" if rel not in urls else "data" if urls[rel] else "local"
                out.atime[rel] = st.st_atime_ns
    return out


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
    view = scan(folder, read_catalog(folder)) if folder.is_dir() else FolderScan(folder)
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
        return allocated(path.stat())
    except FileNotFoundError:
        return 0
