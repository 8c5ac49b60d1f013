"""``nanostream cache DIR [--prune-to SIZE]``: what each data folder under DIR holds, and pruning it the way
streaming evicts (docs/cache.md). DIR is a data folder, or a folder of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ...config import parse_cache_limit
from ...errors import ConfigError
from ...shards import RECORD_NAME
from ...sources.record import read_catalog
from .budget import _reserved, prune
from .claims import cache_lock, in_use, live_claims
from .usage import filesystem_bytes, fmt, scan

EXIT_OK, EXIT_SHORT = 0, 1


@dataclass
class Survey:
    """One folder's files by what may happen to them (counts and bytes)."""

    folder: Path
    name: str
    total: int = 0
    files: list[int] = field(default_factory=lambda: [0, 0])
    evictable: list[int] = field(default_factory=lambda: [0, 0])
    in_use: list[int] = field(default_factory=lambda: [0, 0])
    reserved: list[int] = field(default_factory=lambda: [0, 0])
    local: list[int] = field(default_factory=lambda: [0, 0])
    unlisted: list[int] = field(default_factory=lambda: [0, 0])
    parts: list[int] = field(default_factory=lambda: [0, 0])
    stale_parts: list[int] = field(default_factory=lambda: [0, 0])
    bookkeeping: int = 0
    streams: int = 0
    limits: list[int] = field(default_factory=list)


def _add(pair: list[int], n: int) -> None:
    pair[0] += 1
    pair[1] += n


def survey(folder: Path) -> Survey:
    """What ``folder`` holds (under its cache lock, so no stream changes it meanwhile). Blocking."""
    with cache_lock(folder):
        record = read_catalog(folder)
        view, claims = scan(folder, record), live_claims(folder)
        reserved = _reserved(claims)
        out = Survey(folder, record.name if record is not None else "no record: a local folder", view.total)
        for rel, n in view.files.items():
            _add(out.files, n)
            kind = view.kinds[rel]
            if kind == "local":
                _add(out.local, n)
            elif kind == "unlisted":
                _add(out.unlisted, n)
            elif rel in reserved:
                _add(out.reserved, n)
            elif in_use(folder / rel):
                _add(out.in_use, n)
            else:
                _add(out.evictable, n)
        remote = {f.path for f in record.files if f.url} if record is not None else set()
        for rel, n in view.parts.items():
            _add(out.parts, n)
            if rel in remote and rel not in reserved:
                _add(out.stale_parts, n)
        out.bookkeeping = view.bookkeeping
        out.streams = len(claims)
        out.limits = sorted({h.limit for h in claims if h.limit is not None})
    return out


def _pair(p: list[int]) -> str:
    return f"{p[0]} ({fmt(p[1])})"


def describe(s: Survey) -> list[str]:
    limits = ", ".join(fmt(n) for n in s.limits) or "none"
    keep = [f"{what} {_pair(p)}" for what, p in (("in use by a reader", s.in_use),
                                                  ("being fetched for a stream", s.reserved),
                                                  ("local-only (no source in the record)", s.local),
                                                  ("not in the record", s.unlisted)) if p[0]]
    return [f"{s.folder} ({s.name})",
            f"  files: {_pair(s.files)}; parts: {_pair(s.parts)}; bookkeeping: {fmt(s.bookkeeping)}; "
            f"total on disk: {fmt(s.total)}",
            f"  can be evicted: {_pair(s.evictable)} files and {_pair(s.stale_parts)} parts of stopped downloads "
            "(fetched again when needed)",
            f"  cannot be evicted: {'; '.join(keep) or 'nothing'}",
            f"  streams using it now: {s.streams} (cache_limit: {limits})"]


def data_folders(root: Path) -> list[Path]:
    """The data folders ``nanostream cache`` looks at under ``root`` (see the module docstring)."""
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder: give a data folder or a folder of them "
                          "(e.g. $NANOSTREAM_BASE_DIR/data)")
    names = os.listdir(root)
    if RECORD_NAME in names or any(n.endswith(".parquet") for n in names):
        return [root]
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if RECORD_NAME in files:
            out.append(Path(dirpath))
            dirs[:] = []
    if not out:
        raise ConfigError(f"no data folder under {root}: none has a .nanostream.json or parquet files")
    return out


def run_cache(root: Path, prune_to: str | None, policy: str = "belady") -> int:
    """The ``nanostream cache`` command: print each folder (pruned first with ``prune_to``); the exit code."""
    limit = parse_cache_limit(prune_to, "--prune-to") if prune_to is not None else None
    code = EXIT_OK
    for folder in data_folders(root):
        if limit is not None:
            target = limit.resolve(filesystem_bytes(folder))
            count, freed, now = prune(folder, target, policy)
            print(f"{folder}: evicted {count} file(s), {fmt(freed)}; it takes {fmt(now)} (target {fmt(target)})")
            if now > target:
                print(f"{folder}: cannot get below {fmt(target)}: the rest is in use, being fetched, local-only "
                      "or not in the record, and is never evicted")
                code = EXIT_SHORT
        for line in describe(survey(folder)):
            print(line)
    return code
