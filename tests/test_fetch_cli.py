"""``nanostream fetch`` as a user meets it: no network, a folder from another source, exit codes, lines."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import pytest

from nanostream.fetch.many import fetch_shards
from nanostream.retry import RetryPolicy
from nanostream.shards import shard_name
from nanostream.sources.catalog import read_catalog
from nanostream.sources.resolve import url_prefix

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
    """Nothing listens: every shard fails at once after a bounded wait (8 s), one line names the cause,
    no progress line counts part of the failures, and the summary neither claims 0 retries nor
    suggests resuming what never started."""
    url = f"http://127.0.0.1:{free_port()}"
    out = nanostream("fetch", "-n", "6", "--max-shard", "6", "--base-url", url, "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 1, out
    failed = [x for x in out.stderr.splitlines() if x.startswith("nanostream: failed")]
    assert len(failed) == 1 and "(7 shards)" in failed[0] and "cannot connect to 127.0.0.1" in failed[0], out.stderr
    assert "nothing was downloaded" in failed[0] and "resume" not in out.stderr
    assert sum("cannot connect" in x for x in out.stderr.splitlines()) == 1, out.stderr  # the cause, once
    assert [x.split(":")[0] for x in out.stderr.splitlines()] == ["fetch", "fetch", "nanostream"], out.stderr
    assert "0/7 shards present" in out.stdout and "7 failed" in out.stdout and len(out.stdout.splitlines()) == 1
    assert " 0 retries" not in out.stdout and "Traceback" not in out.stderr
    print(f"network down:\n{out.stderr}{out.stdout}")


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
    assert url_prefix(read_catalog(local)) == srv_a.url  # the record was not rewritten
    out = await anano(*first, "--base-url", srv_b.url, "--verify")
    assert out.returncode == 0, out.stderr
    assert url_prefix(read_catalog(local)) == srv_b.url
    for i in range(3):
        assert (local / shard_name(i)).read_bytes() == (b / shard_name(i)).read_bytes()


# -- catalog sources: hf:// through the CLI, and every bad input of issue 11 -------------------
def hub_files(folder, names):
    from datagen import write_shard

    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_shard(folder / name, i, 2, 8)


async def hubcli(hub, *args: str, token: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub.url}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = hub.token
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "nanostream.cli", "fetch", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def test_hub_repo_is_fetched_pinned_verified_and_kept_at_its_commit(tmp_path):
    import json

    from hubserver import HubServer

    names = ["data/train/part-00000.parquet", "data/train/part-00001.parquet", "data/validation/v-0.parquet",
             "data/README.md"]
    hub_files(tmp_path / "v1", names[:3])
    (tmp_path / "v1" / names[3]).write_text("x")
    hub_files(tmp_path / "v2", ["data/train/part-00009.parquet", "data/validation/v-0.parquet"])
    local = tmp_path / "local"
    async with HubServer(page_size=2) as hub:
        sha = hub.add_repo("org/corpus", tmp_path / "v1")
        out = await hubcli(hub, "--dataset", "hf://datasets/org/corpus/data", "-n", "-1", "--data-dir", str(local))
        assert out.returncode == 0, out.stderr
        assert "verification: sha256 for 3 files" in out.stderr and f"at commit {sha[:12]}" in out.stderr
        for name in names[:3]:
            assert (local / name.removeprefix("data/")).read_bytes() == (tmp_path / "v1" / name).read_bytes()
        record = json.loads((local / ".nanostream.json").read_text())
        assert record["revision"] == sha and len(record["files"]) == 3
        hub.commit("org/corpus", tmp_path / "v2")  # main moves on; the folder stays at its commit
        asked = len(hub.requests)
        again = await hubcli(hub, "--dataset", "hf://datasets/org/corpus/data", "-n", "-1", "--data-dir", str(local))
        assert again.returncode == 0 and len(hub.requests) == asked, again.stderr  # no listing, no download
        assert "3/3 shards present" in again.stdout
        # --verify checks present files against the recorded sha256, without asking the Hub
        target = local / "train/part-00001.parquet"
        good = target.read_bytes()
        target.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
        fixed = await hubcli(hub, "--dataset", "hf://datasets/org/corpus/data", "-n", "-1", "--data-dir", str(local),
                             "--verify")
        assert fixed.returncode == 0 and target.read_bytes() == good, fixed.stderr
        # a file that differs from the listing at download time: an error, nothing under its name
        record["files"][0]["size"] += 1
        (local / ".nanostream.json").write_text(json.dumps(record))
        (local / "train/part-00000.parquet").unlink()
        bad = await hubcli(hub, "--dataset", "hf://datasets/org/corpus/data", "-n", "-1", "--data-dir", str(local))
    assert bad.returncode == 1 and "changed at the source since it was listed" in bad.stderr, bad.stderr
    assert not (local / "train/part-00000.parquet").exists() and "Traceback" not in bad.stderr


async def test_every_bad_source_gets_one_line_exit_2_and_no_files(tmp_path):
    from hubserver import HubServer

    hub_files(tmp_path / "repo", ["train.parquet", "val.parquet"])
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    async with HubServer() as hub:
        hub.add_repo("org/ok", tmp_path / "repo")
        hub.add_repo("org/private", tmp_path / "repo", private=True)
        hub.add_repo("org/docs", tmp_path / "docs")
        cases = [
            (["--dataset", "gs://bucket/x/"], False, "unknown scheme 'gs'"),
            (["--dataset", "hf://datasets/org/missing"], True, "no such dataset repo"),
            (["--dataset", "hf://datasets/org/private"], False, "set HF_TOKEN"),
            (["--dataset", "hf://datasets/org/ok@v9"], False, "revision 'v9' does not exist"),
            (["--dataset", "hf://datasets/org/docs"], False, "no *.parquet files"),
            (["--dataset", "hf://datasets/org/ok", "--include", "nope*"], False, "matching --include 'nope*'"),
            (["--dataset", "hf://datasets/org/ok", "--val", "x*"], False, "split 'validation' resolves to no file"),
            (["--dataset", "hf://datasets/org/ok", "--base-url", hub.url], False, "apply to the built-in"),
        ]
        for k, (args, token, needle) in enumerate(cases):
            folder = tmp_path / f"d{k}"
            out = await hubcli(hub, *args, "--data-dir", str(folder), token=token)
            assert out.returncode == 2 and needle in out.stderr, (args, out.stderr)
            assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
            assert not folder.exists() or not any(folder.iterdir()), list(folder.iterdir())


# -- the Hub's rate limits and gated repos, as it sends them (issue 16) -----------------------------
async def test_a_rate_limited_hub_fetch_waits_says_so_once_per_wait_and_succeeds(tmp_path):
    """429 with ``RateLimit: "api";r=0;t=1`` and no Retry-After, first on the listing, then on every file's
    download at once: each wait is t+1 s, told in one line however many files hit it; nothing is
    counted as a failed attempt (--retries 1 would otherwise give up)."""
    import time

    from hubserver import HubServer

    names = [f"data/train-{i}.parquet" for i in range(4)] + ["data/validation-0.parquet"]
    hub_files(tmp_path / "repo", names)
    async with HubServer() as hub:
        hub.add_repo("org/busy", tmp_path / "repo")
        hub.rate_limit(1, "api")
        hub.rate_limit(1, "resolvers")
        t0 = time.monotonic()
        out = await hubcli(hub, "--dataset", "hf://datasets/org/busy", "-n", "-1", "--workers", "5",
                           "--retries", "1", "--data-dir", str(tmp_path / "d"), "--quiet")
        seconds = time.monotonic() - t0
        limited = sum(s.path_qs.startswith("/datasets/") for s in hub.requests) - len(names)
    assert out.returncode == 0, out.stderr
    waits = [x for x in out.stderr.splitlines() if "rate-limited" in x]
    assert len(waits) == 2, out.stderr
    host = hub.url.split("://")[1]
    assert all(w.split(" WARNING ")[1].startswith(f"{host}: HTTP 429") and "waiting 2s" in w for w in waits)
    assert 'RateLimit "api";r=0;t=1, 500 requests per 300s' in waits[0]  # the listing's wait
    assert 'RateLimit "resolvers"' in waits[1]  # the downloads' wait
    assert limited >= 1 and "5/5 shards present" in out.stdout and ", 0 retries" in out.stdout
    for name in names:
        assert (tmp_path / "d" / name).read_bytes() == (tmp_path / "repo" / name).read_bytes()
    print(f"rate-limited fetch: {seconds:.1f}s, {limited} requests answered 429\n{out.stderr}{out.stdout}")


async def test_rate_limit_waits_are_bounded_by_their_own_budget(tmp_path):
    from nanostream.errors import RetriesExhausted
    from nanostream.sources.hub import hub_catalog

    from hubserver import HubServer

    hub_files(tmp_path / "repo", ["a.parquet", "b.parquet"])
    async with HubServer() as hub:
        hub.add_repo("org/busy", tmp_path / "repo")
        hub.rate_limit(60, "api")
        with pytest.raises(RetriesExhausted, match=r"still rate-limited after waiting 0s \(rate_limit_budget 1s\)"):
            await hub_catalog("hf://datasets/org/busy", endpoint=hub.url, retry=RetryPolicy(rate_limit_budget=1))
    assert sum("/api/" in s.path_qs for s in hub.requests) == 1  # a wait past the budget is not begun


async def test_a_gated_repo_fails_in_one_line_naming_its_page_exit_2_at_once(tmp_path):
    from hubserver import HubServer

    names = [f"data/train-{i}.parquet" for i in range(3)] + ["data/validation-0.parquet"]
    hub_files(tmp_path / "repo", names)
    async with HubServer() as hub:
        hub.add_repo("org/gated", tmp_path / "repo", gated=True)
        page = f"{hub.url}/datasets/org/gated"
        for k, token in enumerate((False, True)):
            before = len(hub.requests)
            out = await hubcli(hub, "--dataset", "hf://datasets/org/gated", "-n", "-1", "--workers", "1",
                               "--data-dir", str(tmp_path / f"d{k}"), token=token)
            resolves = [s for s in hub.requests[before:] if "/resolve/" in s.path_qs]
            assert out.returncode == 2, out
            lines = out.stderr.strip().splitlines()
            failed = [x for x in lines if x.startswith("nanostream: failed")]
            assert len(failed) == 1 and "(4 shards) hf://datasets/org/gated is a gated dataset" in failed[0], lines
            assert f"accept its terms at {page}" in failed[0] and "HF_TOKEN" in failed[0]
            assert ("HTTP 403 GatedRepo" if token else "HTTP 401 GatedRepo") in failed[0]
            assert len(lines) == 3 and "4 failed" in out.stdout and "Traceback" not in out.stderr, lines
            assert len(resolves) == 1  # one worker, one refusal: no other file was tried
            print(f"gated, {'a token without access' if token else 'no token'}:\n{out.stderr}{out.stdout}")
            assert not [p for p in (tmp_path / f"d{k}").rglob("*.parquet")]
        hub.repos["org/gated"].granted = True
        ok = await hubcli(hub, "--dataset", "hf://datasets/org/gated", "-n", "-1", "--data-dir",
                          str(tmp_path / "d0"), "--quiet", token=True)
    assert ok.returncode == 0 and "4/4 shards present" in ok.stdout, ok.stderr


async def test_the_same_refusal_for_many_files_is_one_line(fault_server, tmp_path):
    """A fatal status other than 401/403 is per file, but the same status and hint for several files is
    told in one line naming them."""
    from nanostream.fetch.command import failure_lines

    make_shards(tmp_path / "src", 2, record=False)
    srv = await fault_server(tmp_path / "src")
    results = await fetch_shards(range(5), data_dir=tmp_path / "d", base_url=srv.url,
                                 retry=RetryPolicy(attempts=2, base=0.01, cap=0.02))
    lines = failure_lines(results)
    assert [r.error is None for r in results] == [True, True, False, False, False]
    assert len(lines) == 1 and lines[0].startswith("nanostream: failed (3 shards) HTTP 404 Not Found"), lines
    assert lines[0].endswith(f"from {srv.url}: shard_00002.parquet, shard_00003.parquet, shard_00004.parquet")


async def test_the_hubs_commonest_layouts_fetch_and_stream(tmp_path):
    """data/train-00000-of-00001 + data/test-00000-of-00001 (validation: the test file, said once) and a
    one-file repo (train on it, no validation) both fetch, and stream("train") reads what was fetched."""
    import pyarrow.parquet as pq

    from nanostream.errors import DatasetError
    from nanostream.streaming.streams import iter_batches

    from hubserver import HubServer

    hub_files(tmp_path / "common", ["data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"])
    hub_files(tmp_path / "one", ["corpus.parquet"])
    async with HubServer() as hub:
        hub.add_repo("org/common", tmp_path / "common")
        hub.add_repo("org/one", tmp_path / "one")
        common = await hubcli(hub, "--dataset", "hf://datasets/org/common", "--data-dir", str(tmp_path / "c"))
        one = await hubcli(hub, "--dataset", "hf://datasets/org/one", "--data-dir", str(tmp_path / "o"))
    assert common.returncode == 0 and "1 train files + 1 validation file(s)" in common.stderr, common.stderr
    assert sum("using its 1 test file(s) for validation" in x for x in common.stderr.splitlines()) == 1
    assert one.returncode == 0 and "1 train files + 0 validation file(s)" in one.stderr, one.stderr
    assert sum("training on corpus.parquet; there is no validation split" in x
               for x in one.stderr.splitlines()) == 1
    texts = [t for b in iter_batches("train", data=tmp_path / "o") for t in b.texts]
    assert texts == pq.read_table(tmp_path / "one" / "corpus.parquet").column("text").to_pylist()
    train = [t for b in iter_batches("train", data=tmp_path / "c") for t in b.texts]
    assert train == pq.read_table(tmp_path / "common/data/train-00000-of-00001.parquet").column("text").to_pylist()
    with pytest.raises(DatasetError, match="--val GLOB"):
        iter_batches("val", data=tmp_path / "o")
