"""``nanostream serve DIR``: the mirror assembled and run, from the folder's files (``files.py``), the Hub
API of a folder fetched from ``hf://`` (``hubapi.py``) and the connection limits (``listener.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .files import SEND_TIMEOUT, BodyWriter, ShardFiles, write_body
from .hubapi import HubMirror, json_errors, quoted
from .listener import Limits, Listener

log = logging.getLogger(__name__)

FILES_KEY = web.AppKey("nanostream_files", ShardFiles)
HEADER_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 32}  # larger: a 400


class _OneLineLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, except that a request its parser rejects (HttpProcessingError) is one line."""

    def log(self, level: int, msg: object, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            log.info("%s: %s %s", str(msg) % args, exc_info.code, quoted(str(exc_info.message), 200))
        else:  # a bug keeps its traceback
            super().log(level, msg, *args, exc_info=exc_info, **kwargs)


@web.middleware
async def _log_refusals(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if 400 <= exc.status < 500:
            log.info("%d %s %s from %s: %s", exc.status, request.method, quoted(request.path_qs, 200), request.remote,
                     quoted(exc.text or exc.reason, 200))
        raise


def make_app(root: Path, *, body_writer: BodyWriter | None = None,
             send_timeout: float = SEND_TIMEOUT) -> web.Application:
    """An aiohttp app serving the files under ``root``, and the Hub API if ``root`` was fetched from ``hf://``;
    ``body_writer`` replaces ``write_body`` (with ``send_timeout``)."""
    files = ShardFiles(root, body_writer=body_writer or functools.partial(write_body, send_timeout=send_timeout))
    hub = HubMirror.of(files)
    app = web.Application(middlewares=[_log_refusals] if hub is None else [json_errors, _log_refusals])
    app[FILES_KEY] = files
    if hub is not None:
        hub.add_routes(app)
    app.router.add_get("/{name:.*}", files.respond, allow_head=True)
    return app


@contextlib.asynccontextmanager
async def open_mirror(root: Path, host: str = "127.0.0.1", port: int = 0, *, limits: Limits | None = None,
                      shutdown_timeout: float = 2.0, access_log: bool = False,
                      body_writer: BodyWriter | None = None) -> AsyncIterator[Listener]:
    """Serve ``root`` for the length of the block (``port=0``: any free port), giving its ``Listener`` (``url``,
    open connections, peak); on the way out, running answers get ``shutdown_timeout`` seconds. ConfigError,
    before anything is served, for a bad folder, limit or address."""
    limits = limits or Limits()
    app = make_app(root, body_writer=body_writer, send_timeout=limits.timeout)
    listener = Listener(limits)
    listener.install(app)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout,
                           access_log=logging.getLogger("aiohttp.access") if access_log else None,
                           keepalive_timeout=limits.timeout, logger=_OneLineLog(logging.getLogger("aiohttp.server")),
                           **HEADER_LIMITS)
    try:
        await runner.setup()
        assert runner.server is not None
        await listener.bind(host, port)
        async with listener.accepting(runner.server):
            yield listener
    finally:
        await runner.cleanup()
        listener.abort_all()
        await asyncio.sleep(0)  # let the aborted transports report connection_lost


def run_server(root: Path, host: str, port: int, limits: Limits) -> int:
    """Serve ``root`` until Ctrl-C or SIGTERM, then return 0, printing the URL first; ConfigError as ``open_mirror``,
    or for a descriptor limit too low for ``limits.max_connections``."""
    limits.reserve_fds()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_stopped(Path(root), host, port, limits))
    print(f"nanostream serve: stopped serving {root}", file=sys.stderr, flush=True)
    return 0


async def _serve_until_stopped(root: Path, host: str, port: int, limits: Limits) -> None:
    stop = asyncio.Event()
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    async with open_mirror(root, host, port, limits=limits, access_log=verbose) as mirror:
        with contextlib.suppress(NotImplementedError):  # not on Windows: there Ctrl-C raises KeyboardInterrupt
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        count = await asyncio.to_thread(_count_parquet, root)
        print(f"serving {root} at {mirror.url} ({count} parquet files)", flush=True)
        log.info("at most %d connections open, %g s to send a request, idle or stall, %d requests per connection",
                 limits.max_connections, limits.timeout, limits.max_keepalive_requests)
        await stop.wait()


def _count_parquet(root: Path) -> int:
    return sum(1 for p in root.rglob("*.parquet") if not any(x.startswith(".") for x in p.relative_to(root).parts))
