"""The downloader's disk work, off the event loop: ``Disk``, one write pool (``pwritev`` + sha256) and one pool
for the rest (locks, part files, fdatasync + state saves, finalize), at most ``max_syncs`` fsyncs at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Callable
from typing import Any, TypeVar

from ..concurrency import hand_off

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
