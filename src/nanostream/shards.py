"""A data folder's names and files: shard names, bookkeeping names (``.nanostream*``), atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError

SHARD_RE = re.compile(r"^shard_(\d{5,})\.parquet$")
BOOKKEEPING_PREFIX = ".nanostream"
RECORD_NAME = ".nanostream.json"


def shard_name(index: int) -> str:
    if index < 0:
        raise ConfigError(f"shard index must be >= 0, got {index}")
    return f"shard_{index:05d}.parquet"


def shard_index(name: str) -> int | None:
    """The index in a shard file name, or None if ``name`` is not a shard file."""
    m = SHARD_RE.match(name)
    return int(m.group(1)) if m else None


def list_shards(data_dir: Path) -> list[int]:
    """Sorted indices of the complete shard files in ``data_dir`` (partials never match)."""
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return []
    return sorted(i for i in map(shard_index, names) if i is not None)


def file_digest(path: Path, h: str | Any = "sha256") -> str:
    """Hex digest of a file's bytes fed to ``h``: a hashlib name or a hash object (blocking: reads it all)."""
    h = hashlib.new(h) if isinstance(h, str) else h
    buf = bytearray(1 << 20)  # one buffer per call: little for malloc to keep after
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def fsync(path: Path) -> None:
    """fsync a file or a folder (a folder: so a rename in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (temp file, fsync, ``os.replace``, fsync the folder)."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{BOOKKEEPING_PREFIX}.tmp.", dir=folder)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync(folder)


def write_json(path: Path, obj: object, **dump_kwargs: object) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON."""
    write_bytes(path, json.dumps(obj, **dump_kwargs).encode())  # type: ignore[arg-type]
