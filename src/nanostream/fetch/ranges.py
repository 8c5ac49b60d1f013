"""One HTTP range request into a file's part file (headers, what the answer announces, the body), the tail's
split (once no file is queued, an idle worker splits the range with the most bytes left) and the clock that
gives up on a host never reached. Failures are ``Transient`` / ``Fatal`` for the caller's ``Retries``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from ..errors import FetchError, HTTPStatusError
from ..retry import (
    Fatal,
    Retries,
    RetryPolicy,
    Transient,
    check_status,
    parse_sha256,
    unreachable,
    with_retries,
)
from ..sources.catalog import DataFile
from ..sources.credentials import Credentials, is_s3
from .jobs import Job, Segment
from .partial import PARQUET_MAGIC, Disk, part_path

log = logging.getLogger(__name__)
FLUSH_BYTES = 128 << 10  # a range writes what it received every FLUSH_BYTES or FLUSH_SECONDS
FLUSH_SECONDS = 0.2


def split_tail(active: list[Job], floor: int) -> tuple[Job, Segment] | None:
    """Split the active range with the most bytes left to receive; return the new back half
    (marked active for the caller), or None when no range has ``2 * floor`` bytes left."""
    best: tuple[int, Job, Segment] | None = None
    for job in active:
        if job.finalizing:
            continue
        for seg in job.segments:
            left = 0 if seg.end is None else seg.end - seg.pos - seg.buffered  # not received yet
            if seg.active and left >= 2 * floor and (best is None or left > best[0]):
                best = (left, job, seg)
    if best is None:
        return None
    left, job, seg = best
    new = Segment(seg.end - left // 2, seg.end, active=True)
    seg.end = new.pos
    job.segments.append(new)
    return job, new


def announced(resp: aiohttp.ClientResponse) -> tuple[str | None, int | None]:
    """(sha256, size) an answer announces: the Hub's ``X-Linked-Etag`` / ``X-Linked-Size`` (on the redirect),
    else its ``ETag`` and ``Content-Range`` total or ``Content-Length``."""
    sha = size = None
    for r in (*resp.history, resp):
        sha = parse_sha256(r.headers.get("X-Linked-Etag")) or sha
        size = r.headers.get("X-Linked-Size") or size
    if size is None and resp.status == 206:  # a range's Content-Length is the range's
        size = resp.headers.get("Content-Range", "").rpartition("/")[2]
    elif size is None:
        size = resp.headers.get("Content-Length")
    return sha or parse_sha256(resp.headers.get("ETag")), int(size) if (size or "").isdigit() else None


class RangeDownloader:
    """Shared by a Fetcher's workers: one session, one disk pool, one progress sink, and running estimates of
    one connection's rate and a request's round trip, for split sizing."""

    def __init__(self, session: aiohttp.ClientSession, disk: Disk, credentials: Credentials, progress: Any,
                 on_change: Callable[[], None]):
        self.session, self.disk, self.credentials = session, disk, credentials
        self.progress, self.on_change = progress, on_change
        self.reached = False  # some response arrived from the server in this run
        self.down_since: float | None = None  # when the host was first found unreachable
        self.rtt = 0.05
        self.rate = 0.0  # bytes/s of one connection, 0 until measured

    def host_down(self, job: Job, exc: Exception, policy: RetryPolicy) -> FetchError | None:
        """The error that fails every file when ``exc`` ends a request to a host never reached that failed
        ``policy.attempts`` times or for ``policy.unreachable_after`` seconds; else None (retry)."""
        why = None if self.reached else unreachable(exc)
        if why is not None and self.down_since is None:
            self.down_since = time.monotonic()
            log.debug("%s; retrying for up to %.0fs", why, policy.unreachable_after)
        if why is None or (job.retries.failures + 1 < policy.attempts
                           and time.monotonic() - self.down_since < policy.unreachable_after):
            return None
        where = job.url.rsplit("/", 1)[0]
        err = FetchError(f"{why}: nothing was downloaded; check the network, HF_ENDPOINT, AWS_ENDPOINT_URL "
                         f"or --base-url ({where})", url=where)
        err.__cause__ = exc
        return err

    def min_piece(self) -> int:
        """Smallest range worth a request of its own: one round trip of one connection's bytes (fetch.md)."""
        if not self.rate:
            return 512 << 10
        return int(min(max(self.rate * self.rtt, 64 << 10), 16 << 20))

    async def fetch_range(self, job: Job, seg: Segment, gen: int) -> None:
        ranged = seg.pos > 0 or (seg.end is not None and seg.end != job.size)
        headers = self.credentials.get(job.url, job.signed, seg.pos if ranged else None, seg.end, job.validator)
        t0 = time.monotonic()
        async with self.session.get(self.credentials.target(job.url, job.signed), headers=headers) as resp:
            self.reached = True
            self.rtt = 0.8 * self.rtt + 0.2 * (time.monotonic() - t0)
            if resp.status == 412:  # If-Match (S3): the object is no longer the one we started
                return job.changed("it answers 412 to If-Match")
            check_status(resp)
            if not job.live(gen):
                return
            head = b""
            if resp.status == 200:  # a body from byte 0: it must be parquet before we believe its size
                head = await resp.content.read(64)
                while len(head) < 4 and not resp.content.at_eof():
                    head += await resp.content.read(64)
                if head[:4] != PARQUET_MAGIC:
                    ctype = resp.headers.get("Content-Type", "no Content-Type")
                    raise Transient(f"the server sent {ctype}, not parquet (first bytes {head[:40]!r})")
            await self._learn(job, resp)
            if not job.live(gen):
                return
            if ranged:
                if resp.status == 200:
                    return job.reset("the server ignored Range/If-Range (remote file changed?)")
                first = resp.headers.get("Content-Range", "").replace("bytes ", "").split("-")[0]
                if first != str(seg.pos):
                    raise Transient(f"asked for bytes from {seg.pos}, got Content-Range {first!r}")
            elif resp.status == 206:
                raise Transient("got 206 Partial Content for a plain GET")
            if seg.end is None:
                seg.end = job.size
                self.on_change()  # the size is known: idle workers can now split this shard
            await self._copy_body(job, seg, gen, resp, head)
        if job.live(gen) and not seg.done():
            raise Transient(f"body ended at byte {seg.pos} of {seg.end}")

    async def _learn(self, job: Job, resp: aiohttp.ClientResponse) -> None:
        """Take size, sha256 and validator from the first response; reset if a later one disagrees."""
        sha, size = announced(resp)
        etag = resp.headers.get("ETag")
        listed = job.file
        if job.known:
            problem = listed.mismatch(size, sha)
            tag = (etag or "").strip('"').lower()
            if problem is None and job.signed and listed.md5 and len(tag) == 32 and tag != listed.md5:
                problem = f"its ETag is {tag[:12]}… at the source but {listed.md5[:12]}… in the catalog"
            if problem is not None:
                job.changed(problem)  # listed: raises
            sha, size = sha or listed.sha256, size if size is not None else listed.size
        if job.size is None:
            if size is None:
                raise Fatal("the server sent no Content-Length; cannot verify the download")
            await job.learned(size, sha, etag if etag and not etag.startswith("W/") else None)
            if self.progress is not None:
                self.progress.add_total(size)
        elif (size is not None and size != job.size) or (sha and job.sha256 and sha != job.sha256):
            job.changed("its size or sha256 differs between two answers")

    async def _copy_body(self, job: Job, seg: Segment, gen: int, resp: aiohttp.ClientResponse,
                         head: bytes) -> None:
        """Stream the body into the part file at ``seg.pos``: one ``pwritev`` (no copies) in the Disk's write
        pool per ``FLUSH_BYTES`` or ``FLUSH_SECONDS``; the descriptor is closed after the last write ends."""
        part = part_path(job.final)
        try:
            fd = await self.disk.acquire(os.close, os.open, part, os.O_WRONLY)
        except OSError as exc:
            raise Fatal(f"cannot open {part} for writing: {exc.strerror or exc}") from exc
        chunks: list[bytes | memoryview] = [head] if head else []
        seg.buffered = len(head)
        t0 = since = time.monotonic()  # since: when the oldest buffered byte arrived
        got, write = 0, None

        async def flush() -> None:
            nonlocal write
            n = min(seg.buffered, seg.end - seg.pos)  # split while buffering: the rest is another range's
            data = list(chunks) if n == seg.buffered else [memoryview(b"".join(chunks))[:n]]
            chunks.clear()
            hasher = job.hasher_for(seg)
            write = self.disk.writes.submit(pwrite_and_hash, fd, data, seg.pos, hasher)
            try:
                written = await asyncio.wrap_future(write)
            except OSError as exc:
                raise Fatal(f"cannot write {part}: {exc.strerror or exc} (disk full?)") from exc
            finally:
                seg.buffered = 0
            if written != n:
                raise Fatal(f"short write to {part}: {written} of {n} bytes (disk full?)")
            if job.live(gen):
                job.wrote(seg, n, hashed=hasher is not None)
                if self.progress is not None:
                    self.progress.advance(n)

        try:
            try:
                async for chunk, _ in resp.content.iter_chunks():
                    if not job.live(gen):
                        return
                    got += len(chunk)
                    if not seg.buffered:
                        since = time.monotonic()
                    chunks.append(chunk)
                    seg.buffered += len(chunk)
                    if (seg.buffered >= FLUSH_BYTES or seg.pos + seg.buffered >= seg.end
                            or time.monotonic() - since >= FLUSH_SECONDS):
                        await flush()
                        if seg.done():
                            return
            except Exception:
                if seg.buffered and job.live(gen):  # keep the good bytes that arrived before the failure
                    await flush()
                raise
            if seg.buffered and job.live(gen):
                await flush()
        finally:
            seg.buffered = 0
            if write is not None and not write.done():
                write.add_done_callback(lambda _: os.close(fd))
            else:
                os.close(fd)
            seconds = time.monotonic() - t0
            if got >= 256 << 10 and seconds > 0:
                self.rate = got / seconds if not self.rate else 0.8 * self.rate + 0.2 * got / seconds

    async def head_info(self, url: str, signed: bool = False) -> tuple[str | None, int | None]:
        """(sha256, size) the server announces for ``url`` (HEAD, redirects followed)."""
        async with self.session.head(self.credentials.target(url, signed),
                                     headers=self.credentials.headers("HEAD", url, signed),
                                     allow_redirects=True) as resp:
            self.reached = True
            check_status(resp)
            return announced(resp)

    async def size_of(self, file: DataFile, policy: RetryPolicy) -> int | None:
        """The catalog's size of ``file``, else the server's (HEAD, retried); HTTPStatusError if it refuses."""
        if file.size is not None:
            return file.size
        await self.credentials.prepare([file.url])
        url, signed = self.credentials.http_url(file.url), is_s3(file.url)
        retries = Retries(policy, f"HEAD {file.path}", url=url, shard=file.path)
        try:
            return (await with_retries(retries, lambda: self.head_info(url, signed)))[1]
        except Fatal as exc:
            raise HTTPStatusError(f"HEAD {url}: {exc}", status=exc.status or 0, shard=file.path, url=url) from exc


def pwrite_and_hash(fd: int, chunks: list, offset: int, hasher: Any) -> int:
    """Write ``chunks`` at ``offset`` with one ``pwritev`` (no copies); feed ``hasher`` too."""
    written = os.pwritev(fd, chunks, offset)
    if hasher is not None:
        for c in chunks:
            hasher.update(c)
    return written

