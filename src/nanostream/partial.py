"""Partial downloads on disk: the bookkeeping that makes shards atomic, verified and resumable.

For a shard ``shard_00007.parquet`` in DIR the downloader uses, all hidden:

- ``.nanostream.shard_00007.parquet.part``  the bytes so far (written at their offsets)
- ``.nanostream.shard_00007.parquet.state`` JSON: URL, size, validator, sha256 and the
  byte ranges still missing; written atomically and never ahead of the data
- ``.nanostream.shard_00007.parquet.lock``  an flock held by the process downloading it

"Never ahead of the data": a state file only claims bytes that were written *and*
fsynced before it was written (``Job.snapshot`` then ``fsync(part)`` then ``save``).
A missing range whose end is not known yet is saved as ``[start, null]``: from
``start`` to the end of the file. Only ``finalize`` creates the final name: fsync the
part, check length, parquet magic and sha256, ``os.replace``, fsync the folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .shards import fsync

PARQUET_MAGIC = b"PAR1"


def part_path(final: Path) -> Path:
    return final.with_name(f".nanostream.{final.name}.part")


def state_path(final: Path) -> Path:
    return final.with_name(f".nanostream.{final.name}.state")


def lock_path(final: Path) -> Path:
    return final.with_name(f".nanostream.{final.name}.lock")


@dataclass
class PartState:
    """What a resumed download needs: where from, what to expect, which ranges are missing."""

    url: str
    size: int
    validator: str | None = None  # strong ETag of the body, for If-Range
    sha256: str | None = None
    missing: list[list[int | None]] = field(default_factory=list)  # [start, end) to fetch; end None = EOF

    def save(self, final: Path) -> None:
        """Atomically replace the state file (blocking; the part file must be fsynced first)."""
        path = state_path(final)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    def ranges(self) -> list[tuple[int, int]]:
        """``missing`` with open ends closed at ``size``."""
        return [(s, self.size if e is None else e) for s, e in self.missing]

    @classmethod
    def load(cls, final: Path, url: str) -> PartState | None:
        """The saved state if it matches ``url`` and a part file of the right size exists, else None
        (and the stale files are removed). Blocking."""
        path, part = state_path(final), part_path(final)
        try:
            state = cls(**json.loads(path.read_text()))
            ok = (state.url == url and isinstance(state.size, int) and part.stat().st_size == state.size
                  and all(isinstance(s, int) and (e is None or isinstance(e, int)) for s, e in state.missing)
                  and all(0 <= s <= e <= state.size for s, e in state.ranges()))
        except (OSError, ValueError, TypeError):
            ok, state = False, None
        if not ok:
            discard(final)
            return None
        return state


def discard(final: Path) -> None:
    """Remove a shard's part and state files (not its lock)."""
    for p in (part_path(final), state_path(final), state_path(final).with_name(state_path(final).name + ".tmp")):
        p.unlink(missing_ok=True)


def create_part(final: Path, size: int) -> None:
    """A fresh part file of ``size`` bytes with its space reserved (``posix_fallocate``). Blocking.

    A fresh inode each time, so writers of an abandoned attempt can't touch it. Raises
    OSError(ENOSPC) when the disk cannot hold it; filesystems without fallocate get a
    sparse file instead.
    """
    part = part_path(final)
    part.unlink(missing_ok=True)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        part.unlink(missing_ok=True)
        raise
    os.close(fd)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: Path, size: int | None, sha256: str | None) -> str | None:
    """Why ``path`` is not a good shard (length, magic, sha256), or None if it is. Blocking."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"length {actual} != expected {size}"
    if actual < 8:
        return f"only {actual} bytes, not a parquet file"
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(-4, os.SEEK_END)
        tail = f.read(4)
    if head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
        return f"not a parquet file (starts with {head!r}, ends with {tail!r}; PAR1 expected at both ends)"
    if sha256 is not None:
        got = sha256_file(path)
        if got != sha256:
            return f"sha256 {got[:12]}... != expected {sha256[:12]}..."
    return None


def finalize(final: Path, size: int, sha256: str | None, digest: str | None = None) -> str | None:
    """Verify the part file and atomically publish it as ``final``. Blocking.

    The caller guarantees every byte of ``[0, size)`` was written (no missing range).
    ``digest`` is the sha256 the downloader computed over the bytes as it wrote them
    (when one request wrote the file front to back); without it the file is hashed.
    Returns None on success, else why verification failed (the part is then discarded).
    """
    part = part_path(final)
    fsync(part)
    problem = check_file(part, size, None if digest else sha256)
    if problem is None and digest and sha256 and digest != sha256:
        problem = f"sha256 {digest[:12]}... != expected {sha256[:12]}..."
    if problem is not None:
        discard(final)
        return problem
    os.replace(part, final)
    fsync(final.parent)
    state_path(final).unlink(missing_ok=True)
    return None
