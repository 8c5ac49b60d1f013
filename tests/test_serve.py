"""Tests for ``nanostream serve`` (the offline mirror) and the fault layer in ``tests/servers.py``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from nanostream.errors import ConfigError, DatasetError
from nanostream.serve.files import parse_range
from nanostream.serve.listener import Limits
from nanostream.serve.server import make_app, open_mirror

from servers import FaultServer

NAME = "shard_00000.parquet"
SIZE = 300_000


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / NAME).write_bytes(os.urandom(SIZE))
    (folder / "shard_00001.parquet").write_bytes(os.urandom(1000))
    return folder


@contextlib.asynccontextmanager
async def serving(root: Path) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """The mirror of ``root`` and a client session, for the length of the block."""
    async with open_mirror(root) as mirror, aiohttp.ClientSession() as session:
        yield mirror.url, session


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def raw_status(url: str, target: str) -> int:
    """Send ``GET target`` byte for byte (no client-side normalisation) and return the status code."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        return int(line.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


# -- the mirror --------------------------------------------------------------------------------
async def test_head_and_get_headers_and_bytes(root: Path) -> None:
    async with serving(root) as (url, session):
        digest = sha(root / NAME)
        async with session.head(f"{url}/{NAME}") as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(SIZE)
            assert r.headers["Accept-Ranges"] == "bytes"
            assert r.headers["ETag"] == f'"{digest}"'
            assert r.headers["X-Linked-Etag"] == f'"{digest}"'
            assert r.headers["X-Linked-Size"] == str(SIZE)
            assert r.headers["Content-Type"] in ("application/vnd.apache.parquet", "application/octet-stream")
            assert await r.read() == b""
        async with session.get(f"{url}/{NAME}") as r:
            assert r.status == 200
            assert r.headers["ETag"] == f'"{digest}"'
            assert await r.read() == (root / NAME).read_bytes()


async def test_ranges(root: Path) -> None:
    async with serving(root) as (url, session):
        data = (root / NAME).read_bytes()
        cases = {
            "bytes=10-19": (10, 20),
            "bytes=1000-": (1000, SIZE),
            "bytes=-50": (SIZE - 50, SIZE),
            "bytes=-999999999": (0, SIZE),
            f"bytes=5-{SIZE * 2}": (5, SIZE),
        }
        for header, (start, end) in cases.items():
            async with session.get(f"{url}/{NAME}", headers={"Range": header}) as r:
                assert r.status == 206, header
                assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/{SIZE}"
                assert r.headers["Content-Length"] == str(end - start)
                assert await r.read() == data[start:end], header
        for header in (f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 9}", "bytes=-0"):
            async with session.get(f"{url}/{NAME}", headers={"Range": header}) as r:
                assert r.status == 416, header
                assert r.headers["Content-Range"] == f"bytes */{SIZE}"
        async with session.get(f"{url}/{NAME}", headers={"Range": "items=0-5"}) as r:  # RFC 9110: ignore the unit
            assert r.status == 200
            assert await r.read() == data


def test_parse_range_edges() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-0", 10) == (0, 1)
    assert parse_range("bytes=0-", 0) is False
    assert parse_range("bytes=-3", 0) is False
    assert parse_range(" bytes = 2 - 4 ", 10) == (2, 5)
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=5" + "9" * 80 + "-", 10) is False  # past the end, not an overflow
    for bad in ("bytes", "bytes=0-1,5-6", "bytes=9-3", "bytes=x-", "bytes=-", "bytes=1-2-3", "bytes=\u0663-",
                "bytes=" + "9" * 5000 + "-"):
        with pytest.raises(ValueError):
            parse_range(bad, 10)


async def test_if_range(root: Path) -> None:
    async with serving(root) as (url, session):
        data = (root / NAME).read_bytes()
        etag = f'"{sha(root / NAME)}"'
        async with session.get(f"{url}/{NAME}", headers={"Range": "bytes=100-", "If-Range": etag}) as r:
            assert r.status == 206
            assert await r.read() == data[100:]
        stale = '"' + "0" * 64 + '"'
        async with session.get(f"{url}/{NAME}", headers={"Range": "bytes=100-", "If-Range": stale}) as r:
            assert r.status == 200
            assert "Content-Range" not in r.headers
            assert await r.read() == data


async def test_etag_follows_file_changes(root: Path) -> None:
    async with serving(root) as (url, session):
        path = root / "shard_00001.parquet"
        async with session.head(f"{url}/{path.name}") as r:
            first = r.headers["ETag"]
        path.write_bytes(os.urandom(1001))
        async with session.head(f"{url}/{path.name}") as r:
            assert r.headers["ETag"] != first
            assert r.headers["ETag"] == f'"{sha(path)}"'
            assert r.headers["Content-Length"] == "1001"


@pytest.mark.parametrize("target", [
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E%2Fsecret.txt",
    "/%2E%2E%2Fetc%2Fpasswd",
    "/..%2fsecret.txt",
    "//etc/passwd",
    "/%2Fetc%2Fpasswd",
    "/sub",
    "/sub/",
    "/sub/.inner.parquet",
    "/.git/inner.parquet",
    "/.hidden",
    "/outside_link.parquet",
    "/dir_link",
    "/nope.parquet",
    "/",
])
async def test_nothing_outside_the_folder(root: Path, target: str) -> None:
    (root.parent / "secret.txt").write_text("secret")
    (root / "sub").mkdir()
    (root / "sub" / "inner.parquet").write_bytes(b"x")
    (root / ".hidden").write_text("hidden")
    (root / "outside_link.parquet").symlink_to(root.parent / "secret.txt")
    (root / "dir_link").symlink_to(root / "sub")
    async with open_mirror(root) as mirror:
        url = mirror.url
        assert await raw_status(url, target) == 404
        assert await raw_status(url, f"/{NAME}") == 200


async def test_leaving_the_mirror_leaves_no_task_and_closes_the_port(root: Path) -> None:
    """The accept loops end with the block, and an error raised in it comes out as it was raised."""
    before = asyncio.all_tasks()
    with pytest.raises(ConfigError, match="raised in the block"):
        async with open_mirror(root) as mirror:
            assert await raw_status(mirror.url, f"/{NAME}") == 200
            assert len(asyncio.all_tasks() - before) == 1  # one accept loop: 127.0.0.1
            raise ConfigError("raised in the block")
    assert asyncio.all_tasks() == before
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*host_port(mirror.url))


async def test_files_in_subfolders_are_served(root: Path) -> None:
    async with serving(root) as (url, session):
        (root / "data" / "CC-MAIN 2024").mkdir(parents=True)
        (root / "data" / "CC-MAIN 2024" / "000_00000.parquet").write_bytes((root / NAME).read_bytes())
        async with session.get(f"{url}/data/CC-MAIN%202024/000_00000.parquet", headers={"Range": "bytes=0-3"}) as r:
            assert r.status == 206 and await r.read() == (root / NAME).read_bytes()[:4]


async def test_symlink_inside_the_folder_is_served(root: Path) -> None:
    async with serving(root) as (url, session):
        (root / "alias.parquet").symlink_to(root / NAME)
        async with session.get(f"{url}/alias.parquet") as r:
            assert r.status == 200
            assert await r.read() == (root / NAME).read_bytes()


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere"):
        make_app(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        make_app(tmp_path / "file")


@pytest.mark.slow
def test_cli_serve_subprocess_serves_and_stops_on_sigint(root: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "nanostream.cli", "serve", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"serving {root} at http://127.0.0.1:"), line
        assert line.rstrip().endswith("(2 parquet files)"), line
        url = line.split(" at ", 1)[1].split()[0]
        import urllib.request

        with urllib.request.urlopen(f"{url}/{NAME}", timeout=10) as r:
            assert r.read() == (root / NAME).read_bytes()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_cli_serve_missing_folder_exits_2(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "nanostream.cli", "serve", str(tmp_path / "nope"), "--port", "0"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "nope" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# -- hardening: bad headers, slow and idle clients, the connection cap, bad flags -----------------
def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def raw_exchange(url: str, data: bytes) -> bytes:
    """Send ``data`` as is and return everything the server answers until it closes or 10 s pass."""
    reader, writer = await asyncio.open_connection(*host_port(url))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 20), 10)
    finally:
        writer.close()
        await writer.wait_closed()


def logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith(("nanostream", "aiohttp"))]


def get(target: str = f"/{NAME}", *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: mirror", "Connection: close", *headers, "", ""]
    return "\r\n".join(lines).encode()


BIG = "9" * 5000
BAD_REQUESTS = {
    "5000-digit Range start": (get(f"/{NAME}", f"Range: bytes={BIG}-"), 416),
    "5000-digit Range end": (get(f"/{NAME}", f"Range: bytes=0-{BIG}"), 416),
    "5000-digit suffix Range": (get(f"/{NAME}", f"Range: bytes=-{BIG}"), 416),
    "malformed Range": (get(f"/{NAME}", "Range: bytes=x-"), 416),
    "reversed Range": (get(f"/{NAME}", "Range: bytes=9-3"), 416),
    "multiple ranges": (get(f"/{NAME}", "Range: bytes=0-1,5-6"), 416),
    "bad If-Range": (get(f"/{NAME}", "Range: bytes=0-", "If-Range: yesterday-ish"), 400),
    "dot-dot path": (get("/../secret.txt"), 404),
    "encoded dot-dot path": (get("/%2E%2E%2Fsecret.txt"), 404),
    "absolute path": (get("//etc/passwd"), 404),
    "huge header": (get(f"/{NAME}", "X-Big: " + "a" * 20_000), 400),
    "too many headers": (get(f"/{NAME}", *(f"X-{i}: 1" for i in range(100))), 400),
    "huge request line": (get("/" + "a" * 20_000), 400),
    "not HTTP": (b"GARBAGE\r\n\r\n", 400),
    "POST": (get(f"/{NAME}").replace(b"GET", b"POST", 1), 405),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_request_gets_4xx_and_one_log_line(root: Path, case: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    data, status = BAD_REQUESTS[case]
    caplog.set_level(logging.INFO)
    async with open_mirror(root) as mirror:
        url = mirror.url
        caplog.clear()
        answer = await raw_exchange(url, data)
        assert answer.split(b"\r\n", 1)[0].split()[1] == str(status).encode(), answer[:200]
        records = logged(caplog)
        assert len(records) == 1, [r.getMessage() for r in records]
        assert records[0].exc_info is None and str(status) in records[0].getMessage()
        assert await raw_status(url, f"/{NAME}") == 200  # and the mirror still serves


async def test_if_range_validators(root: Path) -> None:
    async with serving(root) as (url, session):
        data = (root / NAME).read_bytes()
        for validator in ("Sat, 28 Nov 2026 10:00:00 GMT", f'W/"{sha(root / NAME)}"', '"other"'):
            async with session.get(f"{url}/{NAME}", headers={"Range": "bytes=5-", "If-Range": validator}) as r:
                assert r.status == 200, validator  # a date or a weak/other tag never matches: the whole file
                assert await r.read() == data
        async with session.get(f"{url}/{NAME}", headers={"If-Range": "garbage"}) as r:  # no Range: ignored
            assert r.status == 200


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes the connection; the 10 s bound only stops a broken test from hanging."""
    out = bytearray()
    while chunk := await asyncio.wait_for(reader.read(65536), 10):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("sent", [b"", b"GET /shard_00000.parquet HTTP/1.1\r\nHost: mirror\r\n"])
async def test_silent_or_half_sent_client_is_dropped(root: Path, sent: bytes,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with open_mirror(root, limits=Limits(timeout=0.3)) as mirror:
        url = mirror.url
        reader, writer = await asyncio.open_connection(*host_port(url))
        writer.write(sent)
        assert await closed_by_server(reader) == b""
        writer.close()
        await writer.wait_closed()
        assert any("no complete request within 0.3 s" in r.getMessage() for r in logged(caplog))
        assert len(mirror.live) == 0


async def test_dribbling_client_is_dropped(root: Path) -> None:
    """A request sent a byte at a time (slowloris) is cut at the deadline, however often bytes arrive."""
    async with open_mirror(root, limits=Limits(timeout=0.3)) as mirror:
        url = mirror.url
        reader, writer = await asyncio.open_connection(*host_port(url))
        writer.write(b"GET /shard_00000.parquet HTTP/1.1\r\nHost: mirror\r\nX-Slow: ")
        with pytest.raises(ConnectionError):
            for _ in range(500):  # 500 x 20 ms = 10 s: a bound, never reached when the deadline works
                writer.write(b"a")
                await writer.drain()
                if reader.at_eof() or writer.transport.is_closing():
                    raise ConnectionResetError("closed by the server")
                await asyncio.sleep(0.02)
        writer.close()


async def test_idle_keepalive_dropped_but_busy_response_is_not(root: Path) -> None:
    async def slow_body(request, response, path, start, end) -> None:
        await asyncio.sleep(0.6)  # longer than the request deadline: a busy connection must survive it
        await response.write((root / NAME).read_bytes()[start:end])

    async with open_mirror(root, limits=Limits(timeout=0.3), body_writer=slow_body) as mirror:
        url = mirror.url
        reader, writer = await asyncio.open_connection(*host_port(url))
        writer.write(f"GET /{NAME} HTTP/1.1\r\nHost: mirror\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
        body = await asyncio.wait_for(reader.readexactly(SIZE), 10)
        assert body == (root / NAME).read_bytes()
        assert await closed_by_server(reader) == b""  # then idle on keep-alive: dropped
        writer.close()


async def test_keepalive_request_limit(root: Path) -> None:
    async with open_mirror(root, limits=Limits(max_keepalive_requests=3)) as mirror:
        url = mirror.url
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as s:
            closes = []
            for _ in range(4):
                async with s.get(f"{url}/shard_00001.parquet") as r:
                    await r.read()
                    closes.append(r.headers.get("Connection", "").lower() == "close")
        assert closes == [False, False, True, False]  # the third on a connection closes it; a new one starts


async def test_stalled_reader_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    folder = tmp_path / "big"
    folder.mkdir()
    size = 32 << 20  # more than the loopback socket buffers hold
    (folder / "big.bin").write_bytes(os.urandom(size))
    async with open_mirror(folder, limits=Limits(timeout=0.3)) as mirror:
        url = mirror.url
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, host_port(url))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(get("/big.bin"))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        for _ in range(200):  # stall until the server gives up (bounded: 200 x 50 ms)
            if any("read nothing for 0.3 s" in r.getMessage() for r in logged(caplog)):
                break
            await asyncio.sleep(0.05)
        got = len(await closed_by_server(reader)) if not reader.at_eof() else 0
        assert got < size // 2
        assert any("read nothing for 0.3 s" in r.getMessage() for r in logged(caplog))
        assert len(mirror.live) == 0
        writer.close()


async def test_connection_cap_holds(root: Path) -> None:
    cap, clients = 8, 60
    release = asyncio.Event()
    started = 0

    async def gated_body(request, response, path, start, end) -> None:
        nonlocal started
        started += 1
        await release.wait()
        await response.write(path.read_bytes()[start:end])

    async with open_mirror(root, limits=Limits(max_connections=cap, timeout=20), body_writer=gated_body) as mirror:
        url = mirror.url
        async def client() -> bytes:
            reader, writer = await asyncio.open_connection(*host_port(url))
            try:
                writer.write(get())
                return await closed_by_server(reader)
            finally:
                writer.close()

        tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
        for _ in range(400):  # until the cap is reached (bounded)
            if started == cap:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # give any extra connection a chance to (wrongly) get in
        assert started == cap and len(mirror.live) == cap
        release.set()
        answers = await asyncio.gather(*tasks)
        data = (root / NAME).read_bytes()
        assert all(a.startswith(b"HTTP/1.1 200") and a.endswith(data) for a in answers)
        assert started == clients and mirror.peak == cap


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("args", [
    ["--port", "99999"], ["--port", "-1"], ["--port", "http"], ["--port", "{busy}"],
    ["--host", "no.such.host.invalid"], ["--max-connections", "0"], ["--max-connections", "many"],
    ["--max-connections", "100000000"], ["--timeout", "0"], ["--timeout", "nan"],
    ["--max-keepalive-requests", "0"], ["{file}"], ["{missing}"],
])
def test_cli_bad_flag_is_one_line_and_exit_2(root: Path, busy_port: int, args: list[str]) -> None:
    subs = {"{busy}": str(busy_port), "{file}": str(root / NAME), "{missing}": str(root / "nope")}
    argv = [subs.get(a, a) for a in args]
    folder = [] if argv[0] in subs.values() else [str(root)]
    port = [] if "--port" in argv else ["--port", "0"]
    res = subprocess.run([sys.executable, "-m", "nanostream.cli", "serve", *folder, *argv, *port],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


# -- the fault layer ---------------------------------------------------------------------------
async def test_fault_statuses_then_normal(root: Path, fault_server) -> None:
    srv = await fault_server(root)
    srv.script(NAME, "status:503", "429:7", "status:404")
    async with aiohttp.ClientSession() as s:
        statuses = []
        for _ in range(4):
            async with s.get(f"{srv.url}/{NAME}") as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert r.headers["Retry-After"] == "7"
                body = await r.read()
        async with s.head(f"{srv.url}/{NAME}") as r:  # HEAD consumes nothing
            assert r.status == 200
    assert statuses == [503, 429, 404, 200]
    assert body == (root / NAME).read_bytes()
    assert srv.count(NAME) == 4 and srv.count(NAME, "HEAD") == 1
    assert [r.status for r in srv.requests] == [503, 429, 404, 200, 200]
    assert srv.pending(NAME) == 0


async def test_fault_drop_and_short(root: Path, fault_server) -> None:
    srv = await fault_server(root)
    srv.script(NAME, "drop:1000", "short:2000")
    async with aiohttp.ClientSession() as s:
        for expected in (1000, 2000):
            got = bytearray()
            with pytest.raises(aiohttp.ClientPayloadError):
                async with s.get(f"{srv.url}/{NAME}") as r:
                    assert r.status == 200 and r.headers["Content-Length"] == str(SIZE)
                    async for chunk in r.content.iter_any():
                        got += chunk
            assert len(got) <= expected
            assert bytes(got) == (root / NAME).read_bytes()[: len(got)]
        assert srv.bytes_sent[NAME] == 3000
        async with s.get(f"{srv.url}/{NAME}") as r:
            assert await r.read() == (root / NAME).read_bytes()


async def test_fault_flip_corrupts_one_byte(root: Path, fault_server) -> None:
    srv = await fault_server(root)
    srv.script(NAME, "flip:12345")
    data = (root / NAME).read_bytes()
    async with aiohttp.ClientSession() as s, s.get(f"{srv.url}/{NAME}") as r:
        body = await r.read()
    assert len(body) == SIZE and body != data
    assert [i for i in range(SIZE) if body[i] != data[i]] == [12345]
    assert body[12345] == data[12345] ^ 0xFF


async def test_fault_stall_until_client_gives_up(root: Path, fault_server) -> None:
    srv = await fault_server(root)
    srv.script(NAME, "stall:500")
    timeout = aiohttp.ClientTimeout(sock_read=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        with pytest.raises(asyncio.TimeoutError):
            async with s.get(f"{srv.url}/{NAME}") as r:
                await r.read()
    assert srv.bytes_sent[NAME] == 500


async def test_fault_redirect_like_the_hub(root: Path, fault_server) -> None:
    srv = await fault_server(root, redirect=True)
    digest = sha(root / NAME)
    async with aiohttp.ClientSession() as s:
        async with s.head(f"{srv.url}/{NAME}", allow_redirects=False) as r:
            assert r.status == 302
            assert r.headers["Location"].endswith(f"/cdn/{NAME}")
            assert r.headers["X-Linked-Etag"] == f'"{digest}"'
            assert r.headers["X-Linked-Size"] == str(SIZE)
        async with s.get(f"{srv.url}/{NAME}", headers={"Range": "bytes=10-"}) as r:
            assert r.status == 206
            cdn_etag = r.headers["ETag"]
            assert digest not in cdn_etag
            assert "X-Linked-Etag" not in r.headers and "X-Linked-Size" not in r.headers
            assert await r.read() == (root / NAME).read_bytes()[10:]
        # the CDN honours If-Range with its own ETag
        async with s.get(f"{srv.url}/cdn/{NAME}", headers={"Range": "bytes=5-9", "If-Range": cdn_etag}) as r:
            assert r.status == 206 and await r.read() == (root / NAME).read_bytes()[5:10]
        # status faults hit the API hop, body faults the CDN hop: one fault per attempt
        srv.script(NAME, "status:503", "drop:100")
        async with s.get(f"{srv.url}/{NAME}") as r:
            assert r.status == 503
            await r.read()
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.get(f"{srv.url}/{NAME}") as r:
                await r.read()
        async with s.get(f"{srv.url}/nope.parquet") as r:
            assert r.status == 404
    assert srv.count(NAME) == 3 and srv.count(NAME, "HEAD") == 1
    assert srv.count(f"cdn/{NAME}") == 3


async def test_throttle_and_latency(root: Path) -> None:
    async with FaultServer(root, rate=1_000_000, latency=0.1) as srv, aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        async with s.get(f"{srv.url}/{NAME}") as r:
            assert await r.read() == (root / NAME).read_bytes()
        elapsed = time.monotonic() - t0
    assert 0.1 + SIZE / 1_000_000 * 0.9 <= elapsed < 5, elapsed


async def test_close_with_a_stalled_client_is_quick(root: Path) -> None:
    srv = await FaultServer(root).start()
    srv.script(NAME, "stall:10")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{srv.url}/{NAME}") as r:
            assert r.status == 200
            t0 = time.monotonic()
            await srv.aclose()
            assert time.monotonic() - t0 < 1.0
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()


def test_bad_fault_strings(root: Path) -> None:
    srv = FaultServer(root)
    for bad in ("drop", "drop:x", "status:", "flip:-1", "boom:1", "429:soon"):
        with pytest.raises(ValueError, match="bad fault"):
            srv.script(NAME, bad)


@pytest.mark.slow
def test_subprocess_mode_prints_url_and_serves(root: Path) -> None:
    script = Path(__file__).with_name("servers.py")
    proc = subprocess.Popen([sys.executable, str(script), str(root), "--port", "0", "--rate", "5000000",
                             "--latency", "0.01", "--fault", f"{NAME}=status:503"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{url}/{NAME}", timeout=10)
        assert info.value.code == 503
        info.value.close()
        with urllib.request.urlopen(f"{url}/{NAME}", timeout=10) as r:
            assert r.read() == (root / NAME).read_bytes()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in err


async def test_a_folder_fetched_from_the_hub_is_a_hub_for_the_next_node(tmp_path: Path) -> None:
    """serve answers the Hub API for its recorded hf:// dataset: HF_ENDPOINT=mirror lists the same commit."""
    from nanostream.config import Config
    from nanostream.fetch.many import fetch_files
    from nanostream.sources.catalog import write_catalog
    from nanostream.sources.resolve import open_catalog

    from datagen import write_shard
    from hubserver import HubServer

    repo = tmp_path / "repo"
    for i, name in enumerate(["data/a/train-0.parquet", "data/b/train-1.parquet", "data/validation.parquet"]):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        write_shard(repo / name, i, 2, 4)
    url = "hf://datasets/org/corpus/data"
    async with HubServer(page_size=2) as hub:
        sha = hub.add_repo("org/corpus", repo)
        first = await open_catalog(url, config=Config(base_dir=tmp_path, hf_endpoint=hub.url))
        write_catalog(tmp_path / "node0", first)
        assert all(r.error is None for r in await fetch_files(first.files, data_dir=tmp_path / "node0"))
    async with open_mirror(tmp_path / "node0") as served:
        mirror = served.url
        again = await open_catalog(url, config=Config(base_dir=tmp_path, hf_endpoint=mirror))
        results = await fetch_files(again.files, data_dir=tmp_path / "node1")
        with pytest.raises(DatasetError, match="no such dataset repo"):
            await open_catalog("hf://datasets/org/other", config=Config(base_dir=tmp_path, hf_endpoint=mirror))
    assert again.revision == sha and [(f.path, f.size, f.sha256) for f in again.files] == \
        [(f.path, f.size, f.sha256) for f in first.files]
    assert all(r.error is None for r in results)
    for f in first.files:
        assert (tmp_path / "node1" / f.path).read_bytes() == (repo / "data" / f.path).read_bytes()
