"""``nanostream cache DIR [--prune-to SIZE]``: what each data folder under DIR holds, pruned first the way
streaming evicts.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from ...config import parse_cache_limit
from ...errors import ConfigError
from ...shards import RECORD_NAME
from ...sources.catalog import read_catalog
from .budget import prune, reservations
from .claims import cache_lock, in_use, live_claims
from .usage import filesystem_bytes, fmt, scan

KEPT = {"in_use": "in use by a reader", "reserved": "being fetched for a stream",
        "local": "local-only (no source in the record)", "unlisted": "not in the record"}


def describe(folder: Path) -> list[str]:
    """What ``folder`` holds, as lines for people (read under its cache lock, so no stream changes it). Blocking."""
    count: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # group -> [files, bytes]

    def add(group: str, n: int) -> None:
        count[group][0] += 1
        count[group][1] += n

    with cache_lock(folder):
        record = read_catalog(folder)
        view, claims = scan(folder, record), live_claims(folder)
        reserved = reservations(claims)
        for rel, n in view.files.items():
            add("files", n)
            kind = view.kinds[rel]
            add(kind if kind != "data" else "reserved" if rel in reserved else
                "in_use" if in_use(folder / rel) else "evictable", n)
        for rel, n in view.parts.items():
            add("parts", n)
            if rel in view.remote and rel not in reserved:
                add("stale_parts", n)

    def pair(group: str) -> str:
        return f"{count[group][0]} ({fmt(count[group][1])})"

    name = record.name if record is not None else "no record: a local folder"
    limits = ", ".join(fmt(n) for n in sorted({h.limit for h in claims if h.limit is not None})) or "none"
    keep = [f"{what} {pair(group)}" for group, what in KEPT.items() if count[group][0]]
    return [f"{folder} ({name})",
            f"  files: {pair('files')}; parts: {pair('parts')}; bookkeeping: {fmt(view.bookkeeping)}; "
            f"total on disk: {fmt(view.total)}",
            f"  can be evicted: {pair('evictable')} files and {pair('stale_parts')} parts of stopped downloads "
            "(fetched again when needed)",
            f"  cannot be evicted: {'; '.join(keep) or 'nothing'}",
            f"  streams using it now: {len(claims)} (cache_limit: {limits})"]


def data_folders(root: Path) -> list[Path]:
    """``root`` if it is a data folder, else the data folders under it (those with a record)."""
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
    code = 0
    for folder in data_folders(root):
        if limit is not None:
            target = limit.resolve(filesystem_bytes(folder))
            count, freed, now = prune(folder, target, policy)
            print(f"{folder}: evicted {count} file(s), {fmt(freed)}; it takes {fmt(now)} (target {fmt(target)})")
            if now > target:
                print(f"{folder}: cannot get below {fmt(target)}: the rest is in use, being fetched, local-only "
                      "or not in the record, and is never evicted")
                code = 1  # short of the target
        for line in describe(folder):
            print(line)
    return code
