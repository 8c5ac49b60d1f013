"""What a data folder takes on disk (``st_blocks * 512``), file by file, sorted by the folder's record into
evictable data files, local-only and unlisted files, parts and bookkeeping.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...fetch.partial import SLOT
from ...shards import BOOKKEEPING_PREFIX, RECORD_NAME
from ...sources.catalog import Catalog
from ...sources.counts import COUNTS_FILE

BLOCK = 4096  # allocation unit assumed for a file not on disk yet (one more is added as slack)
STATE_BYTES = 2 * SLOT  # a download's state file, reserved whole (``partial.PartFiles``)
CLAIM_PREFIX = f"{BOOKKEEPING_PREFIX}.cache."
CLAIM_SUFFIX = ".claim"
CLAIM_ROOM = 16 << 10  # the most a claim file takes (its ``future`` is cut to fit: ``claims.Claim``)
RECORDS = (RECORD_NAME, COUNTS_FILE)
TEMP_PREFIX = f"{BOOKKEEPING_PREFIX}.tmp."  # ``shards.write_json``'s temporary file
_PART = (f"{BOOKKEEPING_PREFIX}.", ".part")
_STATE = (f"{BOOKKEEPING_PREFIX}.", ".state")


def fmt(n: float) -> str:
    """Bytes for people: ``812.4 MB``, ``3.20 GB``, ``52.1 kB``."""
    if abs(n) >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB" if abs(n) >= 1e3 else f"{int(n)} bytes"


def allocated(st: os.stat_result) -> int:
    return st.st_blocks * 512


def file_blocks(size: int) -> int:
    """What a ``size``-byte file takes on disk: whole blocks, and one more of slack."""
    return -(-size // BLOCK) * BLOCK + BLOCK


def reserve_size(size: int) -> int:
    """What a download of a ``size``-byte file may take while it runs: its part file and its state file."""
    return file_blocks(size) + STATE_BYTES


def filesystem_bytes(folder: Path) -> int:
    """Size of the filesystem ``folder`` is (or will be) on: its nearest existing ancestor's."""
    at = folder
    while not at.exists() and at != at.parent:
        at = at.parent
    st = os.statvfs(at)
    return st.f_blocks * st.f_frsize


def folder_bytes(folder: Path) -> int:
    """Every file under ``folder``, as allocated on disk: what a ``cache_limit`` bounds."""
    total = 0
    for root, _dirs, names in os.walk(folder):
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                total += allocated(os.lstat(os.path.join(root, n)))
    return total


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

    def on_disk(self, rel: str) -> int:
        return self.files.get(rel, 0) + self.parts.get(rel, 0)

    def pinned(self) -> int:
        """Bytes that no eviction can free: local-only and unlisted files, and the bookkeeping other than the
        claims, the record and the counts file (``minimum.needs`` counts those apart)."""
        keep = sum(n for rel, n in self.files.items() if self.kinds[rel] != "data")
        return keep + self.bookkeeping - self.claims - self.records


def _owner(name: str, affix: tuple[str, str]) -> str | None:
    head, tail = affix
    if name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail):
        return name[len(head):-len(tail)]
    return None


def scan(folder: Path, record: Catalog | None) -> FolderScan:
    """Every file under ``folder``, sorted by ``record``."""
    out = FolderScan(folder)
    urls = {f.path: bool(f.url) for f in record.files} if record is not None else {}
    for root, _dirs, names in os.walk(folder):
        rel_dir = os.path.relpath(root, folder)
        for n in names:
            try:
                st = os.lstat(os.path.join(root, n))
            except FileNotFoundError:
                continue
            size = allocated(st)
            out.total += size
            owner = _owner(n, _PART) or _owner(n, _STATE)
            rel = n if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{n}"
            if owner is not None:
                key = owner if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{owner}"
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
