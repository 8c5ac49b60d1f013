"""The downloader's disk pool: a resource made in a thread is never leaked by a cancelled caller."""

from __future__ import annotations

import asyncio
import os
import threading

import psutil

from nanostream.fetch.partial import Disk


async def test_cancelled_acquire_hands_the_resource_back(tmp_path):
    """Cancel the caller while the thread is still opening: the descriptor is closed once it exists."""
    disk, started, path = Disk(), threading.Event(), tmp_path / "f"
    path.write_bytes(b"x")

    def slow_open() -> int:
        started.set()
        threading.Event().wait(0.2)
        return os.open(path, os.O_RDONLY)

    task = asyncio.ensure_future(disk.acquire(os.close, slow_open))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    disk.close()  # waits for the thread: the open happened, then the release
    assert not [f for f in psutil.Process().open_files() if f.path == str(path)]


async def test_acquire_returns_the_resource_to_a_caller_that_waits(tmp_path):
    disk = Disk()
    path = tmp_path / "f"
    path.write_bytes(b"x")
    fd = await disk.acquire(os.close, os.open, path, os.O_RDONLY)
    try:
        assert os.read(fd, 1) == b"x"
    finally:
        os.close(fd)
        disk.close()
