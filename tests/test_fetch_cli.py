"""``nanostream fetch`` as a user meets it: no network, a folder from another source, exit codes, lines."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

from nanostream.fetch import fetch_shards
from nanostream.retry import RetryPolicy
from nanostream.shards import read_record, shard_name

from datagen import make_shards


def nanostream(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanostream.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=90)


async def anano(*args: str) -> subprocess.CompletedProcess:
    """``nanostream`` from an async test: the loop keeps serving the in-process servers meanwhile."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "nanostream.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_host_fails_fast_with_one_line_and_a_true_summary(tmp_path):
    """Nothing listens: every shard fails at once after a bounded wait (8 s), one line names the host,
    and the summary neither claims 0 retries nor suggests resuming what never started."""
    url = f"http://127.0.0.1:{free_port()}"
    out = nanostream("fetch", "-n", "6", "--max-shard", "6", "--base-url", url, "--data-dir", str(tmp_path / "d"),
                     "--quiet")
    assert out.returncode == 1, out
    failed = [x for x in out.stderr.splitlines() if x.startswith("nanostream: failed")]
    assert len(failed) == 1 and "(7 shards)" in failed[0] and "cannot connect to 127.0.0.1" in failed[0], out.stderr
    assert "nothing was downloaded" in failed[0] and "resume" not in out.stderr
    assert "0/7 shards present" in out.stdout and "7 failed" in out.stdout
    assert " 0 retries" not in out.stdout and "Traceback" not in out.stderr


async def test_unresolvable_host_fails_every_shard_with_one_error(tmp_path):
    policy = RetryPolicy(attempts=8, base=0.01, cap=0.05, unreachable_after=0.3)
    results = await fetch_shards(range(5), data_dir=tmp_path, base_url="http://no-such-host.invalid",
                                 retry=policy)
    errors = {str(r.error) for r in results}
    assert len(errors) == 1 and all(r.error is not None for r in results)
    assert "cannot resolve host 'no-such-host.invalid'" in errors.pop()
    assert not list(tmp_path.glob(".nanostream.*.part"))


async def test_folder_from_another_source_is_refused_unless_verify(fault_server, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_shards(a, 3, record=False)
    make_shards(b, 3, record=False)
    (b / shard_name(1)).write_bytes((a / shard_name(2)).read_bytes())  # B differs from A in shard 1
    srv_a, srv_b = await fault_server(a), await fault_server(b)
    local = tmp_path / "local"
    first = ["fetch", "-n", "2", "--max-shard", "2", "--data-dir", str(local), "--quiet"]
    assert (await anano(*first, "--base-url", srv_a.url)).returncode == 0
    out = await anano(*first, "--base-url", srv_b.url)
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1 and srv_a.url in out.stderr and "--verify" in out.stderr
    assert read_record(local).base_url == srv_a.url  # the record was not rewritten
    out = await anano(*first, "--base-url", srv_b.url, "--verify")
    assert out.returncode == 0, out.stderr
    assert read_record(local).base_url == srv_b.url
    for i in range(3):
        assert (local / shard_name(i)).read_bytes() == (b / shard_name(i)).read_bytes()
