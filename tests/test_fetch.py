"""The downloader against real loopback servers with injected faults (never a mocked client)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from nanostream.errors import AccessDenied, HTTPStatusError, RetriesExhausted
from nanostream.fetch.fetcher import Fetcher
from nanostream.fetch.many import fetch_shards
from nanostream.fetch.partial import PartState, part_path, state_path
from nanostream.retry import RetryPolicy
from nanostream.shards import shard_name
from nanostream.sources.catalog import DataFile

from datagen import make_big_shard, make_shards

FAST = RetryPolicy(attempts=5, base=0.01, cap=0.05, connect_timeout=5, read_timeout=1.0)
NAME0 = shard_name(0)


def remote_shards(root: Path, n: int, mb: float = 0.0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    if mb:
        return [make_big_shard(root / shard_name(i), i, mb) for i in range(n)]
    return make_shards(root, n, record=False)


def assert_same(remote: Path, local: Path, n: int) -> None:
    for i in range(n):
        assert (local / shard_name(i)).read_bytes() == (remote / shard_name(i)).read_bytes(), shard_name(i)


def assert_clean(local: Path) -> None:
    """Only shard files and .nanostream* bookkeeping; no part or state files left."""
    for name in os.listdir(local):
        assert name.startswith(("shard_", ".nanostream")), name
        assert not name.endswith((".part", ".state", ".tmp")), name


async def test_fetch_byte_identical_and_clean(fault_server, tmp_path):
    srv = await fault_server()
    remote_shards(srv.root, 4)
    local = tmp_path / "local"
    seen = []
    results = await fetch_shards(range(4), data_dir=local, base_url=srv.url, workers=3, retry=FAST,
                                 on_shard=seen.append)
    assert [r.error for r in results] == [None] * 4
    assert sorted(r.index for r in seen) == [0, 1, 2, 3]
    assert_same(srv.root, local, 4)
    assert_clean(local)
    # idempotent: a second run downloads nothing
    before = len(srv.requests)
    again = await fetch_shards(range(4), data_dir=local, base_url=srv.url, retry=FAST)
    assert all(r.skipped and r.downloaded == 0 for r in again)
    assert len(srv.requests) == before


@pytest.mark.parametrize("fault", ["status:503", "status:500", "status:408", "short:100", "drop:1000"])
async def test_transient_faults_are_retried(fault_server, tmp_path, fault):
    srv = await fault_server()
    remote_shards(srv.root, 1)
    srv.script(NAME0, fault, fault)
    [res] = await fetch_shards([0], data_dir=tmp_path / "l", base_url=srv.url, retry=FAST)
    assert res.error is None
    assert res.attempts == 2
    assert srv.count(NAME0) == 3
    assert_same(srv.root, tmp_path / "l", 1)
    assert_clean(tmp_path / "l")


async def test_429_obeys_retry_after(fault_server, tmp_path):
    srv = await fault_server()
    remote_shards(srv.root, 1)
    srv.script(NAME0, "429:1")
    t0 = time.monotonic()
    [res] = await fetch_shards([0], data_dir=tmp_path / "l", base_url=srv.url, retry=FAST)
    assert res.error is None and res.attempts == 0  # a wait the server named is not a failed attempt
    assert time.monotonic() - t0 >= 0.95  # waited as told, not FAST's 0.05 s backoff


async def test_client_errors_fail_at_once(fault_server, tmp_path):
    srv = await fault_server()
    remote_shards(srv.root, 2)
    srv.script(NAME0, "status:404")
    r0, r1 = await fetch_shards([0, 1], data_dir=tmp_path / "l", base_url=srv.url, retry=FAST)
    assert isinstance(r0.error, HTTPStatusError) and r0.error.status == 404
    assert NAME0 in str(r0.error) and srv.url in str(r0.error) and "404" in str(r0.error)
    assert srv.count(NAME0) == 1  # never retried
    assert r1.error is None  # the other shard is unaffected
    assert not (tmp_path / "l" / NAME0).exists()
    assert_clean(tmp_path / "l")


@pytest.mark.parametrize("status", [403, 401])
async def test_an_access_refusal_stops_the_whole_fetch_with_one_error(fault_server, tmp_path, status):
    """401/403 is the source refusing this client: every file of that host fails with the same error."""
    srv = await fault_server()
    remote_shards(srv.root, 3)
    srv.script(NAME0, f"status:{status}")
    results = await fetch_shards([0, 1, 2], data_dir=tmp_path / "l", base_url=srv.url, retry=FAST, workers=1)
    errors = {r.error for r in results}
    assert len(errors) == 1 and isinstance(r0 := errors.pop(), AccessDenied) and r0.status == status
    assert srv.url in str(r0) and str(status) in str(r0) and "the fetch stopped at the first refusal" in str(r0)
    assert srv.count(NAME0) == 1 and srv.count(shard_name(1)) == srv.count(shard_name(2)) == 0
    assert not list((tmp_path / "l").glob("*.parquet"))
    assert_clean(tmp_path / "l")


async def test_missing_file_is_404_not_retried(fault_server, tmp_path):
    srv = await fault_server()
    [res] = await fetch_shards([7], data_dir=tmp_path / "l", base_url=srv.url, retry=FAST)
    assert isinstance(res.error, HTTPStatusError) and res.error.status == 404
    assert srv.count(shard_name(7)) == 1


async def test_retries_exhausted_keeps_partial_for_resume(fault_server, tmp_path):
    srv = await fault_server()
    remote_shards(srv.root, 1, mb=3)
    srv.script(NAME0, *["drop:500000"] * 3)
    local = tmp_path / "l"
    policy = RetryPolicy(attempts=3, base=0.01, cap=0.05, read_timeout=1.0)
    [res] = await fetch_shards([0], data_dir=local, base_url=srv.url, retry=policy)
    assert isinstance(res.error, RetriesExhausted) and res.error.attempts == 3
    assert "rerun to resume" in str(res.error)
    assert not (local / NAME0).exists()
    assert part_path(local / NAME0).exists() and state_path(local / NAME0).exists()
    # the rerun continues with a Range request instead of starting again
    size = (srv.root / NAME0).stat().st_size
    sent_before = srv.bytes_sent[NAME0]
    [res] = await fetch_shards([0], data_dir=local, base_url=srv.url, retry=FAST)
    assert res.error is None
    last = srv.requests[-1]
    assert last.range is not None and int(last.range.split("=")[1].split("-")[0]) > 0
    assert srv.bytes_sent[NAME0] - sent_before < size
    assert_same(srv.root, local, 1)
    assert_clean(local)


async def test_dropped_connection_resumes_by_range(fault_server, tmp_path):
    srv = await fault_server()
    remote_shards(srv.root, 1, mb=3)
    size = (srv.root / NAME0).stat().st_size
    srv.script(NAME0, f"drop:{size // 2}")
    [res] = await fetch_shards([0], data_dir=tmp_path / "l", base_url=srv.url, workers=1, retry=FAST)
    assert res.error is None and res.attempts == 1
    second = [r for r in srv.requests if r.method == "GET"][1]
    assert second.range is not None and int(second.range.split("=")[1].split("-")[0]) > size // 4
    assert srv.bytes_sent[NAME0] < 1.5 * size  # not downloaded twice
    assert_same(srv.root, tmp_path / "l", 1)


async def test_stalled_body_times_out_and_retries(fault_server, tmp_path):
    srv = await fault_server()
    remote_shards(srv.root, 1)
    srv.script(NAME0, "stall:100")
    policy = RetryPolicy(attempts=3, base=0.01, cap=0.05, read_timeout=0.5)
    [res] = await fetch_shards([0], data_dir=tmp_path / "l", base_url=srv.url, retry=policy)
    assert res.error is None and res.attempts == 1
    assert_same(srv.root, tmp_path / "l", 1)


@pytest.mark.parametrize("redirect", [False, True])
async def test_flipped_byte_is_caught_by_sha256(fault_server, tmp_path, redirect):
    srv = await fault_server(redirect=redirect)
    remote_shards(srv.root, 1)
    srv.script(NAME0, "flip:1000")
    [res] = await fetch_shards([0], data_dir=tmp_path / "l", base_url=srv.url, retry=FAST)
    assert res.error is None and res.attempts == 1
    assert srv.count(NAME0) == 2
    assert_same(srv.root, tmp_path / "l", 1)
    assert_clean(tmp_path / "l")


async def test_hub_redirect_followed(fault_server, tmp_path):
    srv = await fault_server(redirect=True)
    remote_shards(srv.root, 3)
    results = await fetch_shards(range(3), data_dir=tmp_path / "l", base_url=srv.url, retry=FAST)
    assert all(r.error is None for r in results)
    assert_same(srv.root, tmp_path / "l", 3)


async def test_tail_is_split_across_idle_connections(fault_server, tmp_path):
    srv = await fault_server(rate=8_000_000)
    remote_shards(srv.root, 1, mb=6)
    [res] = await fetch_shards([0], data_dir=tmp_path / "l", base_url=srv.url, workers=4, retry=FAST,
                               min_split=512 * 1024)
    assert res.error is None and res.attempts == 0
    gets = [r for r in srv.requests if r.method == "GET"]
    assert len(gets) >= 4  # the idle workers each took a byte range of the one shard
    assert sum(r.range is not None for r in gets) >= 3
    size = (srv.root / NAME0).stat().st_size  # ~every byte once (a split wastes what was in flight)
    assert srv.bytes_sent[NAME0] < 1.10 * size, srv.bytes_sent[NAME0] / size
    assert_same(srv.root, tmp_path / "l", 1)


async def test_running_sha256_counts_only_bytes_it_hashed(tmp_path):
    """Regression: range B's write, started before range A completed the prefix, was not hashed."""
    import hashlib

    from nanostream.fetch.jobs import Job, Segment
    from nanostream.fetch.partial import Disk

    disk, tasks = Disk(), []
    job = Job(DataFile(NAME0, None, url="http://127.0.0.1:1/x"), tmp_path / NAME0, "http://127.0.0.1:1/x", disk,
              FAST, lambda c: tasks.append(asyncio.ensure_future(c)))
    await job.learned(100, "0" * 64, None)
    a, b = Segment(0, 60), Segment(60, 100)
    job.segments = [a, b]
    hb = job.hasher_for(b)  # B flushes first: its bytes do not continue the prefix
    ha = job.hasher_for(a)
    assert hb is None and ha is job.hasher
    ha.update(b"a" * 60)
    job.wrote(a, 60, hashed=True)  # A completes while B's write is still in flight
    job.wrote(b, 40, hashed=hb is not None)
    assert job.hashed == 60 and job.digest() is None  # the whole file must be hashed from disk
    assert job.hasher.hexdigest() == hashlib.sha256(b"a" * 60).hexdigest()
    await asyncio.gather(*tasks)
    disk.close()


async def test_split_ranges_never_fail_verification(fault_server, tmp_path):
    srv = await fault_server(rate=6_000_000)
    remote_shards(srv.root, 3, mb=3)
    results = await fetch_shards(range(3), data_dir=tmp_path / "l", base_url=srv.url, workers=8, retry=FAST,
                                 min_split=128 * 1024)
    assert [(r.error, r.attempts) for r in results] == [(None, 0)] * 3
    assert sum(r.range is not None for r in srv.requests) >= 5
    assert_same(srv.root, tmp_path / "l", 3)


async def test_many_idle_workers_split_fresh_files_unthrottled(fault_server, tmp_path):
    """Regression: with far more workers than files on an unthrottled link, idle workers split a file's
    first range as soon as its size is known, before its part file exists; every file still arrives."""
    srv = await fault_server()
    remote_shards(srv.root, 12, mb=0.5)
    for k in range(3):
        local = tmp_path / f"l{k}"
        results = await fetch_shards(range(12), data_dir=local, base_url=srv.url, workers=64, retry=FAST,
                                     min_split=64 * 1024)
        assert [r.error for r in results] == [None] * 12
        assert_same(srv.root, local, 12)
        assert_clean(local)


async def test_two_fetchers_download_each_shard_once(fault_server, tmp_path):
    srv = await fault_server(rate=4_000_000)
    remote_shards(srv.root, 4, mb=1)
    local = tmp_path / "l"
    a, b = await asyncio.gather(
        fetch_shards(range(4), data_dir=local, base_url=srv.url, workers=2, retry=FAST),
        fetch_shards(reversed(range(4)), data_dir=local, base_url=srv.url, workers=2, retry=FAST),
    )
    assert all(r.error is None for r in [*a, *b])
    for i in range(4):
        assert srv.count(shard_name(i)) == 1
    assert_same(srv.root, local, 4)
    assert_clean(local)


async def test_verify_refetches_a_bad_local_copy(fault_server, tmp_path):
    srv = await fault_server()
    remote_shards(srv.root, 2)
    local = tmp_path / "l"
    await fetch_shards(range(2), data_dir=local, base_url=srv.url, retry=FAST)
    data = bytearray((local / NAME0).read_bytes())
    data[500] ^= 0xFF
    (local / NAME0).write_bytes(bytes(data))
    results = await fetch_shards(range(2), data_dir=local, base_url=srv.url, retry=FAST, verify=True)
    assert results[0].error is None and not results[0].skipped
    assert results[1].skipped
    assert srv.count(NAME0) == 2 and srv.count(shard_name(1)) == 1  # the good one only got a HEAD
    assert srv.count(shard_name(1), "HEAD") == 1
    assert_same(srv.root, local, 2)


async def test_fetcher_api_dedupes_and_cancels_cleanly(fault_server, tmp_path):
    srv = await fault_server(rate=1_000_000)
    remote_shards(srv.root, 2, mb=2)
    local = tmp_path / "l"
    file0, file1 = (DataFile(shard_name(i), None, url=f"{srv.url}/{shard_name(i)}") for i in range(2))
    async with Fetcher(local, workers=2, retry=FAST, min_split=64 << 20) as f:
        r1, r2 = await asyncio.gather(f.fetch(file0), f.fetch(file0))
        assert r1 is r2 and srv.count(NAME0) == 1
        task = asyncio.create_task(f.fetch(file1))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not (local / shard_name(1)).exists()
    assert part_path(local / shard_name(1)).exists()  # kept for resume
    ours = [t for t in asyncio.all_tasks() if "Fetcher" in t.get_coro().__qualname__]
    assert ours == []


# -- the CLI in subprocesses ------------------------------------------------------------------
def nanostream(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanostream.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60, **kw)


@pytest.mark.parametrize("args, needle", [
    (["--workers", "0"], "--workers"),
    (["--workers", "-3"], "--workers"),
    (["-n", "-2"], "-n"),
    (["--dataset", "nope"], "unknown dataset"),
    (["--base-url", "ftp://example.com/x"], "not an http"),
    (["--base-url", "http://127.0.0.1:9", "--data-dir", "/proc/nope/x"], "cannot be created"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    out = nanostream("fetch", *args, env={"NANOSTREAM_BASE_DIR": str(tmp_path)})
    assert out.returncode == 2, out
    assert needle in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


async def test_cli_failure_names_shard_and_exits_1(fault_server, tmp_path):
    srv = await fault_server()
    remote_shards(srv.root, 3)
    (srv.root / shard_name(1)).unlink()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nanostream.cli", "fetch", "-n", "2", "--max-shard", "2", "--base-url", srv.url,
        "--data-dir", str(tmp_path / "l"), "--retries", "2", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 1
    assert f"failed {shard_name(1)}" in err.decode() and "404" in err.decode()
    assert "2/3 shards present" in out.decode() and "Traceback" not in err.decode()
    assert (tmp_path / "l" / ".nanostream.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_killed_fetch_leaves_no_partial_final_file_and_resumes(tmp_path, sig, sigint_default):
    remote = tmp_path / "remote"
    remote_shards(remote, 3, mb=2)
    srv = subprocess.Popen([sys.executable, str(Path(__file__).parent / "servers.py"), str(remote),
                            "--rate", "1500000"], stdout=subprocess.PIPE, text=True)
    try:
        url = srv.stdout.readline().strip()
        local = tmp_path / "local"
        args = [sys.executable, "-m", "nanostream.cli", "fetch", "-n", "2", "--max-shard", "2",
                "--base-url", url, "--data-dir", str(local), "--workers", "3"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(local.glob(".nanostream.*.part")):
            time.sleep(0.05)
        time.sleep(0.4)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        if sig != signal.SIGKILL:  # Ctrl-C and SIGTERM: state saved, one line, 130 / 143
            assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err
            assert "Traceback" not in err and "kept in" in err
            assert len([x for x in err.splitlines() if x.startswith("nanostream:")]) == 1, err
            assert any(local.glob(".nanostream.*.state"))
        finals = [p for p in local.iterdir() if p.name.startswith("shard_")]
        for p in finals:  # anything with a final name is complete
            assert p.read_bytes() == (remote / p.name).read_bytes()
        assert len(finals) < 3
        assert any(local.glob(".nanostream.*.part"))
        rerun = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert rerun.returncode == 0, rerun.stderr
        assert_same(remote, local, 3)
        assert_clean(local)
    finally:
        srv.terminate()
        srv.wait(timeout=10)
        srv.stdout.close()


class ServerProcess:
    """tests/servers.py in a subprocess; ``stop()`` returns the body bytes it sent per file."""

    def __init__(self, root: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "servers.py"), str(root), *args],
                                     stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()

    def stop(self) -> dict[str, int]:
        import json

        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=20)
        line = [x for x in out.splitlines() if x.startswith("bytes_sent ")]
        return json.loads(line[-1].split(" ", 1)[1]) if line else {}


def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def test_kill9_at_many_moments_never_publishes_a_hole_and_refetches_little(tmp_path):
    """Against a server with no sha256 (opaque ETag, like nginx or S3) kill -9 fetch again and again,
    several times in a shard's first 100 ms: the clean rerun's shards are byte-identical and the
    server sent at most 1.15x the data (the state follows the data within one write)."""
    remote = tmp_path / "remote"
    n = 9
    remote.mkdir()
    paths = [make_big_shard(remote / shard_name(i), i, 1.0) for i in range(n)]
    total = sum(p.stat().st_size for p in paths)
    srv = ServerProcess(remote, "--rate", "1500000", "--no-sha256")
    local = tmp_path / "local"
    args = [sys.executable, "-m", "nanostream.cli", "fetch", "-n", str(n - 1), "--max-shard", str(n - 1),
            "--base-url", srv.url, "--data-dir", str(local), "--workers", "4", "--quiet"]
    try:
        for delay in (0.01, 0.05, 0.09, 0.3, 0.6, 0.03, 0.9):
            before = {p.name for p in local.glob(".nanostream.*.part")} if local.exists() else set()
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            # a moment after a new shard's first bytes arrive (a part file appears)
            wait_for(lambda b=before, pr=proc: pr.poll() is not None
                     or {p.name for p in local.glob(".nanostream.*.part")} - b)
            time.sleep(delay)
            proc.kill()
            proc.communicate(timeout=30)
            for p in local.glob("shard_*.parquet"):  # anything with a final name is complete
                assert p.read_bytes() == (remote / p.name).read_bytes(), p.name
        rerun = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
    finally:
        sent = srv.stop()
    assert_same(remote, local, n)
    assert_clean(local)
    served = sum(sent.values())
    print(f"kill -9 x7 then rerun: server sent {served / total:.3f}x the data")
    assert served <= 1.15 * total, f"served {served / total:.2f}x the data"


async def test_state_never_claims_a_byte_not_written(fault_server, tmp_path):
    """Cancel fetches at many moments; every range the state file says is done holds the right bytes."""
    import random

    remote = tmp_path / "remote"
    remote.mkdir()
    make_big_shard(remote / NAME0, 0, 2.0)
    srv = await fault_server(rate=4e6, no_sha256=True)
    local = tmp_path / "l"
    want = (remote / NAME0).read_bytes()
    rng = random.Random(7)
    checked = 0
    for _ in range(8):
        task = asyncio.ensure_future(fetch_shards([0], data_dir=local, base_url=srv.url, workers=3, retry=FAST,
                                                  min_split=64 << 10))
        await asyncio.sleep(rng.uniform(0.0, 0.12))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.05)  # a thread still opening a file when cancelled hands it back
        left = [f.path for f in psutil.Process().open_files() if f.path.startswith(str(local))]
        assert not left, left  # cancelled at any point: no descriptor or lock left open
        ours = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.startswith(("Fetcher.", "Job."))]
        assert not ours, ours  # nor a task: a state saver outliving the Fetcher's disk threads was a bug
        if (local / NAME0).exists():
            break
        if not state_path(local / NAME0).exists():
            continue
        loaded = PartState.load(local / NAME0, f"{srv.url}/{NAME0}")
        assert loaded is not None
        state = loaded[0]
        data = part_path(local / NAME0).read_bytes()
        assert len(data) == state.size == len(want)
        holes, pos = [], 0
        for start, end in sorted(state.missing):
            holes.append((pos, start))
            pos = end
        holes.append((pos, state.size))
        for start, end in holes:  # every claimed range is exactly the remote's bytes
            assert data[start:end] == want[start:end]
        checked += 1
    assert checked >= 3
    [res] = await fetch_shards([0], data_dir=local, base_url=srv.url, retry=FAST)
    assert res.error is None and (local / NAME0).read_bytes() == want


@pytest.mark.parametrize("who", ["endpoint", "opt-in", "other-host"])
async def test_hf_token_goes_only_to_the_hub_host_and_is_never_printed(tmp_path, who, aiohttp_server):
    """HF_TOKEN reaches HF_ENDPOINT's host or a NANOSTREAM_TOKEN_HOSTS host, never another --base-url."""
    from aiohttp import web

    from nanostream.serve.server import make_app

    remote = tmp_path / "remote"
    remote_shards(remote, 1)
    seen: list[str | None] = []

    @web.middleware
    async def record_auth(request, handler):
        seen.append(request.headers.get("Authorization"))
        return await handler(request)

    app = make_app(remote)
    app.middlewares.append(record_auth)
    port = (await aiohttp_server(app)).port
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_TOKEN": "hf_s3cret"}
    env.pop("NANOSTREAM_TOKEN_HOSTS", None)
    env.pop("HF_ENDPOINT", None)
    if who == "endpoint":
        env["HF_ENDPOINT"] = url
    elif who == "opt-in":
        env["NANOSTREAM_TOKEN_HOSTS"] = f"example.org, 127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nanostream.cli", "-v", "fetch", "-n", "0", "--max-shard", "0",
        "--base-url", url, "--data-dir", str(tmp_path / "l"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    expected = None if who == "other-host" else "Bearer hf_s3cret"
    assert seen and all(h == expected for h in seen)
    assert b"s3cret" not in out + err
    assert b"s3cret" not in (tmp_path / "l" / ".nanostream.json").read_bytes()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_cli_loop_switch_and_plain_progress_lines(fault_server, tmp_path, loop):
    srv = await fault_server()
    remote_shards(srv.root, 2)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nanostream.cli", "fetch", "-n", "1", "--max-shard", "1", "--base-url", srv.url,
        "--data-dir", str(tmp_path / "l"), "--loop", loop, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert f"{loop} loop" in err.decode()
    assert "\r" not in err.decode()  # not a TTY: no progress bar redraws
    assert "2/2 shards present" in out.decode()
    assert_same(srv.root, tmp_path / "l", 2)


def test_line_progress_prints_plain_periodic_lines():
    import io

    from nanostream.fetch.outcomes import ShardResult
    from nanostream.progress import LineProgress, make_progress

    buf = io.StringIO()
    p = LineProgress(3, buf, interval=0.0)
    p.add_total(3_000_000)
    p.advance(1_000_000)
    p.shard_done(ShardResult(0, Path("x"), 1_000_000, name="shard_00000.parquet"))
    lines = buf.getvalue().splitlines()
    assert lines and lines[-1].startswith("fetch: 1/3 shards, 0 failed, 1.0/3.0 MB")
    assert type(make_progress(3, stream=io.StringIO())) is LineProgress
    assert make_progress(3, quiet=True).__class__.__name__ == "NullProgress"


@pytest.mark.parametrize("columns", [100, 0])
async def test_cli_progress_bar_on_a_tty(fault_server, tmp_path, columns):
    import pty

    srv = await fault_server(rate=2_000_000)
    remote_shards(srv.root, 2, mb=1)
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))  # 0: size unknown
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nanostream.cli", "fetch", "-n", "1", "--max-shard", "1", "--base-url",
            srv.url, "--data-dir", str(tmp_path / "l"), stdout=asyncio.subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = -1
        out, _ = await proc.communicate()
        screen = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            screen += data
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    assert proc.returncode == 0
    text = screen.decode(errors="replace")
    assert "\r" in text and "shards 2/2 failed 0" in text and "B/s" in text  # a live tqdm bar
    assert "2/2 shards present" in out.decode()


async def test_html_200_is_retried_with_backoff_and_named(tmp_path, aiohttp_server):
    """A captive portal or a wrong URL answering 200 text/html: each attempt is one request after a
    backoff, no part file is created from its size, and the error says what came back."""
    from aiohttp import web

    hits: list[float] = []

    async def portal(request):
        hits.append(asyncio.get_running_loop().time())
        return web.Response(text="<!DOCTYPE html><html>Sign in to the Wi-Fi</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}", portal)
    url = f"http://127.0.0.1:{(await aiohttp_server(app)).port}"
    policy = RetryPolicy(attempts=4, base=0.05, cap=0.05, connect_timeout=5, read_timeout=1.0)
    [res] = await fetch_shards([0], data_dir=tmp_path / "l", base_url=url, retry=policy)
    assert isinstance(res.error, RetriesExhausted) and res.attempts == 4 and len(hits) == 4
    assert "text/html" in str(res.error) and "<!DOCTYPE html>" in str(res.error)
    assert "resume" not in str(res.error)
    assert not list((tmp_path / "l").glob(".nanostream.*.part"))


async def test_token_is_not_carried_across_a_redirect_to_another_host(tmp_path, aiohttp_server):
    """The Hub answers 302 to its CDN: the token goes to the Hub's host, never to the CDN's."""
    from aiohttp import web

    from nanostream.serve.server import make_app

    remote = tmp_path / "remote"
    remote_shards(remote, 1)
    seen: dict[str, list] = {"hub": [], "cdn": []}

    def recorder(who):
        @web.middleware
        async def record(request, handler):
            seen[who].append(request.headers.get("Authorization"))
            return await handler(request)
        return record

    cdn = make_app(remote)
    cdn.middlewares.append(recorder("cdn"))
    cdn_url = f"http://127.0.0.2:{(await aiohttp_server(cdn, host='127.0.0.2')).port}"

    async def hub(request):
        seen["hub"].append(request.headers.get("Authorization"))
        raise web.HTTPFound(f"{cdn_url}/{request.match_info['name']}")

    hub_app = web.Application()
    hub_app.router.add_get("/{name}", hub)
    port = (await aiohttp_server(hub_app)).port
    [res] = await fetch_shards([0], data_dir=tmp_path / "l", base_url=f"http://127.0.0.1:{port}",
                               retry=FAST, token="hf_s3cret", token_hosts={f"127.0.0.1:{port}"})
    assert res.error is None, res.error
    assert seen["hub"] and all(h == "Bearer hf_s3cret" for h in seen["hub"])
    assert seen["cdn"] and all(h is None for h in seen["cdn"])
