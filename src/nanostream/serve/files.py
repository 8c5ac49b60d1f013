"""The served folder's files: which names may be served, their sha256 and row-group counts, and the GET/HEAD
answer for one (``Range``, ``If-Range``, the ``sendfile(2)`` body writer)."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .._compat import timeout
from ..errors import ConfigError
from ..shards import file_digest
from ..sources.footers import ROW_GROUPS_HEADER, local_count

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_RANGE_HEADER = 100  # characters; one byte range needs at most ~45
SEND_TIMEOUT = 30.0

_BYTE_RANGE = re.compile(r"\s*([0-9]*)\s*-\s*([0-9]*)\s*")
_ETAG = re.compile(r'(W/)?"[\x21\x23-\x7e\x80-\xff]*"')


@dataclass(frozen=True)
class FileInfo:
    """A servable file: its resolved path, size and sha256 (hex)."""

    path: Path
    size: int
    sha256: str

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """One ``Range`` header against a file of ``size`` bytes: ``(start, end)`` (end exclusive), ``None`` (absent or
    not ``bytes``: the whole file) or ``False`` (416); ``ValueError`` for a malformed, multi-range or long one."""
    if not header:
        return None
    unit, eq, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes":
        return None
    match = _BYTE_RANGE.fullmatch(spec) if eq and len(header) <= MAX_RANGE_HEADER else None
    if match is None or not any(match.groups()):  # a comma (several ranges) does not match either
        raise ValueError(f"not one range of the form a-b, a- or -n in at most {MAX_RANGE_HEADER} characters")
    first, last = match.groups()
    if not first:
        n = int(last)
        if n == 0 or size == 0:
            return False
        return max(0, size - n), size
    start = int(first)
    if last and int(last) < start:
        raise ValueError("the range ends before it starts")
    if start >= size:
        return False
    end = size if not last else min(size, int(last) + 1)
    return start, end


def if_range_matches(value: str, etag: str) -> bool:
    """Whether an ``If-Range`` validator lets a range through: only our own strong ETag does (a weak
    ETag or a date never matches: no ``Last-Modified`` is sent). ``ValueError`` if it is neither."""
    value = value.strip()
    if _ETAG.fullmatch(value):
        return value == etag
    try:
        email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError("neither an entity tag nor an HTTP date") from exc
    return False


async def write_body(request: web.BaseRequest, response: web.StreamResponse, path: Path,
                     start: int, end: int, *, send_timeout: float = SEND_TIMEOUT) -> None:
    """Send bytes ``[start, end)`` of ``path`` with ``sendfile(2)`` (the mirror runs on asyncio's loop, which has
    it), each ``CHUNK`` within ``send_timeout`` seconds or a ``TimeoutError`` (the connection is dropped)."""
    loop = asyncio.get_running_loop()
    pos = start
    try:
        with path.open("rb") as f:  # stat'ed a moment ago: opening does not wait for the disk
            while pos < end:
                transport = request.transport
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("the client closed the connection")
                async with timeout(send_timeout):
                    sent = await loop.sendfile(transport, f, pos, min(CHUNK, end - pos))
                if not sent:
                    raise OSError(f"{path} shrank while being served (at byte {pos}, expected {end})")
                pos += sent
    except asyncio.TimeoutError as exc:  # TimeoutError on 3.11+, not on 3.10
        raise TimeoutError(f"read nothing for {send_timeout:g} s") from exc  # an OSError: respond drops it


BodyWriter = Callable[[web.BaseRequest, web.StreamResponse, Path, int, int], Awaitable[None]]


class ShardFiles:
    """The regular, non-hidden files under ``root`` (subfolders included), answered with GET and HEAD, the body
    sent by ``body_writer`` (default ``write_body``); ``row_groups``: parquet answers carry their row-group count."""

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
        self._groups: dict[FileInfo, int | None] = {}  # row groups of a parquet file (None: unreadable)

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
                    self._hashes[key] = await asyncio.to_thread(file_digest, real)
            self._hashing.pop(key, None)
        return FileInfo(real, st.st_size, self._hashes[key])

    async def respond(self, request: web.BaseRequest, name: str | None = None, *,
                      headers: dict[str, str] | None = None) -> web.StreamResponse:
        """Answer GET/HEAD for file ``name`` (default: the route's ``{name}``; ``headers`` added to every answer);
        a 4xx ``web.HTTPException`` for a name it does not serve or a ``Range``/``If-Range`` it refuses."""
        name = request.match_info.get("name", "") if name is None else name
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
        if self.row_groups and parquet:
            if info not in self._groups:  # read from its footer once per version
                self._groups[info] = await asyncio.to_thread(local_count, info.path, True)
            if self._groups[info] is not None:
                headers[ROW_GROUPS_HEADER] = str(self._groups[info])
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
