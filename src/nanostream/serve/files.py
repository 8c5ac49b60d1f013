"""The files of the served folder: which names may be served, their sha256 and row-group counts, and the
GET/HEAD answer for one of them."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from ..errors import ConfigError
from ..sources.footers import ROW_GROUPS_HEADER, local_count
from .httpfile import FileInfo, hex_digest, if_range_matches, parse_range, write_body

log = logging.getLogger(__name__)

BodyWriter = Callable[[web.BaseRequest, web.StreamResponse, Path, int, int], Awaitable[None]]


class ShardFiles:
    """The regular, non-hidden files under ``root`` (subfolders included), answered with GET and HEAD.

    ``body_writer(request, response, path, start, end)`` sends bytes ``[start, end)`` once the headers
    are out (default: ``write_body``); with ``row_groups`` each parquet file's answer carries its
    row-group count (``X-Nanostream-Row-Groups``). ConfigError if ``root`` is not an existing folder.
    """

    def __init__(self, root: Path, *, body_writer: BodyWriter | None = None, row_groups: bool = True) -> None:
        try:
            self.root = Path(root).resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"cannot serve {root}: the folder does not exist ({exc})") from exc
        if not self.root.is_dir():
            raise ConfigError(f"cannot serve {root}: not a folder")
        self.body_writer: BodyWriter = body_writer or write_body
        self.row_groups = row_groups
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._hashing: dict[tuple[str, int, int], asyncio.Lock] = {}
        self._groups: dict[tuple[str, int, str], int | None] = {}

    def _lookup(self, name: str) -> tuple[Path, os.stat_result] | None:
        """The real path and stat of ``name`` if it is a regular file under root with no hidden part in its
        path, as asked and as resolved; else None."""
        parts = name.split("/")
        if not name or any(not p or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
            return None
        try:
            real = (self.root / name).resolve(strict=True)
            st = real.stat()
            rel = real.relative_to(self.root)
        except (OSError, RuntimeError, ValueError):
            return None
        if any(p.startswith(".") for p in rel.parts) or not stat.S_ISREG(st.st_mode):
            return None
        return real, st

    async def info(self, name: str) -> FileInfo | None:
        """Size and sha256 of file ``name``, or None if it is not servable. Hashed once per version."""
        found = await asyncio.to_thread(self._lookup, name)
        if found is None:
            return None
        real, st = found
        key = (str(real), st.st_size, st.st_mtime_ns)
        if key not in self._hashes:
            async with self._hashing.setdefault(key, asyncio.Lock()):
                if key not in self._hashes:
                    self._hashes[key] = await asyncio.to_thread(hex_digest, real, hashlib.sha256())
            self._hashing.pop(key, None)
        return FileInfo(real, st.st_size, self._hashes[key])

    async def _row_groups(self, info: FileInfo) -> int | None:
        """Row groups of the parquet file ``info``, from its footer, read once per version (None: unreadable)."""
        key = (str(info.path), info.size, info.etag)
        if key not in self._groups:
            self._groups[key] = await asyncio.to_thread(local_count, info.path, True)
        return self._groups[key]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Route handler for ``/{name}``."""
        return await self.respond(request, request.match_info.get("name", ""))

    async def respond(self, request: web.BaseRequest, name: str, *,
                      headers: dict[str, str] | None = None) -> web.StreamResponse:
        """Answer GET/HEAD for file ``name`` (``headers`` added to every answer); a 4xx ``web.HTTPException``
        for a name it does not serve or a ``Range``/``If-Range`` it refuses."""
        info = await self.info(name)
        extra = headers or {}
        if info is None:
            raise web.HTTPNotFound(text=f"no file {name!r} in this mirror\n", headers=extra)
        headers = {**extra, "Accept-Ranges": "bytes", "ETag": info.etag, "X-Linked-Etag": info.etag,
                   "X-Linked-Size": str(info.size)}
        unsatisfiable = {**headers, "Content-Range": f"bytes */{info.size}"}
        try:
            rng = parse_range(request.headers.get("Range"), info.size)
        except ValueError as exc:
            raise web.HTTPRequestRangeNotSatisfiable(
                headers=unsatisfiable,
                text=f"bad Range header ({exc}); send one range: bytes=a-b, bytes=a- or bytes=-n\n") from None
        if_range = request.headers.get("If-Range")
        try:
            if rng is not None and if_range is not None and not if_range_matches(if_range, info.etag):
                rng = None  # the client's copy is of another version: send it the whole file
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"bad If-Range header ({exc})\n") from None
        if rng is False:
            raise web.HTTPRequestRangeNotSatisfiable(
                headers=unsatisfiable, text=f"the range starts at or past the end of the file ({info.size} bytes)\n")
        parquet = name.endswith(".parquet")
        headers["Content-Type"] = "application/vnd.apache.parquet" if parquet else "application/octet-stream"
        if self.row_groups and parquet and (n := await self._row_groups(info)) is not None:
            headers[ROW_GROUPS_HEADER] = str(n)
        start, end = rng or (0, info.size)
        response = web.StreamResponse(status=206 if rng else 200, headers=headers)
        if rng:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        response.content_length = end - start
        try:
            await response.prepare(request)
            if request.method != "HEAD" and end > start:
                await self.body_writer(request, response, info.path, start, end)
            await response.write_eof()
        except OSError as exc:  # the client left or stalled, or the file went: nothing left to tell it
            level = logging.DEBUG if type(exc) in (ConnectionResetError, BrokenPipeError) else logging.INFO
            log.log(level, "%s %s (bytes %d-%d) to %s stopped: %s", request.method, request.path,
                    start, end - 1, request.remote, exc)
            if request.transport is not None:
                request.transport.abort()
        return response
