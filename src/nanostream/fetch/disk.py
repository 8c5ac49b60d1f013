"""The downloader's disk work, off the event loop: ``Disk``, one write pool (``pwritev`` + sha256) and one pool
for the rest (locks, part files, fdatasync + state saves, finalize), at most ``max_syncs`` fsyncs at once;
``Writer``, a range's received chunks written with one ``pwritev`` every ``FLUSH_BYTES`` or ``FLUSH_SECONDS``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..concurrency import hand_off
from ..retry import Fatal

T = TypeVar("T")
FLUSH_BYTES = 128 << 10
FLUSH_SECONDS = 0.2


def pwrite_and_hash(fd: int, chunks: list, offset: int, hasher: Any) -> int:
    """Write ``chunks`` at ``offset`` with one ``pwritev`` (no copies); feed ``hasher`` too."""
    written = os.pwritev(fd, chunks, offset)
    if hasher is not None:
        for c in chunks:
            hasher.update(c)
    return written


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


class Writer:
    """Buffers received chunks and writes them at an offset with one ``pwritev`` in the Disk pool; its
    descriptor is closed only after a write still running has finished (never a reused descriptor)."""

    def __init__(self, fd: int, path: Path, disk: Disk):
        self.fd, self.path, self.disk = fd, path, disk
        self.hasher = None  # set to the job's sha256 object while this range continues the hashed prefix
        self.chunks: list[bytes | memoryview] = []
        self.pending = 0
        self.since = 0.0  # monotonic time of the oldest buffered byte
        self.inflight: concurrent.futures.Future | None = None

    def add(self, chunk: bytes, room: int) -> None:
        if len(chunk) > room:  # the range may have been split since this request started
            chunk = memoryview(chunk)[: max(room, 0)]
        if not self.pending:
            self.since = time.monotonic()
        self.chunks.append(chunk)
        self.pending += len(chunk)

    def due(self) -> bool:
        return self.pending >= FLUSH_BYTES or (self.pending > 0 and time.monotonic() - self.since >= FLUSH_SECONDS)

    async def flush(self, offset: int, end: int) -> int:
        """Write the buffered bytes at ``offset`` (never past ``end``); return how many."""
        chunks, n = self.chunks, self.pending
        if offset + n > end:  # split while buffering: drop what now belongs to another range
            n = max(end - offset, 0)
            chunks = [memoryview(b"".join(chunks))[:n]]
        self.chunks, self.pending = [], 0
        self.inflight = self.disk.writes.submit(pwrite_and_hash, self.fd, chunks, offset, self.hasher)
        try:
            written = await asyncio.wrap_future(self.inflight)
        except OSError as exc:
            raise Fatal(f"cannot write {self.path}: {exc.strerror or exc} (disk full?)") from exc
        if written != n:
            raise Fatal(f"short write to {self.path}: {written} of {n} bytes (disk full?)")
        return n

    def close(self) -> None:
        if self.inflight is not None and not self.inflight.done():
            self.inflight.add_done_callback(lambda _: os.close(self.fd))
        else:
            os.close(self.fd)
