"""The mirror's connection limits, which aiohttp's server lacks: a capped accept loop handing each connection to
aiohttp's protocol, a deadline for each request, a keep-alive limit."""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..concurrency import task_group
from ..errors import ConfigError

log = logging.getLogger(__name__)

BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
FDS_PER_CONNECTION = 2  # the socket, plus the file being sent
FDS_SPARE = 64  # listening sockets, the event loop, worker threads' files, logging
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class Limits:
    """How much the mirror lets clients hold; ConfigError for a bad value."""

    max_connections: int = 256  # open at once; more wait in the kernel's listen backlog
    timeout: float = 30.0  # to send a whole request; idle keep-alive; a stalled reader
    max_keepalive_requests: int = 100  # the answer to the last one says Connection: close

    def __post_init__(self) -> None:
        if not 1 <= self.max_connections <= 1_000_000:
            raise ConfigError(f"--max-connections must be between 1 and 1000000, got {self.max_connections}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if self.max_keepalive_requests < 1:
            raise ConfigError(f"--max-keepalive-requests must be >= 1, got {self.max_keepalive_requests}")

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


class _Connection:
    """One accepted connection: aiohttp's protocol ``inner`` (which gets every call not defined here), a slot,
    and a deadline: dropped when no complete request arrives within the timeout of its opening or last answer."""

    def __init__(self, listener: Listener, inner: Any, peer: str) -> None:
        self.listener, self.inner, self.peer = listener, inner, peer
        self.transport: asyncio.Transport | None = None
        self.requests = 0  # answered or being answered (aiohttp answers one at a time: no deadline meanwhile)
        self._deadline: asyncio.TimerHandle | None = None
        self._freed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        live = self.listener.live
        live[self.inner] = self
        self.listener.peak = max(self.listener.peak, len(live))
        self.arm()
        self.inner.connection_made(transport)

    def __getattr__(self, name: str) -> Any:  # data_received, eof_received, pause/resume_writing
        return getattr(self.inner, name)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            self.free()

    def free(self) -> None:
        """Cancel the deadline and give the slot back (once)."""
        self.disarm()
        if not self._freed:
            self._freed = True
            self.listener.live.pop(self.inner, None)
            self.listener.slots.release()

    def arm(self) -> None:
        """(Re)start the deadline, unless the connection is gone."""
        self.disarm()
        if not self._freed:
            self._deadline = asyncio.get_running_loop().call_later(self.listener.limits.timeout, self._expire)

    def disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()  # a no-op once it ran

    def _expire(self) -> None:  # armed only while idle and open
        assert self.transport is not None
        log.info("dropped %s: no complete request within %g s (idle, or a request sent too slowly)",
                 self.peer, self.listener.limits.timeout)
        self.transport.abort()


class Listener:
    """Listening sockets and a capped accept loop in front of aiohttp's ``web.Server``: ``bind``, ``install(app)``
    before the app's runner is set up, then ``async with accepting(runner.server)``; ``abort_all()`` after."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.slots = asyncio.Semaphore(limits.max_connections)
        self.live: dict[Any, _Connection] = {}  # the open connections, by their aiohttp RequestHandler
        self.peak = 0  # most connections ever open at once
        self.url = ""  # the base URL, once bound
        self._socks: list[socket.socket] = []

    async def bind(self, host: str, port: int) -> None:
        """Bind and listen on every address ``host`` resolves to, and set ``url``. ConfigError on failure."""
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {port}")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"cannot resolve --host {host!r} ({exc}); give an IP address or a known name") from exc
        seen: set[tuple[int, str]] = set()
        try:
            for family, _, _, _, addr in infos:
                if (family, addr[0]) in seen:
                    continue
                seen.add((family, addr[0]))
                if self._socks:  # port 0: every address gets the port the first one got
                    addr = (addr[0], self._socks[0].getsockname()[1], *addr[2:])
                # SO_REUSEADDR, and IPv6 only on an IPv6 address; an error names the address
                self._socks.append(socket.create_server(addr, family=family, backlog=BACKLOG))
                self._socks[-1].setblocking(False)
        except (OSError, OverflowError) as exc:
            self._close_sockets()
            why = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"cannot listen on {host}:{port} ({why}); choose another --host/--port") from exc
        port = self._socks[0].getsockname()[1]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def install(self, app: web.Application) -> None:
        """Hook the request deadline and the keep-alive limit into ``app``."""
        app.middlewares.append(self._middleware)
        app.on_response_prepare.append(self._on_response_prepare)

    @asynccontextmanager
    async def accepting(self, factory: Callable[[], Any]) -> AsyncIterator[None]:
        """Accept connections into ``factory()`` for the length of the block; the sockets are closed after it."""
        try:
            async with task_group() as tg:
                loops = [tg.create_task(self._accept(sock, factory)) for sock in self._socks]
                try:
                    yield
                finally:
                    for task in loops:
                        task.cancel()
        finally:
            self._close_sockets()

    async def _accept(self, sock: socket.socket, factory: Callable[[], Any]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.slots.acquire()
            try:
                conn, addr = await loop.sock_accept(sock)
            except BaseException as exc:
                self.slots.release()
                if not isinstance(exc, OSError):
                    raise
                if exc.errno in OUT_OF_RESOURCES:  # else the client gave up: accept the next
                    log.warning("cannot accept a connection (%s); retrying in 0.5 s", exc.strerror)
                    await asyncio.sleep(0.5)
                continue
            peer = f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
            connection = _Connection(self, factory(), peer)
            try:
                await loop.connect_accepted_socket(lambda c=connection: c, conn)
            except BaseException as exc:
                conn.close()
                connection.free()
                if not isinstance(exc, OSError):
                    raise
                log.info("dropped %s at connect: %s", peer, exc)

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """The connection is busy while a request is handled: its deadline waits meanwhile."""
        connection = self.live.get(request.protocol)
        if connection is None:
            return await handler(request)
        connection.requests += 1
        connection.disarm()
        try:
            return await handler(request)
        finally:
            connection.arm()

    async def _on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Close the connection after its ``max_keepalive_requests``-th response."""
        connection = self.live.get(request.protocol)
        if connection is not None and connection.requests >= self.limits.max_keepalive_requests:
            response.force_close()  # headers are computed before this hook: say it too
            response.headers["Connection"] = "close"

    def _close_sockets(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()

    def abort_all(self) -> None:
        """Drop every connection still open."""
        for connection in list(self.live.values()):
            if connection.transport is not None:
                connection.transport.abort()
