"""A download's hidden files beside the final name (``.nanostream.NAME.part``, ``.state``, ``.lock``), the
verified, atomic publish (``finalize``), the only code that creates a final name, and ``Disk``, the threads
that do this blocking work off the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import os
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import filelock

from ..concurrency import hand_off
from ..shards import file_digest, fsync

T = TypeVar("T")
PARQUET_MAGIC = b"PAR1"
SLOT = 64 << 10  # bytes per state slot (a state with thousands of ranges still fits)
SLOT_HEADER = struct.Struct("<4sQII")  # magic, sequence number, JSON length, crc32 of the JSON
SLOT_MAGIC = b"NSS1"


def part_path(final: Path) -> Path:
    return final.with_name(f".nanostream.{final.name}.part")


def state_path(final: Path) -> Path:
    return final.with_name(f".nanostream.{final.name}.state")


@dataclass
class PartState:
    """What a resumed download needs: where from, what to expect, which ranges are missing."""

    url: str
    size: int
    validator: str | None = None  # strong ETag of the body, for If-Range
    sha256: str | None = None
    missing: list[list[int]] = field(default_factory=list)  # [start, end) ranges still to fetch

    def encode(self, seq: int) -> bytes:
        body = json.dumps(asdict(self), separators=(",", ":")).encode()
        if SLOT_HEADER.size + len(body) > SLOT:
            raise OSError(errno.EFBIG, f"resume state of {len(self.missing)} ranges does not fit a slot")
        return SLOT_HEADER.pack(SLOT_MAGIC, seq, len(body), zlib.crc32(body)) + body

    @classmethod
    def load(cls, final: Path, url: str) -> tuple[PartState, int] | None:
        """The newest valid saved state and its sequence number, if it matches ``url`` and a part
        file of the right size exists; else None (and the stale files are removed). Blocking."""
        try:
            raw, slots = state_path(final).read_bytes(), []
            for off in (0, SLOT):
                magic, seq, n, crc = SLOT_HEADER.unpack_from(raw.ljust(off + SLOT_HEADER.size, b"\0"), off)
                body = raw[off + SLOT_HEADER.size: off + SLOT_HEADER.size + n]
                if magic == SLOT_MAGIC and len(body) == n and zlib.crc32(body) == crc:
                    slots.append((seq, cls(**json.loads(body))))
            seq, best = max(slots, key=lambda slot: slot[0])  # ValueError when neither slot is whole
            if (best.url == url and all(0 <= s <= e <= best.size for s, e in best.missing)
                    and part_path(final).stat().st_size == best.size):
                return best, seq
        except (OSError, ValueError, TypeError, struct.error):  # TypeError: a field that is not an int
            pass
        discard(final)
        return None


class Disk:
    """A thread pool for blocking file work plus a cap on concurrent fsyncs."""

    def __init__(self, threads: int = 4, max_syncs: int = 2) -> None:
        self.writes = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="nanostream-write")
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nanostream-disk")
        self._syncs = asyncio.Semaphore(max_syncs)
        self.reserving = asyncio.Lock()  # held while a part file and its state file get their blocks

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` in the pool; awaiting it does not block the loop."""
        return await asyncio.wrap_future(self.pool.submit(fn, *args))

    async def acquire(self, release: Callable[[T], Any], fn: Callable[..., T], *args: Any) -> T:
        """``run`` for work that returns a resource (a descriptor, a lock): if the caller is cancelled
        while the thread still runs, the resource is handed to ``release`` once it exists, never leaked."""
        return await hand_off(self.pool.submit(fn, *args), release)

    async def run_synced(self, fn: Callable[..., T], *args: Any) -> T:
        """Like ``run`` for work that fsyncs: at most ``max_syncs`` at a time."""
        async with self._syncs:
            return await self.run(fn, *args)

    def close(self) -> None:
        """Wait for every write and sync still running (no thread outlives the Fetcher)."""
        self.writes.shutdown(wait=True)
        self.pool.shutdown(wait=True)


class PartFiles:
    """Open descriptors of a file's part and state, for one download attempt's saves: ``save`` (blocking)
    fdatasyncs the part, then writes the state to the slot after the last one. With ``size``, a fresh part
    file of ``size`` bytes (``create_part``) and a fresh state file, both reserved, are made first."""

    def __init__(self, final: Path, *, seq: int = 0, size: int | None = None) -> None:
        fresh = size is not None
        if fresh:
            create_part(final, size)
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0)
        with contextlib.ExitStack() as undo:  # closes what was opened if a later step fails
            self.part = os.open(part_path(final), os.O_RDONLY)
            undo.callback(os.close, self.part)
            self.state = os.open(state_path(final), flags, 0o644)
            undo.callback(os.close, self.state)
            if fresh:
                reserve(self.state, 2 * SLOT)  # no save can meet a full disk later
            undo.pop_all()
        self.seq = seq
        self._lock = threading.Lock()

    def save(self, state: PartState) -> None:
        with self._lock:
            if self.part < 0:
                return
            os.fdatasync(self.part)  # the bytes the state claims are durable before the claim
            self.seq += 1
            data = state.encode(self.seq)
            os.pwrite(self.state, data, (self.seq % 2) * SLOT)

    def close(self) -> None:
        with self._lock:
            if self.part >= 0:
                os.close(self.part)
                os.close(self.state)
                self.part = self.state = -1


def try_lock(final: Path) -> filelock.BaseFileLock | None:
    """The file's flock if no other process (or Fetcher) holds it, else None. Blocking."""
    lock = filelock.FileLock(final.with_name(f".nanostream.{final.name}.lock"), thread_local=False)
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        return None
    return lock


Opened = tuple[str, filelock.BaseFileLock | None, PartState | None, PartFiles | None]


def open_job(final: Path, url: str, verify: bool) -> Opened:
    """("present" | "busy" | "verify" | "start", lock, resume state, its open files). Blocking."""
    if final.exists() and not verify:
        return "present", None, None, None
    final.parent.mkdir(parents=True, exist_ok=True)  # a catalog path may have folders
    lock = try_lock(final)
    if lock is None:
        return "busy", None, None, None
    if final.exists():
        return "verify", lock, None, None
    loaded = PartState.load(final, url)
    if loaded is None:
        return "start", lock, None, None
    try:
        return "start", lock, loaded[0], PartFiles(final, seq=loaded[1])
    except BaseException:
        lock.release()
        raise


def release_job(opened: Opened) -> None:
    """Undo ``open_job`` for a caller that was cancelled meanwhile: close the files, drop the lock."""
    _, lock, _, files = opened
    if files is not None:
        files.close()
    if lock is not None:
        lock.release()


def discard(final: Path) -> None:
    """Remove a shard's part and state files (not its lock)."""
    for p in (part_path(final), state_path(final)):
        p.unlink(missing_ok=True)


def reserve(fd: int, size: int) -> None:
    """Make the file ``size`` bytes long with its blocks allocated (``posix_fallocate``); a
    filesystem without fallocate gets a sparse file. OSError(ENOSPC) when the disk cannot hold it."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)


def create_part(final: Path, size: int) -> None:
    """A fresh part file (a new inode: writers of an abandoned attempt cannot touch it) of ``size`` bytes,
    reserved (``reserve``). Blocking; OSError(ENOSPC) when the disk cannot hold it."""
    part = part_path(final)
    part.unlink(missing_ok=True)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        reserve(fd, size)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def check_file(path: Path, size: int | None, sha256: str | None, md5: str | None = None,
               digest: str | None = None) -> str | None:
    """Why ``path`` is not a good shard (length, magic, sha256 or else md5), or None if it is. ``digest``: its
    sha256 if already computed (else the file is hashed). Blocking."""
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
        got = digest or file_digest(path)
        if got != sha256:
            return f"sha256 {got[:12]}... != expected {sha256[:12]}..."
    elif md5 is not None:
        got = file_digest(path, "md5")
        if got != md5:
            return (f"MD5 {got[:12]}... != the listed ETag {md5[:12]}... (an object encrypted with SSE-KMS or "
                    "SSE-C has an ETag that is not its MD5)")
    return None


def finalize(final: Path, size: int, sha256: str | None, digest: str | None = None,
             md5: str | None = None) -> str | None:
    """Verify the complete part file and publish it as ``final`` (fsync, ``os.replace``, fsync the folder).
    ``digest``: the sha256 computed while writing, if it covers the file (else the file is hashed).
    Blocking; None when published, else why verification failed (the part is then discarded)."""
    part = part_path(final)
    fsync(part)
    problem = check_file(part, size, sha256, md5, digest)
    if problem is not None:
        discard(final)
        return problem
    os.replace(part, final)
    fsync(final.parent)
    state_path(final).unlink(missing_ok=True)
    return None
