"""``nanostream serve``: an offline HTTP mirror of a folder of shard files.

Owns the read-only file server used by ``nanostream serve DIR``, by the tests'
fault-injection layer (``tests/servers.py``), the benchmarks and the demo trainer.

Only the regular, non-hidden files directly inside the folder are served, at
``/<filename>``, for GET and HEAD. Every answer carries ``Content-Length``,
``Accept-Ranges: bytes``, ``ETag: "<sha256>"`` plus the Hub-style
``X-Linked-Etag: "<sha256>"`` and ``X-Linked-Size``, so a downloader can verify
what it wrote. A single ``Range`` (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``) is
answered 206, an unsatisfiable one 416; ``If-Range`` with a different ETag gets
the full body (200). Anything else (``..``, encoded slashes, subfolders, hidden
files, symlinks leading outside the folder) is a 404.

The sha256 of each file is computed once per (path, size, mtime) in a worker
thread; bodies are streamed in 1 MiB chunks read in a thread, so the event loop
never blocks on disk and no file is ever held in memory whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiofiles
from aiohttp import web

from .errors import ConfigError
from .shards import list_shards

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HASH_CHUNK = 4 << 20

BodyWriter = Callable[[web.BaseRequest, web.StreamResponse, Path, int, int], Awaitable[None]]


@dataclass(frozen=True)
class FileInfo:
    """A servable file: its resolved path, size and sha256 (hex)."""

    path: Path
    size: int
    sha256: str

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_CHUNK):
            h.update(block)
    return h.hexdigest()


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """Parse one ``Range`` header against a file of ``size`` bytes.

    Returns ``(start, end)`` (end exclusive) for a satisfiable single range,
    ``None`` when the header is absent, malformed or multi-range (serve the
    whole file, as RFC 9110 allows), and ``False`` when it is unsatisfiable (416).
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        n = int(last)
        if n == 0 or size == 0:
            return False
        return max(0, size - n), size
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        return False
    end = size if last == "" else min(size, int(last) + 1)
    return start, end


async def iter_file(path: Path, start: int, end: int, chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """Yield bytes ``[start, end)`` of ``path`` in chunks, read with aiofiles (a worker thread).

    Use it with ``contextlib.aclosing`` so the file is closed on early exit.
    Raises ``OSError`` if the file is shorter than ``end``.
    """
    async with aiofiles.open(path, "rb") as f:
        await f.seek(start)
        pos = start
        while pos < end:
            data = await f.read(min(chunk, end - pos))
            if not data:
                raise OSError(f"{path} shrank while being served (at byte {pos}, expected {end})")
            pos += len(data)
            yield data


async def write_body(request: web.BaseRequest, response: web.StreamResponse, path: Path,
                     start: int, end: int) -> None:
    """The default body writer: bytes ``[start, end)`` of ``path`` in 1 MiB chunks."""
    gen = iter_file(path, start, end)
    try:
        async for data in gen:
            await response.write(data)
    finally:
        await gen.aclose()


class ShardFiles:
    """Resolves request names to files in ``root`` and answers GET/HEAD for them."""

    def __init__(self, root: Path, *, body_writer: BodyWriter | None = None) -> None:
        try:
            self.root = Path(root).resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"cannot serve {root}: the folder does not exist ({exc})") from exc
        if not self.root.is_dir():
            raise ConfigError(f"cannot serve {root}: not a folder")
        self.body_writer: BodyWriter = body_writer or write_body
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._locks: dict[tuple[str, int, int], asyncio.Lock] = {}

    def _lookup(self, name: str) -> tuple[Path, os.stat_result] | None:
        """The real path and stat of ``name`` if it is a regular, non-hidden file directly in root."""
        if not name or name.startswith(".") or any(c in name for c in "/\\\x00"):
            return None
        try:
            real = (self.root / name).resolve(strict=True)
            st = real.stat()
        except (OSError, RuntimeError, ValueError):
            return None
        if real.parent != self.root or real.name.startswith(".") or not stat.S_ISREG(st.st_mode):
            return None
        return real, st

    async def info(self, name: str) -> FileInfo | None:
        """Size and sha256 of file ``name``, or None if it is not servable. Hashes once per version."""
        found = await asyncio.to_thread(self._lookup, name)
        if found is None:
            return None
        real, st = found
        key = (str(real), st.st_size, st.st_mtime_ns)
        digest = self._hashes.get(key)
        if digest is None:
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                digest = self._hashes.get(key)
                if digest is None:
                    digest = await asyncio.to_thread(_sha256_file, real)
                    self._hashes[key] = digest
            self._locks.pop(key, None)
        return FileInfo(real, st.st_size, digest)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Route handler for ``/{name}``."""
        return await self.respond(request, request.match_info.get("name", ""))

    async def respond(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        """Answer GET/HEAD for file ``name`` (404 if not servable)."""
        info = await self.info(name)
        if info is None:
            raise web.HTTPNotFound(text=f"no file {name!r} in this mirror\n")
        rng = parse_range(request.headers.get("Range"), info.size)
        if_range = request.headers.get("If-Range")
        if rng is not None and if_range is not None and if_range.strip() != info.etag:
            rng = None  # the client's copy is of another version: send it the whole file
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": info.etag,
            "X-Linked-Etag": info.etag,
            "X-Linked-Size": str(info.size),
            "Content-Type": "application/vnd.apache.parquet" if name.endswith(".parquet")
            else "application/octet-stream",
        }
        if rng is False:
            headers["Content-Range"] = f"bytes */{info.size}"
            return web.Response(status=416, headers=headers)
        start, end = rng if rng else (0, info.size)
        response = web.StreamResponse(status=206 if rng else 200, headers=headers)
        if rng:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        response.content_length = end - start
        try:
            await response.prepare(request)
            if request.method != "HEAD" and end > start:
                await self.body_writer(request, response, info.path, start, end)
            await response.write_eof()
        except ConnectionResetError as exc:  # the client went away mid-body: nothing left to tell it
            log.debug("client left during %s %s: %s", request.method, request.path, exc)
        return response


FILES_KEY = web.AppKey("nanostream_files", ShardFiles)


def make_app(root: Path, *, body_writer: BodyWriter | None = None) -> web.Application:
    """An aiohttp app serving the files directly inside ``root`` (see the module docstring).

    ``body_writer(request, response, path, start, end)`` writes bytes ``[start, end)``
    after the headers are sent; the default streams the file. Raises ConfigError
    if ``root`` is not an existing folder.
    """
    files = ShardFiles(root, body_writer=body_writer)
    app = web.Application()
    app[FILES_KEY] = files
    app.router.add_get("/{name:.*}", files.handle, allow_head=True)
    return app



def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def start_server(root: Path, host: str = "127.0.0.1", port: int = 0, *,
                       shutdown_timeout: float = 2.0, access_log: bool = False,
                       **app_kwargs: object) -> tuple[web.AppRunner, str]:
    """Start serving ``root``; return the runner and its base URL. Caller awaits ``runner.cleanup()``.

    ``app_kwargs`` go to :func:`make_app`. Raises ConfigError if the folder is
    missing or the address cannot be bound.
    """
    app = make_app(root, **app_kwargs)  # type: ignore[arg-type]
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout,
                           access_log=logging.getLogger("aiohttp.access") if access_log else None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc}); choose another --host/--port") from exc
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    return runner, _url(host, int(bound[1]))


async def _serve_forever(root: Path, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    runner, url = await start_server(root, host, port, access_log=verbose)
    installed: list[signal.Signals] = []
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # e.g. Windows: Ctrl-C raises KeyboardInterrupt
                pass
        print(f"serving {root} at {url} ({len(list_shards(root))} shard files)", flush=True)
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def run_server(root: Path, *, host: str = "127.0.0.1", port: int = 8000) -> int:
    """Serve ``root`` until Ctrl-C or SIGTERM, then return 0. Prints the URL first (``--port 0`` = any)."""
    try:
        asyncio.run(_serve_forever(Path(root), host, port))
    except KeyboardInterrupt:
        pass
    print(f"nanostream serve: stopped serving {root}", file=sys.stderr, flush=True)
    return 0
