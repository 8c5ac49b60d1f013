"""``nanostream serve``: an offline HTTP mirror of a folder of shard files.

Owns the read-only file server used by ``nanostream serve DIR``, by the tests'
fault-injection layer (``tests/servers.py``), the benchmarks and the demo trainer.
Its connection limits (a cap on open connections, request deadlines, a keep-alive
request limit) live in ``listener.py``.

The regular, non-hidden files under the folder are served, subfolders included (a
catalog's nested paths), at ``/<path>``, for GET and HEAD. Every answer carries ``Content-Length``,
``Accept-Ranges: bytes``, ``ETag: "<sha256>"`` plus the Hub-style
``X-Linked-Etag: "<sha256>"`` and ``X-Linked-Size``, so a downloader can verify
what it wrote. A single ``Range`` (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``) is
answered 206, an unsatisfiable one 416; ``If-Range`` with a different ETag (or a
date) gets the full body (200). Rejected, each with a 4xx and one log line, no
traceback: anything outside the folder (``..``, empty path parts,
hidden files or folders, symlinks leading out, folders themselves: 404), a malformed, multi-range or overlong
``Range`` (416; a unit other than ``bytes`` is ignored, as RFC 9110 requires), an
``If-Range`` that is neither an entity tag nor a date (400), oversized or
malformed headers (400, from aiohttp's parser).

The sha256 of each file is computed once per (path, size, mtime) in a worker
thread, and so is a parquet file's row-group count (from its footer), which every answer for
it carries in ``X-Nanostream-Row-Groups``: a node counting row groups through the mirror reads
no footer (``sources/footers.py``), so each footer is read once for the whole cluster. Ranges, ``If-Range`` and the ``sendfile(2)`` body writer are in
``httpfile.py``; a reader that stalls for the send timeout is dropped. A folder
fetched from an ``hf://`` dataset also answers the Hub API for it (``hubapi.py``),
so ``HF_ENDPOINT`` can point at the mirror.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from ..errors import ConfigError
from ..sources.footers import ROW_GROUPS_HEADER, local_count
from .httpfile import (
    CHUNK,
    SEND_TIMEOUT,
    FileInfo,
    SlowReader,
    if_range_matches,
    iter_file,
    parse_range,
    sha256_file,
    write_body,
)
from .hubapi import HubMirror
from .hubrequest import json_errors
from .listener import Limits, Listener, server_kwargs

__all__ = ["CHUNK", "FILES_KEY", "FileInfo", "Limits", "Mirror", "ShardFiles", "SlowReader", "iter_file",
           "make_app", "parse_range", "run_server", "start_server", "write_body"]

log = logging.getLogger(__name__)

BodyWriter = Callable[[web.BaseRequest, web.StreamResponse, Path, int, int], Awaitable[None]]


def _clip(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


class ShardFiles:
    """Resolves request names to files in ``root`` and answers GET/HEAD for them."""

    def __init__(self, root: Path, *, body_writer: BodyWriter | None = None, row_groups: bool = False) -> None:
        try:
            self.root = Path(root).resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"cannot serve {root}: the folder does not exist ({exc})") from exc
        if not self.root.is_dir():
            raise ConfigError(f"cannot serve {root}: not a folder")
        self.body_writer: BodyWriter = body_writer or write_body
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._locks: dict[tuple[str, int, int], asyncio.Lock] = {}
        self.row_groups = row_groups  # tell each parquet file's row-group count (X-Nanostream-Row-Groups)
        self._groups: dict[tuple[str, int, str], int | None] = {}

    def _lookup(self, name: str) -> tuple[Path, os.stat_result] | None:
        """The real path and stat of ``name`` if it is a regular file under root whose path, as asked
        and as resolved, has no hidden part (subfolders allowed; nothing outside root)."""
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
                    digest = await asyncio.to_thread(sha256_file, real)
                    self._hashes[key] = digest
            self._locks.pop(key, None)
        return FileInfo(real, st.st_size, digest)

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
        """Answer GET/HEAD for file ``name`` (``headers`` added to every answer); raise a
        ``web.HTTPException`` (4xx) to refuse."""
        info = await self.info(name)
        extra = headers or {}
        if info is None:
            raise web.HTTPNotFound(text=f"no file {name!r} in this mirror\n", headers=extra)
        headers = {**extra, "Accept-Ranges": "bytes", "ETag": info.etag, "X-Linked-Etag": info.etag,
                   "X-Linked-Size": str(info.size)}
        try:
            rng = parse_range(request.headers.get("Range"), info.size)
        except ValueError as exc:
            raise web.HTTPRequestRangeNotSatisfiable(
                headers={**headers, "Content-Range": f"bytes */{info.size}"},
                text=f"bad Range header ({exc}); send one range: bytes=a-b, bytes=a- or bytes=-n\n") from None
        if_range = request.headers.get("If-Range")
        try:
            if rng is not None and if_range is not None and not if_range_matches(if_range, info.etag):
                rng = None  # the client's copy is of another version: send it the whole file
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"bad If-Range header ({exc})\n") from None
        if rng is False:
            raise web.HTTPRequestRangeNotSatisfiable(
                headers={**headers, "Content-Range": f"bytes */{info.size}"},
                text=f"the range starts at or past the end of the file ({info.size} bytes)\n")
        headers["Content-Type"] = ("application/vnd.apache.parquet" if name.endswith(".parquet")
                                   else "application/octet-stream")
        if self.row_groups and name.endswith(".parquet"):
            n = await self._row_groups(info)
            if n is not None:
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


FILES_KEY = web.AppKey("nanostream_files", ShardFiles)


@web.middleware
async def _log_refusals(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if 400 <= exc.status < 500:
            log.info("%d %s %s from %s: %s", exc.status, request.method, _clip(request.path_qs), request.remote,
                     _clip(exc.text or exc.reason))
        raise


def make_app(root: Path, *, body_writer: BodyWriter | None = None,
             send_timeout: float = SEND_TIMEOUT) -> web.Application:
    """An aiohttp app serving the files directly inside ``root`` (see the module docstring).

    ``body_writer(request, response, path, start, end)`` writes bytes ``[start, end)``
    after the headers are sent; the default is :func:`write_body` with ``send_timeout``.
    Raises ConfigError if ``root`` is not an existing folder.
    """
    writer = body_writer or functools.partial(write_body, send_timeout=send_timeout)
    files = ShardFiles(root, body_writer=writer, row_groups=True)
    hub = HubMirror.of(files.root, files)
    # a folder fetched from hf:// answers the Hub API too (hubapi.py), with JSON errors on its routes
    app = web.Application(middlewares=[_log_refusals] if hub is None else [json_errors, _log_refusals])
    app[FILES_KEY] = files
    if hub is not None:
        hub.add_routes(app)
    app.router.add_get("/{name:.*}", files.handle, allow_head=True)
    return app


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Mirror:
    """A running mirror: its aiohttp runner and its ``Listener``. ``await cleanup()`` stops both."""

    def __init__(self, runner: web.AppRunner, listener: Listener, url: str) -> None:
        self.runner, self.listener, self.url = runner, listener, url

    async def cleanup(self) -> None:
        """Stop accepting, let running responses finish (``shutdown_timeout``), then drop the rest."""
        try:
            await self.listener.close()
        finally:
            try:
                await self.runner.cleanup()
            finally:
                self.listener.abort_all()
                await asyncio.sleep(0)  # let the aborted transports report connection_lost


async def start_server(root: Path, host: str = "127.0.0.1", port: int = 0, *, limits: Limits | None = None,
                       shutdown_timeout: float = 2.0, access_log: bool = False,
                       body_writer: BodyWriter | None = None) -> tuple[Mirror, str]:
    """Start serving ``root``; return the mirror and its base URL. Caller awaits ``mirror.cleanup()``.

    ``limits`` (default ``Limits()``) caps connections and sets the request, idle and
    send timeouts. Raises ConfigError if the folder is missing, a limit is out of
    range, or the address cannot be resolved or bound.
    """
    limits = (limits or Limits()).check()
    app = make_app(root, body_writer=body_writer, send_timeout=limits.timeout)
    listener = Listener(limits)
    bound = await listener.bind(host, port)
    app.middlewares.append(listener.middleware)
    app.on_response_prepare.append(listener.on_response_prepare)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout,
                           access_log=logging.getLogger("aiohttp.access") if access_log else None,
                           **server_kwargs(limits))
    try:
        await runner.setup()
        assert runner.server is not None
        listener.start(runner.server)
    except BaseException:
        await listener.close()
        await runner.cleanup()
        raise
    return Mirror(runner, listener, _url(host, bound)), _url(host, bound)


async def _serve_forever(root: Path, host: str, port: int, limits: Limits) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    mirror, url = await start_server(root, host, port, limits=limits, access_log=verbose)
    installed: list[signal.Signals] = []
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # e.g. Windows: Ctrl-C raises KeyboardInterrupt
                pass
        count = await asyncio.to_thread(_count_parquet, Path(root))
        print(f"serving {root} at {url} ({count} parquet files)", flush=True)
        log.info("at most %d connections open, %g s to send a request, idle or stall, %d requests per connection",
                 limits.max_connections, limits.timeout, limits.max_keepalive_requests)
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await mirror.cleanup()


def _count_parquet(root: Path) -> int:
    return sum(1 for p in root.rglob("*.parquet") if not any(x.startswith(".") for x in p.relative_to(root).parts))


def run_server(root: Path, *, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None) -> int:
    """Serve ``root`` until Ctrl-C or SIGTERM, then return 0. Prints the URL first (``--port 0`` = any).

    Raises ConfigError (before binding) for a bad port, limit or folder, an unresolvable
    host, a port in use, or a descriptor limit too low for ``limits.max_connections``.
    """
    limits = (limits or Limits()).check()
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    ShardFiles(root)  # the folder must exist before anything is bound
    limits.reserve_fds()
    try:
        asyncio.run(_serve_forever(Path(root), host, port, limits))
    except KeyboardInterrupt:
        pass
    print(f"nanostream serve: stopped serving {root}", file=sys.stderr, flush=True)
    return 0
