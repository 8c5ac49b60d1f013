"""Fault-injection HTTP server for tests and benches, layered over the real ``nanostream.serve.server`` app.

In-process (async tests)::

    async def test_x(fault_server):                 # fixture: a factory, servers closed at teardown
        srv = await fault_server(rate=None, latency=0.0, redirect=False)   # serves tmp_path/"remote"
        srv.script("shard_00000.parquet", "status:503", "drop:1000")      # next 2 GETs fail, then normal
        ... GET f"{srv.url}/shard_00000.parquet" ...
        assert srv.count("shard_00000.parquet") == 3
        srv.requests        # [Seen(method, path, range, status), ...] in arrival order
        srv.bytes_sent      # {"shard_00000.parquet": body bytes actually written}
        srv.bytes_by        # {requester: body bytes written to it}; the requester is the bearer token
                            # (HF_TOKEN), so simulated nodes that set HF_TOKEN=node0.. are told apart

    async with FaultServer(root, rate=4e6) as srv: ...   # same thing without the fixture

Faults (strings, consumed one per GET of the file, in order; then it is served normally):

    status:N        answer status N (503, 500, 404, 403, 408, ...) with a short text body
    429:S           429 Too Many Requests with ``Retry-After: S``
    drop:N          true headers, N body bytes, then abort the connection (RST)
    short:N         true headers, N body bytes, then close the connection cleanly (FIN)
    stall:N         true headers, N body bytes, then nothing, until the client gives up
    flip:OFFSET     full body with the byte at file offset OFFSET xor 0xFF

``rate`` caps each response body at that many bytes/s (sleeps between small
chunks); ``latency`` seconds are added before every response. ``chaos=P`` gives
each GET (without a scripted fault) probability P of a random transient fault
(503, 429:0, drop, short or flip), seeded by ``seed``.

``redirect=True`` mimics the Hub: ``GET/HEAD /<name>`` answers 302 to
``/cdn/<name>`` carrying ``X-Linked-Etag: "<sha256>"`` and ``X-Linked-Size``;
the CDN answer has an md5-looking ``ETag`` and no X-Linked headers, so a client
must take the sha256 from the redirect. Status faults are consumed on the
``/<name>`` hop, body faults on the ``/cdn/<name>`` hop (one fault per attempt).
``count(name)`` counts requests for the ``/<name>`` path only.

Hub-like paths: ``/datasets/<org>/<repo>/resolve/<revision>/<name>`` (and the
model form without ``datasets/``) are served exactly like ``/<name>``, and every
answer carries ``X-Repo-Commit``, so ``huggingface_hub.hf_hub_download`` works
with ``HF_ENDPOINT`` set to the server's URL.

``no_sha256=True`` mimics nginx, S3 and most mirrors: a plain md5-looking
``ETag`` (still honoured by ``If-Range``) and no ``X-Linked-Etag`` /
``X-Linked-Size``, so a client has no sha256 to check. ``corrupt=P`` gives each
body GET (without a scripted fault) probability P of one flipped byte at a
random offset inside the range it serves (seeded by ``seed``), and nothing else
wrong: true headers, full length.

``GET /-/stats`` (no latency, not recorded in ``requests``) answers JSON
``{"bytes_sent": total body bytes so far, "requests": count, "files": {name: bytes}}``,
so a bench can read what a client in another process cost the server.

Subprocess mode (benches, chaos tests)::

    python tests/servers.py DIR [--host H] [--port 0] [--rate B_PER_S] [--latency S] [--redirect]
                                [--fault NAME=FAULT[,FAULT...]]... [--chaos P] [--seed N]
                                [--no-sha256] [--corrupt P]

prints the base URL alone on its first stdout line and serves until SIGINT/SIGTERM,
then prints ``bytes_sent JSON`` (body bytes per file) on its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import re
import signal
import sys
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from nanostream.serve.files import CHUNK, ShardFiles
from nanostream.serve.server import FILES_KEY, make_app

BODY_FAULTS = ("drop", "short", "stall", "flip")
# request-state keys (web.RequestKey on aiohttp >= 3.12, where plain strings warn)
_RequestKey = getattr(web, "RequestKey", None)
_FAULT: Any = _RequestKey("nanostream_fault", object) if _RequestKey else "nanostream_fault"
_CDN: Any = _RequestKey("nanostream_cdn", bool) if _RequestKey else "nanostream_cdn"
# /datasets/<org>/<repo>/resolve/<revision>/<name> (or without datasets/): the Hub's file URL
_HUB_PATH = re.compile(r"^/(?:datasets/|spaces/)?[^/]+/[^/]+/resolve/[^/]+/(?P<name>[^/]+)$")
REPO_COMMIT = "0123456789abcdef0123456789abcdef01234567"  # X-Repo-Commit on every answer
STATS_PATH = "/-/stats"


async def iter_file(path: Path, start: int, end: int, chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """Bytes ``[start, end)`` of ``path`` in chunks, each read on a worker thread; ``OSError`` if the file is
    shorter. Use it with ``contextlib.aclosing`` so the file is closed on an early exit."""
    with path.open("rb") as f:
        f.seek(start)
        pos = start
        while pos < end:
            data = await asyncio.to_thread(f.read, min(chunk, end - pos))
            if not data:
                raise OSError(f"{path} shrank while being served (at byte {pos}, expected {end})")
            pos += len(data)
            yield data


@dataclass(frozen=True)
class Fault:
    kind: str  # "status", "drop", "short", "stall", "flip"
    arg: int
    retry_after: str | None = None

    @classmethod
    def parse(cls, text: str) -> Fault:
        kind, _, arg = text.partition(":")
        try:
            if kind == "429":
                float(arg)
                return cls("status", 429, retry_after=arg)
            if kind in ("status", *BODY_FAULTS) and int(arg) >= 0:
                return cls(kind, int(arg))
        except ValueError:
            pass
        raise ValueError(f"bad fault {text!r}: use status:N, 429:SECONDS, drop:N, short:N, stall:N or flip:OFFSET")

    @property
    def is_body(self) -> bool:
        return self.kind in BODY_FAULTS


@dataclass
class Seen:
    """One request as the server saw it; ``status`` is 0 until it is answered, ``at`` is loop time on arrival."""

    method: str
    path: str
    range: str | None
    status: int = 0
    at: float = 0.0


class FaultServer:
    """The real serve app plus scripted faults, throttling, latency and Hub-style redirects."""

    def __init__(self, root: Path, *, rate: float | None = None, latency: float = 0.0, redirect: bool = False,
                 chaos: float = 0.0, seed: int = 0, no_sha256: bool = False, corrupt: float = 0.0) -> None:
        self.root = Path(root)
        self.rate = rate
        self.latency = latency
        self.redirect = redirect
        self.chaos = chaos
        self.no_sha256 = no_sha256
        self.corrupt = corrupt
        self.url = ""
        self.requests: list[Seen] = []
        self.bytes_sent: dict[str, int] = defaultdict(int)
        self.bytes_by: dict[str, int] = defaultdict(int)
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._random = random.Random(seed)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.app = make_app(self.root, body_writer=self._write_body)
        self.app.middlewares.append(self._middleware)
        self.app.on_response_prepare.append(self._rewrite_cdn_headers)
        self.files: ShardFiles = self.app[FILES_KEY]

    # -- public API ---------------------------------------------------------------------------
    def script(self, name: str, *faults: str) -> None:
        """Queue faults for the next GETs of ``name``, one per GET, in order."""
        self._faults[name].extend(Fault.parse(f) for f in faults)

    def pending(self, name: str) -> int:
        """How many scripted faults for ``name`` are not consumed yet."""
        return len(self._faults[name])

    def count(self, name: str, method: str = "GET") -> int:
        """Requests seen for path ``/<name>`` with ``method``."""
        path = "/" + name.lstrip("/")
        return sum(1 for r in self.requests if r.path == path and r.method == method)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FaultServer:
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self

    async def aclose(self) -> None:
        self._closing.set()  # stalled / throttled bodies abort their connections now
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FaultServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- request path -------------------------------------------------------------------------
    def _next_fault(self, name: str, *, body_ok: bool) -> Fault | None:
        queue = self._faults.get(name)
        if queue:
            if body_ok or not queue[0].is_body:
                return queue.popleft()
            return None
        if self.chaos and body_ok and self._random.random() < self.chaos:
            kind = self._random.choice(["status:503", "429:0", "drop", "short", "flip"])
            if kind in ("drop", "short", "flip"):
                kind = f"{kind}:{self._random.randrange(0, 1 << 20)}"
            return Fault.parse(kind)
        if self.corrupt and body_ok and self._random.random() < self.corrupt:
            return Fault("flip", -1)  # -1: a random offset inside the range served, picked in _write_body
        return None

    @staticmethod
    def _status_response(fault: Fault, name: str) -> web.Response:
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        return web.Response(status=fault.arg, headers=headers, text=f"injected status {fault.arg} for {name}\n")

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        if request.path == STATS_PATH:
            return web.json_response({"bytes_sent": sum(self.bytes_sent.values()), "requests": len(self.requests),
                                      "files": dict(self.bytes_sent)})
        seen = Seen(request.method, request.path, request.headers.get("Range"), at=asyncio.get_running_loop().time())
        self.requests.append(seen)
        seen.status = 500
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            response = await self._dispatch(request, handler)
            seen.status = response.status
            return response
        except web.HTTPException as exc:
            seen.status = exc.status
            raise

    async def _dispatch(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
        path, is_get = request.path, request.method == "GET"
        hub = _HUB_PATH.match(path)
        if hub is not None:
            path = "/" + hub["name"]
        if self.no_sha256 and request.headers.get("If-Range"):
            request = await self._sha_if_range(request, path.rsplit("/", 1)[-1])
        if self.redirect and path.startswith("/cdn/"):
            name = path[len("/cdn/"):]
            fault = self._next_fault(name, body_ok=True) if is_get else None
            if fault is not None and not fault.is_body:
                return self._status_response(fault, name)
            request = await self._sha_if_range(request, name)
            request[_CDN] = True
            if fault is not None:
                request[_FAULT] = fault
            return await self.files.respond(request, name)
        name = path[1:]
        if not self.redirect:
            fault = self._next_fault(name, body_ok=True) if is_get else None
            if fault is not None and not fault.is_body:
                return self._status_response(fault, name)
            if fault is not None:
                request[_FAULT] = fault
            if hub is not None:
                return await self.files.respond(request, name)
            return await handler(request)
        fault = self._next_fault(name, body_ok=False) if is_get else None
        if fault is not None:
            return self._status_response(fault, name)
        if request.method not in ("GET", "HEAD"):
            return await handler(request)
        info = await self.files.info(name)
        if info is None:
            raise web.HTTPNotFound(text=f"no file {name!r} in this mirror\n")
        location = str(request.url.with_path(f"/cdn/{name}").with_query(None))
        if self.no_sha256:
            return web.Response(status=302, headers={"Location": location, "ETag": self._cdn_etag(info.sha256)})
        return web.Response(status=302, headers={
            "Location": location, "ETag": info.etag, "X-Linked-Etag": info.etag, "X-Linked-Size": str(info.size)})

    @staticmethod
    def _cdn_etag(sha256: str) -> str:
        return '"' + hashlib.md5(sha256.encode(), usedforsecurity=False).hexdigest() + '"'

    async def _sha_if_range(self, request: web.Request, name: str) -> web.Request:
        """``request`` with an If-Range that names the plain (md5-looking) ETag turned into the sha256 one."""
        info = await self.files.info(name)
        if info is not None and request.headers.get("If-Range") == self._cdn_etag(info.sha256):
            headers = CIMultiDict(request.headers)
            headers["If-Range"] = info.etag
            request = request.clone(headers=headers)
        return request

    async def _rewrite_cdn_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Repo-Commit"] = REPO_COMMIT
        if (request.get(_CDN) or self.no_sha256) and "ETag" in response.headers:
            etag = response.headers["ETag"].strip('"')
            if re.fullmatch(r"[0-9a-f]{64}", etag):
                response.headers["ETag"] = self._cdn_etag(etag)
            response.headers.popall("X-Linked-Etag", None)
            response.headers.popall("X-Linked-Size", None)

    async def _write_body(self, request: web.BaseRequest, response: web.StreamResponse, path: Path,
                          start: int, end: int) -> None:
        fault = request.get(_FAULT)
        assert fault is None or isinstance(fault, Fault)
        stop = end
        if fault is not None and fault.kind in ("drop", "short", "stall"):
            stop = min(end, start + fault.arg)
        flip = fault.arg if fault is not None and fault.kind == "flip" else None
        if flip == -1:
            flip = self._random.randrange(start, end) if end > start else None
        loop = asyncio.get_running_loop()
        t0, sent, pos = loop.time(), 0, start
        gen = iter_file(path, start, stop)
        try:
            async for block in gen:
                piece_size = CHUNK if not self.rate else max(1024, min(64 * 1024, int(self.rate / 50)))
                for off in range(0, len(block), piece_size):
                    piece = block[off:off + piece_size]
                    if flip is not None and pos <= flip < pos + len(piece):
                        mutable = bytearray(piece)
                        mutable[flip - pos] ^= 0xFF
                        piece = bytes(mutable)
                    if self._closing.is_set():
                        self._abort(request)
                        return
                    await response.write(piece)
                    sent += len(piece)
                    pos += len(piece)
                    self.bytes_sent[path.name] += len(piece)
                    self.bytes_by[request.headers.get("Authorization", "").removeprefix("Bearer ")] += len(piece)
                    if self.rate:
                        delay = t0 + sent / self.rate - loop.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
        finally:
            await gen.aclose()
        if fault is None or stop == end:
            return
        if fault.kind == "drop":
            await self._drain(request)
            self._abort(request)
        elif fault.kind == "short":
            if request.transport is not None:
                request.transport.close()
        elif fault.kind == "stall":
            while not self._closing.is_set():
                if request.transport is None or request.transport.is_closing():
                    return
                await asyncio.sleep(0.02)
            self._abort(request)

    async def _drain(self, request: web.BaseRequest, limit: float = 5.0) -> None:
        """Wait (briefly) until the bytes already written have left the transport's buffer."""
        for _ in range(int(limit / 0.005)):
            t = request.transport
            if t is None or not t.get_write_buffer_size():
                return
            await asyncio.sleep(0.005)

    @staticmethod
    def _abort(request: web.BaseRequest) -> None:
        if request.transport is not None:
            request.transport.abort()


@pytest.fixture
async def fault_server(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[FaultServer]]]:
    """A factory ``await fault_server(root=None, *, rate, latency, redirect, chaos, seed, no_sha256, corrupt)``
    -> started FaultServer over ``root`` (default ``tmp_path/"remote"``, created); all closed at teardown."""
    started: list[FaultServer] = []

    async def start(root: Path | None = None, **kwargs: object) -> FaultServer:
        folder = root if root is not None else tmp_path / "remote"
        folder.mkdir(parents=True, exist_ok=True)
        srv = FaultServer(folder, **kwargs)  # type: ignore[arg-type]
        started.append(srv)
        return await srv.start()

    try:
        yield start
    finally:
        for srv in reversed(started):
            await srv.aclose()


# -- subprocess mode -----------------------------------------------------------------------------
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tests/servers.py", description="fault-injecting shard server")
    p.add_argument("dir", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rate", type=float, default=None, help="bytes/s per connection")
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each response")
    p.add_argument("--redirect", action="store_true", help="Hub-style 302 to /cdn/<name>")
    p.add_argument("--fault", action="append", default=[], metavar="NAME=FAULT[,FAULT...]")
    p.add_argument("--chaos", type=float, default=0.0, help="probability of a random fault per GET")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-sha256", action="store_true", help="plain md5-looking ETag, no X-Linked-* headers")
    p.add_argument("--corrupt", type=float, default=0.0, help="probability of one flipped byte per body GET")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    srv = FaultServer(args.dir, rate=args.rate, latency=args.latency, redirect=args.redirect,
                      chaos=args.chaos, seed=args.seed, no_sha256=args.no_sha256, corrupt=args.corrupt)
    for spec in args.fault:
        name, _, faults = spec.partition("=")
        srv.script(name, *faults.split(","))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await srv.start(args.host, args.port)
    try:
        print(srv.url, flush=True)
        await stop.wait()
    finally:
        await srv.aclose()
    print("bytes_sent", json.dumps(dict(srv.bytes_sent)), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
