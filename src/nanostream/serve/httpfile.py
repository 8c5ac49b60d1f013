"""Serving one file over HTTP: file digests, ``Range`` and ``If-Range``, and the ``sendfile(2)`` body writer."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .._compat import timeout

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


def hex_digest(path: Path, h: Any) -> str:
    """The hex digest of ``path``'s bytes fed to the hash object ``h`` (blocking: reads the whole file)."""
    buf = bytearray(CHUNK)  # one buffer per call: little for malloc to keep after
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """One ``Range`` header against a file of ``size`` bytes.

    Returns ``(start, end)`` (end exclusive) for a satisfiable single range, ``None`` when the
    header is absent or not in ``bytes`` (serve the whole file), ``False`` when it is unsatisfiable
    (416). Raises ``ValueError`` saying why for a malformed, multi-range or overlong byte range.
    """
    if not header:
        return None
    unit, eq, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if len(header) > MAX_RANGE_HEADER:
        raise ValueError(f"longer than {MAX_RANGE_HEADER} characters")
    if not eq:
        raise ValueError("no '=' after 'bytes'")
    if "," in spec:
        raise ValueError("more than one range (not supported)")
    match = _BYTE_RANGE.fullmatch(spec)
    if match is None or not any(match.groups()):
        raise ValueError("not of the form a-b, a- or -n")
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


async def iter_file(path: Path, start: int, end: int, chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """Bytes ``[start, end)`` of ``path`` in chunks, each read on a worker thread; ``OSError`` if the file is
    shorter. Use it with ``contextlib.aclosing`` so the file is closed on an early exit."""
    with path.open("rb") as f:  # stat'ed a moment ago: opening does not wait for the disk
        f.seek(start)
        pos = start
        while pos < end:
            data = await asyncio.to_thread(f.read, min(chunk, end - pos))
            if not data:
                raise OSError(f"{path} shrank while being served (at byte {pos}, expected {end})")
            pos += len(data)
            yield data


class SlowReader(ConnectionError):
    """The client read nothing for the send timeout; its connection is dropped."""


async def write_body(request: web.BaseRequest, response: web.StreamResponse, path: Path,
                     start: int, end: int, *, send_timeout: float = SEND_TIMEOUT) -> None:
    """Send bytes ``[start, end)`` of ``path`` with ``sendfile(2)``, each ``CHUNK`` within ``send_timeout``
    seconds or ``SlowReader``. Where the loop has no ``sendfile`` (uvloop), ``CHUNK`` reads, each write
    waiting for the socket to drain, under the same timeout. (Like nginx's, the ``sendfile`` call runs
    on the event loop's thread: a cold page cache makes it wait for the disk.)"""
    loop = asyncio.get_running_loop()
    pos = start
    try:
        with path.open("rb") as f:  # stat'ed a moment ago: opening does not wait for the disk
            while pos < end:
                transport = request.transport
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("the client closed the connection")
                try:
                    async with timeout(send_timeout):
                        sent = await loop.sendfile(transport, f, pos, min(CHUNK, end - pos))
                except NotImplementedError:
                    break
                if not sent:
                    raise OSError(f"{path} shrank while being served (at byte {pos}, expected {end})")
                pos += sent
        if pos < end:
            async with contextlib.aclosing(iter_file(path, pos, end)) as chunks:
                async for data in chunks:
                    async with timeout(send_timeout):
                        await response.write(data)
    except asyncio.TimeoutError as exc:  # TimeoutError on 3.11+, not on 3.10
        raise SlowReader(f"read nothing for {send_timeout:g} s") from exc
