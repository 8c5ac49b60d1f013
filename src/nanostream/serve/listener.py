"""The mirror's connection layer: a capped accept loop, request deadlines and keep-alive limits.

What aiohttp's server offers (3.14.5, as installed): ``keepalive_timeout`` (3630 s by default in
``RequestHandler``) and header size limits (``max_line_size``, ``max_field_size``,
``max_headers``). It has no header-read timeout option, no limit of requests per keep-alive
connection, and no cap on connections: ``loop.create_server`` accepts whatever arrives. (In 3.14
the keep-alive timer also starts when a connection opens; that is an implementation detail the
project's ``aiohttp>=3.9`` floor cannot count on.) ``Listener`` adds all three around aiohttp's
documented low-level ``web.Server`` protocol factory:

- At most ``max_connections`` connections are open at once. At the cap it stops calling
  ``accept()``: new clients wait in the kernel's listen backlog, and cost this process neither
  memory nor file descriptors until a slot frees.
- A request must arrive complete within ``timeout`` seconds of the connection opening, or of the
  previous response ending; otherwise the connection is dropped, with one log line. That covers
  the silent client, the half-sent or byte-by-byte request, and the idle keep-alive connection.
  (Slow *readers* are the body writer's business: see ``httpfile.write_body``.)
- The response to the ``max_keepalive_requests``-th request on a connection says
  ``Connection: close``.
- aiohttp's protocol errors (a malformed request line, oversized headers: 400) are logged as one
  line instead of a traceback.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import ConfigError

log = logging.getLogger(__name__)

BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
FDS_PER_CONNECTION = 2  # the socket, plus the file being sent
FDS_SPARE = 64  # listening sockets, the event loop, worker threads' files, logging


@dataclass(frozen=True)
class Limits:
    """How much the mirror lets clients hold; ``check()`` raises ConfigError for bad values."""

    max_connections: int = 256
    timeout: float = 30.0  # to send a whole request; idle keep-alive; a stalled reader
    max_keepalive_requests: int = 100

    def check(self) -> Limits:
        if not 1 <= self.max_connections <= 1_000_000:
            raise ConfigError(f"--max-connections must be between 1 and 1000000, got {self.max_connections}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if self.max_keepalive_requests < 1:
            raise ConfigError(f"--max-keepalive-requests must be >= 1, got {self.max_keepalive_requests}")
        return self

    def reserve_fds(self) -> None:
        """Raise the soft ``RLIMIT_NOFILE`` if the cap needs it; ConfigError if the hard limit is too low."""
        try:
            import resource
        except ImportError:  # not POSIX: nothing to raise
            return
        need = self.max_connections * FDS_PER_CONNECTION + FDS_SPARE
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= need:
            return
        if hard != resource.RLIM_INFINITY and hard < need:
            raise ConfigError(f"--max-connections {self.max_connections} needs about {need} file descriptors, "
                              f"but the limit is {hard} (ulimit -Hn): lower --max-connections or raise the limit")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class _OneLineLog:
    """aiohttp's server logger, except that a rejected request (HttpProcessingError) is one line."""

    def __init__(self, inner: logging.Logger) -> None:
        self._inner = inner

    def _rejected(self, msg: str, args: tuple[Any, ...], exc_info: object) -> bool:
        if not isinstance(exc_info, HttpProcessingError):
            return False
        text = " ".join(str(exc_info.message).split())[:200]
        log.info("%s: %s %s", msg % args, exc_info.code, text)
        return True

    def exception(self, msg: str, *args: Any, exc_info: object = True, **kwargs: Any) -> None:
        if not self._rejected(msg, args, exc_info):
            self._inner.exception(msg, *args, exc_info=exc_info, **kwargs)  # a bug: keep its traceback

    def debug(self, msg: str, *args: Any, exc_info: object = None, **kwargs: Any) -> None:
        if not self._rejected(msg, args, exc_info):
            self._inner.debug(msg, *args, exc_info=exc_info, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def server_kwargs(limits: Limits) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` / ``web.Server`` that go with ``limits``."""
    return {"keepalive_timeout": limits.timeout, "max_line_size": 8190, "max_field_size": 8190,
            "max_headers": 32, "logger": _OneLineLog(logging.getLogger("aiohttp.server"))}


class _Conn(asyncio.Protocol):
    """One accepted connection: forwards to aiohttp's handler, keeps its deadline and its slot."""

    def __init__(self, listener: Listener, inner: Any, peer: str) -> None:
        self.listener, self.inner, self.peer = listener, inner, peer
        self.transport: asyncio.Transport | None = None
        self.requests = 0
        self.busy = 0
        self._timer: asyncio.TimerHandle | None = None
        self._freed = False

    # -- asyncio.Protocol, forwarded to aiohttp's RequestHandler ----------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        live = self.listener.live
        live[self.inner] = self
        self.listener.peak = max(self.listener.peak, len(live))
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            self.free()

    # -- bookkeeping ---------------------------------------------------------------------------
    def free(self) -> None:
        """Cancel the deadline and give the slot back (once)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._freed:
            self._freed = True
            self.listener.live.pop(self.inner, None)
            self.listener.slots.release()

    def begin(self) -> None:
        self.busy += 1
        self.requests += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def end(self) -> None:
        self.busy -= 1
        if not self.busy and not self._freed:
            self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.listener.limits.timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.busy or self.transport is None or self._freed:
            return
        log.info("dropped %s: no complete request within %g s (idle, or a request sent too slowly)",
                 self.peer, self.listener.limits.timeout)
        self.transport.abort()


def _peer(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
    return str(addr)


class Listener:
    """Listening sockets plus a capped accept loop feeding aiohttp's ``web.Server`` (see the module doc).

    Use: ``port = await l.bind(host, port)``; add ``l.middleware`` and ``l.on_response_prepare`` to
    the app before the runner's setup; ``l.start(runner.server)``; at the end ``await l.close()``,
    ``await runner.cleanup()``, ``l.abort_all()``.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits.check()
        self.slots = asyncio.Semaphore(limits.max_connections)
        self.live: dict[Any, _Conn] = {}  # aiohttp RequestHandler -> its connection
        self.peak = 0  # most connections ever open at once
        self._socks: list[socket.socket] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def open_connections(self) -> int:
        return len(self.live)

    async def bind(self, host: str, port: int) -> int:
        """Bind and listen on every address ``host`` resolves to; return the port. ConfigError on failure."""
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {port}")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"cannot resolve --host {host!r} ({exc}); give an IP address or a known name") from exc
        seen: set[tuple[int, str]] = set()
        try:
            for family, _, proto, _, addr in infos:
                if (family, addr[0]) in seen:
                    continue
                seen.add((family, addr[0]))
                if self._socks:  # port 0: every address gets the port the first one got
                    addr = (addr[0], self._socks[0].getsockname()[1], *addr[2:])
                sock = socket.socket(family, socket.SOCK_STREAM, proto)
                self._socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(BACKLOG)
                sock.setblocking(False)
        except (OSError, OverflowError) as exc:
            self._close_sockets()
            why = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"cannot listen on {host}:{port} ({why}); choose another --host/--port") from exc
        return self._socks[0].getsockname()[1]

    def start(self, factory: Callable[[], Any]) -> None:
        """Start accepting, handing each connection to ``factory()`` (aiohttp's ``runner.server``)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._accept(sock, factory)) for sock in self._socks]

    async def _accept(self, sock: socket.socket, factory: Callable[[], Any]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.slots.acquire()
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as exc:  # out of descriptors or memory, or the client gave up: try again
                self.slots.release()
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept a connection (%s); retrying in 0.5 s", exc.strerror)
                    await asyncio.sleep(0.5)
                continue
            except BaseException:
                self.slots.release()
                raise
            proto = _Conn(self, factory(), _peer(addr))
            try:
                await loop.connect_accepted_socket(lambda p=proto: p, conn)
            except OSError as exc:
                log.info("dropped %s at connect: %s", proto.peer, exc)
                conn.close()
                proto.free()
            except BaseException:
                conn.close()
                proto.free()
                raise

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Marks the connection busy while a request is handled (its deadline waits meanwhile)."""
        conn = self.live.get(request.protocol)
        if conn is None:
            return await handler(request)
        conn.begin()
        try:
            return await handler(request)
        finally:
            conn.end()

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Closes the connection after its ``max_keepalive_requests``-th response."""
        conn = self.live.get(request.protocol)
        if conn is not None and conn.requests >= self.limits.max_keepalive_requests:
            response.force_close()  # headers are computed before this hook: say it too
            response.headers["Connection"] = "close"

    def _close_sockets(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()

    async def close(self) -> None:
        """Stop accepting and close the listening sockets (open connections stay: see ``abort_all``)."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks.clear()
        self._close_sockets()

    def abort_all(self) -> None:
        """Drop every connection still open (after the runner's graceful shutdown)."""
        for conn in list(self.live.values()):
            if conn.transport is not None:
                conn.transport.abort()
