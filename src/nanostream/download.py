"""One HTTP range request into a shard's part file: headers, validation, body streaming.

``RangeDownloader.fetch_range`` issues ``GET`` (with ``Range`` + ``If-Range`` when it
continues or splits a shard), learns size / sha256 / validator from the first
answer (following the Hub's redirect: ``X-Linked-Etag`` / ``X-Linked-Size`` sit on
the 302), restarts the shard if the remote changed, and streams the body to disk.
Failures surface as ``Transient`` / ``Fatal`` (see ``retry.py``) for the caller's
retry loop. ``head_info`` answers ``--verify``'s question: what sha256 and size
does the server announce?
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from typing import Any

import aiohttp

from .jobs import Job, Segment, Writer
from .partial import part_path
from .retry import Fatal, Transient, check_status, parse_sha256

WRITE_CHUNK = 1 << 20


class RangeDownloader:
    """Shared by a Fetcher's workers: one session, one writer pool, one progress sink."""

    def __init__(self, session: aiohttp.ClientSession, pool: concurrent.futures.Executor,
                 headers: dict[str, str], progress: Any, on_change: Callable[[], None]):
        self.session, self.pool, self.headers = session, pool, headers
        self.progress, self.on_change = progress, on_change

    async def fetch_range(self, job: Job, seg: Segment, gen: int) -> None:
        headers = dict(self.headers)
        ranged = seg.pos > 0 or (seg.end is not None and seg.end != job.size)
        if ranged:
            headers["Range"] = f"bytes={seg.pos}-{seg.end - 1}"
            if job.validator:
                headers["If-Range"] = job.validator
        async with self.session.get(job.url, headers=headers) as resp:
            check_status(resp)
            if not job.live(gen):
                return
            self._learn(job, resp)
            if not job.live(gen):
                return
            if ranged:
                if resp.status == 200:
                    return self._reset(job, "the server ignored Range/If-Range (remote file changed?)")
                first = resp.headers.get("Content-Range", "").replace("bytes ", "").split("-")[0]
                if first != str(seg.pos):
                    raise Transient(f"asked for bytes from {seg.pos}, got Content-Range {first!r}")
            elif resp.status == 206:
                raise Transient("got 206 Partial Content for a plain GET")
            if seg.end is None:
                seg.end = job.size
                self.on_change()  # the size is known: idle workers can now split this shard
            await self._copy_body(job, seg, gen, resp)
        if job.live(gen) and not seg.done():
            raise Transient(f"body ended at byte {seg.pos} of {seg.end}")

    def _learn(self, job: Job, resp: aiohttp.ClientResponse) -> None:
        """Take size, sha256 and validator from the first response; reset if a later one disagrees."""
        linked_sha = linked_size = None
        for r in (*resp.history, resp):
            linked_sha = parse_sha256(r.headers.get("X-Linked-Etag")) or linked_sha
            linked_size = r.headers.get("X-Linked-Size") or linked_size
        if resp.status == 206:
            total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        else:
            total = resp.headers.get("Content-Length")
        size = int(linked_size or total) if (linked_size or total or "").isdigit() else None
        sha = linked_sha or parse_sha256(resp.headers.get("ETag"))
        etag = resp.headers.get("ETag")
        if job.size is None:
            if size is None:
                raise Fatal("the server sent no Content-Length; cannot verify the download")
            job.learned(size, sha, etag if etag and not etag.startswith("W/") else None)
            if self.progress is not None:
                self.progress.add_total(size)
        elif (size is not None and size != job.size) or (sha and job.sha256 and sha != job.sha256):
            self._reset(job, "the remote file changed (size or sha256 differ)")

    def _reset(self, job: Job, why: str) -> None:
        job.reset(why)
        self.on_change()

    async def _copy_body(self, job: Job, seg: Segment, gen: int, resp: aiohttp.ClientResponse) -> None:
        """Stream the body into the part file at ``seg.pos`` with ``pwritev`` (no copies)."""
        part = part_path(job.final)
        try:
            fd = os.open(part, os.O_WRONLY)
        except OSError as exc:
            raise Fatal(f"cannot open {part} for writing: {exc}") from exc
        out = Writer(fd, part, self.pool)

        async def flush() -> None:
            out.hasher = job.hasher_for(seg)
            n = await out.flush(seg.pos, seg.end)
            if job.live(gen):
                job.wrote(seg, n, hashed=out.hasher is not None)
                if self.progress is not None:
                    self.progress.advance(n)

        try:
            try:
                async for chunk, _ in resp.content.iter_chunks():
                    if not job.live(gen):
                        return
                    out.add(chunk, seg.end - seg.pos - out.pending)
                    if out.pending >= WRITE_CHUNK or seg.pos + out.pending >= seg.end:
                        await flush()
                        if seg.done():
                            return
            except Exception:
                if out.pending and job.live(gen):  # keep the good bytes that arrived before the failure
                    await flush()
                raise
            if out.pending and job.live(gen):
                await flush()
        finally:
            out.close()

    async def head_info(self, url: str) -> tuple[str | None, int | None]:
        """(sha256, size) the server announces for ``url`` (HEAD, redirects followed)."""
        async with self.session.head(url, headers=self.headers) as resp:
            check_status(resp)
            sha = None
            for r in (*resp.history, resp):
                sha = parse_sha256(r.headers.get("X-Linked-Etag")) or sha
            sha = sha or parse_sha256(resp.headers.get("ETag"))
            size = resp.headers.get("X-Linked-Size") or resp.headers.get("Content-Length")
        return sha, (int(size) if size and size.isdigit() else None)
