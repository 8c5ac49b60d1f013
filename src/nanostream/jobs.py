"""One shard's download in progress: its byte ranges, resume state, part file and writer.

A ``Job`` is a shard being fetched: what the server said (size, sha256, validator),
the ``Segment`` ranges still missing, a generation counter that abandons every
in-flight range when the remote changes, and the running sha256 of the prefix
written in order. ``Writer`` puts received chunks into the part file with one
``pwritev`` per MiB, without copying them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import filelock

from .partial import PartState, discard, part_path
from .retry import Fatal

log = logging.getLogger(__name__)
SAVE_EVERY_S = 1.0


class Segment:
    """A byte range [pos, end) of a shard still to download; ``end`` is None until the size is known."""

    __slots__ = ("active", "end", "pos")

    def __init__(self, pos: int, end: int | None):
        self.pos, self.end, self.active = pos, end, False

    def done(self) -> bool:
        return self.end is not None and self.pos >= self.end


class Job:
    """A shard being downloaded; ``future`` resolves to its ShardResult (or FetchError)."""

    def __init__(self, index: int, final: Path, url: str):
        self.index, self.final, self.url = index, final, url
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no GC noise
        self.segments: list[Segment] = []
        self.size: int | None = None
        self.validator: str | None = None
        self.sha256: str | None = None
        self.attempts = self.downloaded = self.gen = 0
        self.lock: filelock.BaseFileLock | None = None
        self.finalizing = False
        self.saved_at = 0.0
        self.hasher: Any = None  # sha256 of bytes [0, hashed) as written, while one range writes them in order
        self.hashed = 0

    @property
    def name(self) -> str:
        return self.final.name

    def live(self, gen: int) -> bool:
        return gen == self.gen and not self.future.done()

    def learned(self, size: int, sha256: str | None, validator: str | None) -> None:
        """The first response told us what to expect: start a fresh part file of ``size`` bytes."""
        self.size, self.sha256, self.validator = size, sha256, validator
        self.hasher, self.hashed = (hashlib.sha256() if sha256 else None), 0
        part = part_path(self.final)
        part.unlink(missing_ok=True)  # a fresh inode: writers of an abandoned generation can't touch it
        with open(part, "wb") as f:
            f.truncate(size)
        self.save(force=True)

    def reset(self, why: str) -> None:
        """Abandon every range in flight and start again from byte 0 (the remote changed, or bad bytes)."""
        log.warning("%s: %s; restarting it from byte 0", self.name, why)
        self.gen += 1
        self.size = self.sha256 = self.validator = self.hasher = None
        self.hashed = 0
        discard(self.final)
        self.segments = [Segment(0, None)]

    def hasher_for(self, seg: Segment) -> Any:
        """The running sha256 if ``seg``'s next bytes continue the in-order prefix, else None."""
        return self.hasher if self.hasher is not None and self.hashed == seg.pos else None

    def wrote(self, seg: Segment, n: int, *, hashed: bool) -> None:
        """``n`` bytes landed at ``seg.pos``; ``hashed`` if they went through ``hasher`` too."""
        if hashed:
            self.hashed += n
        seg.pos += n
        self.downloaded += n
        self.save()

    def digest(self) -> str | None:
        """The sha256 computed while writing, when it covers the whole file."""
        return self.hasher.hexdigest() if self.hasher is not None and self.hashed == self.size else None

    def save(self, force: bool = False) -> None:
        """Record the missing ranges (never ahead of what was written)."""
        now = time.monotonic()
        if self.size is None or self.future.done() or not (force or now - self.saved_at >= SAVE_EVERY_S):
            return
        self.saved_at = now
        missing = [[s.pos, s.end] for s in self.segments if s.end is not None and s.pos < s.end]
        try:
            PartState(self.url, self.size, self.validator, self.sha256, missing).save(self.final)
        except OSError as exc:
            log.warning("%s: could not save resume state: %s", self.name, exc)


def pwrite_and_hash(fd: int, chunks: list, offset: int, hasher) -> int:
    written = os.pwritev(fd, chunks, offset)
    if hasher is not None:
        for c in chunks:
            hasher.update(c)
    return written


class Writer:
    """Buffers received chunks and writes them at an offset with one ``pwritev`` in the Fetcher's pool.

    The file descriptor is closed only after any write still running in the pool has finished,
    so a cancelled download never leaves a thread writing to a reused descriptor.
    """

    def __init__(self, fd: int, path: Path, pool: concurrent.futures.Executor):
        self.fd, self.path, self.pool = fd, path, pool
        self.hasher = None  # set to the job's sha256 object while this range continues the hashed prefix
        self.chunks: list[bytes | memoryview] = []
        self.pending = 0
        self.inflight: concurrent.futures.Future | None = None

    def add(self, chunk: bytes, room: int) -> None:
        if len(chunk) > room:  # the range may have been split since this request started
            chunk = memoryview(chunk)[: max(room, 0)]
        self.chunks.append(chunk)
        self.pending += len(chunk)

    async def flush(self, offset: int, end: int) -> int:
        """Write the buffered bytes at ``offset`` (never past ``end``); return how many."""
        chunks, n = self.chunks, self.pending
        if offset + n > end:  # split while buffering: drop what now belongs to another range
            n = max(end - offset, 0)
            chunks = [memoryview(b"".join(chunks))[:n]]
        self.chunks, self.pending = [], 0
        self.inflight = self.pool.submit(pwrite_and_hash, self.fd, chunks, offset, self.hasher)
        try:
            written = await asyncio.wrap_future(self.inflight)
        except OSError as exc:
            raise Fatal(f"cannot write {self.path}: {exc} (disk full?)") from exc
        if written != n:
            raise Fatal(f"short write to {self.path}: {written} of {n} bytes (disk full?)")
        return n

    def close(self) -> None:
        if self.inflight is not None and not self.inflight.done():
            self.inflight.add_done_callback(lambda _: os.close(self.fd))
        else:
            os.close(self.fd)
