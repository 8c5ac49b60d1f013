"""cache_limit: a data folder's disk budget, shared by every process on it, against real loopback servers.

Ranks run as subprocesses (tests/cluster_worker.py, torchrun's environment set by hand, ``--sync``: a
gloo all-reduce after every batch, as DDP keeps ranks in step) while this process samples the
folder's bytes on disk every 10 ms. Readers are killed with SIGKILL mid-read; eviction runs through
``nanostream cache --prune-to`` in its own process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanostream import Ranks, ReadAhead, Source, stream
from nanostream.config import CacheLimit, Config, parse_cache_limit
from nanostream.errors import ConfigError
from nanostream.shards import shard_name
from nanostream.sources.catalog import numbered_catalog, write_catalog
from nanostream.streaming.cache.budget import FolderBudget, next_uses, victims
from nanostream.streaming.cache.claims import ClaimInfo, Needs
from nanostream.streaming.cache.usage import FolderScan, filesystem_bytes, folder_bytes

from datagen import doc_id, make_dense_shards, make_shards, write_shard
from servers import FaultServer

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("cluster_worker.py")
SHARDS, GROUPS, ROWS = 16, 8, 128  # dense shards of ~670 kB: 16 train (shard 16 is validation)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cache") / "remote"
    make_dense_shards(folder, SHARDS + 1, row_groups=GROUPS, rows=ROWS, filler=600)
    return folder


def data_bytes(remote: Path) -> int:
    return sum((remote / shard_name(s)).stat().st_size for s in range(SHARDS))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sampler:
    """The bytes of each folder on disk, sampled every 10 ms on a thread while ranks run."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders, self.peak, self.samples = folders, dict.fromkeys(folders, 0), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for f in self.folders:
                if f.exists():
                    self.peak[f] = max(self.peak[f], folder_bytes(f))
            self.samples += 1
            time.sleep(0.01)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def run_ranks(tmp: Path, url: str, tag: str, *, nodes: int = 1, per_node: int = 2,
                    args: tuple[str, ...] = (), sync: bool = True) -> list[dict]:
    """Every rank of ``nodes`` x ``per_node`` as a process in step with the others (``--sync``, unless
    ``sync=False``); node n reads into tmp/<tag>-n. Returns each rank's report."""
    out, world, port = tmp / f"{tag}-out", nodes * per_node, free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_RANK": str(rank % per_node), "LOCAL_WORLD_SIZE": str(per_node),
               "GROUP_RANK": str(rank // per_node), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        cmd = [sys.executable, str(WORKER), str(out), "--data-dir", str(tmp / f"{tag}-{rank // per_node}"),
               "--base-url", url, "--num-shards", str(SHARDS), "--max-shard", str(SHARDS), "--shuffle",
               *(["--sync"] if sync else []), *args]
        procs.append(await asyncio.create_subprocess_exec(*cmd, stderr=subprocess.PIPE, env=env))
    errs = [(await p.communicate())[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * world, "\n".join(errs)[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def docs_by_epoch(reports: list[dict]) -> Counter:
    return Counter((b[3], *d) for rep in reports for b in rep["batches"] for d in b[2])


def every_doc(epochs: int) -> Counter:
    return Counter({(e, s, g, r): 1 for e in range(epochs) for s in range(SHARDS) for g in range(GROUPS)
                    for r in range(ROWS)})


# -- the limit's forms --------------------------------------------------------------------------
def test_cache_limit_forms_and_env(tmp_path: Path) -> None:
    assert parse_cache_limit(None) is None
    assert parse_cache_limit(123) == CacheLimit(nbytes=123)
    assert parse_cache_limit("40GB") == CacheLimit(nbytes=40 * 10**9)
    assert parse_cache_limit("500MiB") == CacheLimit(nbytes=500 * 2**20)
    assert parse_cache_limit("1.5 kb") == CacheLimit(nbytes=1500)
    assert parse_cache_limit("75%").resolve(filesystem_bytes(tmp_path)) == int(
        0.75 * os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize)
    for bad in ("40 parsecs", "0%", "101%", "-5", "", True, 1.5, -1):
        with pytest.raises(ConfigError, match="cache_limit"):
            parse_cache_limit(bad)
    assert Config.from_env({"NANOSTREAM_CACHE_LIMIT": "2GiB"}).cache_limit == CacheLimit(nbytes=2 * 2**30)
    assert Config.from_env({}).cache_limit is None  # unbounded by default
    with pytest.raises(ConfigError, match="NANOSTREAM_CACHE_LIMIT"):
        Config.from_env({"NANOSTREAM_CACHE_LIMIT": "lots"})
    make_shards(tmp_path / "d", 3)
    s = stream("train", data=tmp_path / "d", config=Config.from_env({"NANOSTREAM_CACHE_LIMIT": "1GB"}))
    assert s.plan.cache_limit == 10**9  # the env var is the default ...
    assert stream("train", data=tmp_path / "d", cache_limit="2GB").plan.cache_limit == 2 * 10**9  # ... an arg wins


def test_belady_evicts_what_is_needed_latest_lru_what_was_read_longest_ago(tmp_path: Path) -> None:
    view = FolderScan(tmp_path, files=dict.fromkeys("abcde", 10), kinds={**dict.fromkeys("abcd", "data"), "e": "local"},
                      atime={"a": 1, "b": 2, "c": 3, "d": 4, "e": 0})
    me = ClaimInfo("me", needs=Needs({"x": 2, "a": 1, "b": 9}, {}, 0, "r"))
    other = ClaimInfo("other", needs=Needs({"b": 3, "c": 5}, {}, 0, "r"))  # needs b sooner than we do
    # never needed again (d) first, then the one needed latest (c at 5, b at min(9, 3) = 3, a at 1);
    # e is local-only: never a victim
    assert victims("belady", view, [me, other], {}, "x", now=True, me=me) == [
        ("d", False), ("c", False), ("b", False), ("a", False)]
    # a prefetch of x (needed at 2) evicts only files needed after it
    assert victims("belady", view, [me, other], {}, "x", now=False, me=me) == [
        ("d", False), ("c", False), ("b", False)]
    assert victims("belady", view, [me, other], {"c": 10}, "x", me=me)[:2] == [("d", False), ("b", False)]
    # a reader is on "h" now, which nobody needs again: a prefetch waits for it rather than evict d, needed at 30
    # (a demand does not wait)
    reading = ClaimInfo("reading", needs=Needs({"h": 0, "x": 2, "a": 10, "b": 20, "c": 25, "d": 30}, {"h": -1}))
    held = FolderScan(tmp_path, files={**view.files, "h": 10}, kinds={**view.kinds, "h": "data"}, atime=view.atime)
    assert victims("belady", held, [reading], {}, "x", now=False, me=reading) == []
    assert victims("belady", held, [reading], {}, "x", now=True, me=reading)[0] == ("d", False)
    soon = ClaimInfo("reading", needs=Needs(reading.needs.future, {"h": 5}))  # h is needed again before d: no wait
    assert victims("belady", held, [soon], {}, "x", now=False, me=soon)[0] == ("d", False)
    assert [v for v, _ in victims("lru", view, [me, other], {}, "x")] == ["a", "b", "c", "d"]


def test_no_eviction_takes_a_file_a_reader_needs_sooner(tmp_path: Path) -> None:
    """Places are on the run's clock: a reader behind (at 10) needs a and b before the leader (at 40) needs
    x. The leader's prefetch and demand both leave them, its demand until that reader stops moving
    (``behind=[]``); the reader behind may evict the leader's next files. A reader of another run counts
    from its own place."""
    view = FolderScan(tmp_path, files=dict.fromkeys("abcn", 10), kinds=dict.fromkeys("abcn", "data"),
                      atime=dict.fromkeys("abcn", 0))
    leader = ClaimInfo("leader", needs=Needs({"x": 40, "c": 44, "n": 90}, {}, 40, "r"))
    behind = ClaimInfo("behind", needs=Needs({"a": 12, "b": 16, "x": 40, "c": 44, "n": 90}, {}, 10, "r"))
    claims = [leader, behind]
    assert victims("belady", view, claims, {}, "x", now=False, me=leader) == [("n", False), ("c", False)]
    assert victims("belady", view, claims, {}, "x", now=True, me=leader) == [("n", False), ("c", False)]
    assert victims("belady", view, claims, {}, "x", now=True, me=leader, behind=[]) == [
        ("n", False), ("c", False), ("b", False), ("a", False)]  # that reader stalled: Belady's order
    assert victims("belady", view, claims, {}, "b", now=True, me=behind) == [
        ("n", False), ("c", False), ("a", False)]  # b is needed at 16, later than a: a goes last
    other_run = ClaimInfo("val", needs=Needs({"a": 1005, "b": 1001}, {}, 1000, "v"))  # b 1 from its place
    assert victims("belady", view, [leader, other_run], {}, "x", now=False, me=leader) == [
        ("n", False), ("a", False), ("c", False), ("b", False)]  # on the leader's clock: a 45, c 44, b 41, x 40


places = st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 60), max_size=8)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(mine=places, at=st.integers(0, 60), others=st.lists(st.tuples(places, st.integers(0, 60)), max_size=3),
       rel=st.sampled_from("abcdefgh"))
def test_eviction_never_takes_a_file_needed_before_the_one_it_makes_room_for(mine, at, others, rel) -> None:
    """For any readers of one run: a prefetch evicts only files every reader needs after the prefetched one;
    a demand (needed at our own place) only files no other reader needs before that place."""
    me = ClaimInfo("me", needs=Needs({**{f: max(p, at) for f, p in mine.items()}, rel: at}, {}, at, "r"))
    peers = [ClaimInfo(f"p{k}", needs=Needs({f: max(p, a) for f, p in fut.items()}, {}, a, "r"))
             for k, (fut, a) in enumerate(others)]
    names = [f for f in "abcdefgh" if f != rel]
    view = FolderScan(Path("folder"), files=dict.fromkeys(names, 10), kinds=dict.fromkeys(names, "data"),
                      atime=dict.fromkeys(names, 0))  # what victims reads of a folder: no disk needed
    nxt = next_uses([me, *peers], me.needs)
    for victim, _ in victims("belady", view, [me, *peers], {}, rel, now=False, me=me):
        assert nxt.get(victim, math.inf) > nxt[rel]
    theirs = next_uses(peers, me.needs)
    for victim, _ in victims("belady", view, [me, *peers], {}, rel, now=True, me=me):
        assert theirs.get(victim, math.inf) >= at


async def test_each_reader_publishes_its_place_on_the_runs_clock_before_and_after_the_settlement(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks of one run from an empty folder, shards of unequal row-group counts, 3 epochs: until epoch 0
    settles its places are estimated, yet every place a reader publishes is its own on the run's clock (the
    settled lengths of the epochs before, plus its row groups taken: the file it reads next is needed there),
    and it needs no file before it. (Per-epoch clocks made a reader of epoch 1 look behind one still in epoch
    0; a place past an epoch estimated from early counts put the next epoch's files before the reader.)"""
    groups = [3, 9, 2, 12, 5, 1, 7, 5]  # 44 row groups: 22 for each rank every epoch, none left out
    for s, n in enumerate([*groups, 2]):
        (tmp_path / "remote").mkdir(exist_ok=True)
        write_shard(tmp_path / "remote" / shard_name(s), s, n, 4)
    published: list[tuple[int, Needs]] = []
    publish = FolderBudget.publish

    def spy(self: FolderBudget, needs: Needs) -> None:  # the real publish, recorded
        published.append((id(self), needs))
        publish(self, needs)

    monkeypatch.setattr(FolderBudget, "publish", spy)
    async with FaultServer(tmp_path / "remote") as srv:
        kw = dict(data=Source(srv.url, folder=tmp_path / "c", num_shards=8, max_shard=8), shuffle=True, epochs=3,
                  cache_limit=10**8, read_ahead=ReadAhead(row_groups=2))

        async def read(rank: int) -> dict[tuple[int, int], str]:
            return {(b.epoch, b.taken): shard_name(b.shard) async for b in stream("train", **kw, ranks=Ranks(rank, 2))}

        ranks = await asyncio.gather(read(0), read(1))
    assert all(len(r) == 3 * 22 for r in ranks)
    by_stream: dict[int, dict[int, Needs]] = {}
    for key, needs in published:
        assert all(d >= needs.at for d in [*needs.future.values(), *needs.after.values()] if d != -1)
        by_stream.setdefault(key, {})[needs.at] = needs  # the last at each place: its file's count known
    assert len(by_stream) == 2 and len({n.run for _, n in published}) == 1
    readers = []
    for last in by_stream.values():
        assert max(last) >= 2 * 22  # one clock for the run: epoch 2 starts at 44
        readers += [r for r, batches in enumerate(ranks) if all(  # the file read next is needed at its place
            n.future.get(batches[(at // 22, at % 22 + 1)]) == at for at, n in last.items())]
    assert sorted(readers) == [0, 1]


# -- too small a budget -------------------------------------------------------------------------
async def test_a_budget_too_small_fails_at_once_with_the_smallest_that_works(remote: Path, tmp_path: Path) -> None:
    async with FaultServer(remote) as srv:
        kw = dict(data=Source(srv.url, folder=tmp_path / "local", num_shards=SHARDS, max_shard=SHARDS))
        need = await asyncio.to_thread(stream("train", **kw, ranks=Ranks(0, 3)).cache_minimum)
        big = max((remote / shard_name(s)).stat().st_size for s in range(SHARDS))
        assert 4 * big < need < 4 * big + 600_000  # 3 readers' files and one more, plus bookkeeping
        with pytest.raises(ConfigError, match=f"smallest that works is {need} bytes"):
            async for _ in stream("train", **kw, ranks=Ranks(0, 3), cache_limit=need - 1):
                pass
        assert sum(r.method == "GET" for r in srv.requests) == 0  # sizes came from HEAD: nothing downloaded
    with pytest.raises(ConfigError, match="num_shards=N"):  # a cache's train split is not "the files present"
        stream("train", data=tmp_path / "local", cache_limit="1GB")


async def test_a_local_only_folder_loses_nothing(tmp_path: Path) -> None:
    local = tmp_path / "local"
    make_shards(local, 4, rows=64)  # recorded without a source
    before = {p.name: sha(p) for p in local.glob("*.parquet")}
    size = folder_bytes(local)
    with pytest.raises(ConfigError, match="never evicted, so nothing was deleted"):
        stream("train", data=local, cache_limit=size // 2)
    got = [b async for b in stream("train", data=local, cache_limit=size + 10**6, epochs=2)]
    assert len(got) == 2 * 3 * 4
    cli = await asyncio.create_subprocess_exec(sys.executable, "-m", "nanostream.cli", "cache", str(local),
                                               "--prune-to", "0", stdout=subprocess.PIPE,
                                               env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    out = (await cli.communicate())[0].decode()
    assert cli.returncode == 1 and "cannot get below" in out and "local-only (no source in the record) 4" in out
    assert {p.name: sha(p) for p in local.glob("*.parquet")} == before


# -- the budget at every moment, several processes ----------------------------------------------
async def test_two_ranks_share_a_quarter_of_the_data_for_two_epochs(remote: Path, tmp_path: Path) -> None:
    data = data_bytes(remote)
    limit = data // 4
    local = tmp_path / "q-0"
    local.mkdir()
    (local / "notes.txt").write_bytes(os.urandom(50_000))  # not in the record: never evicted
    async with FaultServer(remote, rate=20e6) as srv:
        with Sampler([local]) as sampler:
            reports = await run_ranks(tmp_path, srv.url, "q", args=("--epochs", "2", "--cache-limit", str(limit),
                                                                    "--delay", "0.002"))
        served = sum(srv.bytes_sent.values())
    assert sampler.samples > 50 and 0 < sampler.peak[local] <= limit
    assert docs_by_epoch(reports) == every_doc(2)  # every document once per epoch, none twice
    assert served <= 2.3 * data  # each file about once per epoch, plus the footers
    assert (local / "notes.txt").stat().st_size == 50_000
    kept = sorted(local.glob("shard_*.parquet"))
    assert kept and all(sha(p) == sha(remote / p.name) for p in kept)  # re-fetched files are byte-identical
    assert not list(local.glob(".nanostream.cache.*.claim"))  # the streams left the budget


async def test_ranks_drifting_apart_download_each_file_once_an_epoch(remote: Path, tmp_path: Path) -> None:
    """Two ranks at the same mean speed without a barrier (fast and slow by turns, in opposite phase) drift
    several files apart, more than a quarter of the data holds. The one ahead waits rather than evict a
    file the one behind still needs, so no file is downloaded twice in an epoch."""
    limit = data_bytes(remote) // 4
    async with FaultServer(remote, rate=20e6) as srv:
        with Sampler([tmp_path / "d-0"]) as sampler:
            reports = await run_ranks(tmp_path, srv.url, "d", sync=False, args=(
                "--dist", "--epochs", "2", "--cache-limit", str(limit), "--delay", "0.02", "--drift", "32"))
        downloads = Counter(r.path for r in srv.requests if r.method == "GET" and r.range is None)
    assert docs_by_epoch(reports) == every_doc(2)
    assert 0 < sampler.peak[tmp_path / "d-0"] <= limit
    assert len(downloads) == SHARDS and max(downloads.values()) <= 2, downloads


async def test_a_reader_nobody_consumes_stops_protecting_its_files(remote: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Rank 1 takes one batch and is not read again for a while: its next files are needed sooner than rank
    0's, but once it has not moved for STALLED_S rank 0 evicts them and goes on (no deadlock); rank 1
    then reads the rest, fetching again what was evicted."""
    monkeypatch.setattr("nanostream.streaming.cache.budget.STALLED_S", 0.5)
    caplog.set_level(logging.INFO, "nanostream.streaming.cache.budget")
    async with FaultServer(remote, rate=20e6) as srv:
        kw = dict(data=Source(srv.url, folder=tmp_path / "s", num_shards=SHARDS, max_shard=SHARDS), shuffle=True,
                  read_ahead=ReadAhead(row_groups=2), cache_limit=data_bytes(remote) // 4)
        paused = stream("train", **kw, ranks=Ranks(1, 2))
        try:
            first = await paused.__anext__()
            ahead = [b async for b in stream("train", **kw, ranks=Ranks(0, 2))]
            rest = [first] + [b async for b in paused]
        finally:
            await paused.aclose()
    assert len(ahead) == len(rest) == SHARDS * GROUPS // 2
    assert {(b.shard, b.row_group) for b in ahead} | {(b.shard, b.row_group) for b in rest} == {
        (s, g) for s in range(SHARDS) for g in range(GROUPS)}
    assert sum("has not moved on for 0s" in r.getMessage() for r in caplog.records) == 1  # said once


async def test_two_nodes_each_within_its_budget(remote: Path, tmp_path: Path) -> None:
    limit = data_bytes(remote) // 4  # half of what each node reads
    folders = [tmp_path / "n-0", tmp_path / "n-1"]
    async with FaultServer(remote, rate=20e6) as srv:
        with Sampler(folders) as sampler:
            reports = await run_ranks(tmp_path, srv.url, "n", nodes=2, args=("--cache-limit", str(limit)))
    assert docs_by_epoch(reports) == every_doc(1)
    assert all(0 < sampler.peak[f] <= limit for f in folders)


async def test_three_ranks_at_exactly_the_smallest_limit_finish(remote: Path, tmp_path: Path) -> None:
    async with FaultServer(remote, rate=20e6) as srv:
        kw = dict(data=Source(srv.url, folder=tmp_path / "m-0", num_shards=SHARDS, max_shard=SHARDS))
        need = await asyncio.to_thread(stream("train", **kw, ranks=Ranks(0, 3), shuffle=True).cache_minimum)
        with Sampler([tmp_path / "m-0"]) as sampler:
            reports = await asyncio.wait_for(run_ranks(tmp_path, srv.url, "m", per_node=3, args=(
                "--cache-limit", str(need), "--queue-size", "2", "--delay", "0.002")), 90)
    assert 0 < sampler.peak[tmp_path / "m-0"] <= need
    got = docs_by_epoch(reports)
    assert max(got.values()) == 1 and len(got) >= sum(every_doc(1).values()) - 2 * ROWS  # drop_last: <= 2 row groups


# -- held files, killed readers ----------------------------------------------------------------
READER = """
import sys, time
from nanostream import ReadAhead, Source, iter_batches
data = Source(sys.argv[2], folder=sys.argv[1], num_shards=int(sys.argv[3]), max_shard=int(sys.argv[3]))
it = iter_batches("train", data=data, cache_limit=int(sys.argv[4]), read_ahead=ReadAhead(row_groups=1, files=0))
b = next(it)
print(b.shard, flush=True)
time.sleep(600)  # mid-read: the producer holds the file, waiting for room in its queue
"""


async def prune(folder: Path, size: str) -> str:
    cli = await asyncio.create_subprocess_exec(sys.executable, "-m", "nanostream.cli", "cache", str(folder),
                                               "--prune-to", size, stdout=subprocess.PIPE,
                                               env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return (await cli.communicate())[0].decode()


async def test_a_held_file_survives_eviction_until_its_reader_is_killed(remote: Path, tmp_path: Path) -> None:
    local = tmp_path / "h"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    async with FaultServer(remote) as srv:
        kw = dict(data=Source(srv.url, folder=local, num_shards=4, max_shard=4), read_ahead=ReadAhead(files=0))
        limit = await asyncio.to_thread(stream("train", **kw).cache_minimum)
        reader = await asyncio.create_subprocess_exec(sys.executable, "-c", READER, str(local), srv.url, "4",
                                                      str(limit), stdout=subprocess.PIPE, env=env)
        try:
            assert reader.stdout is not None
            held = shard_name(int((await asyncio.wait_for(reader.stdout.readline(), 30)).decode()))
            inode = (local / held).stat().st_ino
            # another stream on the folder, under the same limit, must evict to read its 4 files: never `held`
            got = [b async for b in stream("train", **kw, cache_limit=limit, epochs=2)]
            assert len(got) == 2 * 4 * GROUPS
            assert sum(r.method == "GET" and not (r.range or "").startswith("bytes=-") for r in srv.requests) > 4
            assert (local / held).stat().st_ino == inode  # files were evicted and fetched again, never this one
            out = await prune(local, "0")
            assert "in use by a reader 1" in out and "streams using it now: 1" in out, out
            assert sorted(p.name for p in local.glob("shard_*.parquet")) == [held]
        finally:
            reader.send_signal(signal.SIGKILL)  # kill -9 mid-read: its flocks die with it
            await reader.wait()
    out = await prune(local, "0")
    assert "evicted 1 file(s)" in out and "streams using it now: 0" in out, out
    assert not list(local.glob("shard_*.parquet")) and not list(local.glob(".nanostream.cache.*.claim"))


# -- resume ---------------------------------------------------------------------------------------
async def test_exact_and_elastic_resume_fetch_what_was_evicted(remote: Path, tmp_path: Path) -> None:
    local = tmp_path / "r"
    limit = 5 * (remote / shard_name(0)).stat().st_size
    async with FaultServer(remote, rate=50e6) as srv:
        kw = dict(data=Source(srv.url, folder=local, num_shards=SHARDS, max_shard=SHARDS), shuffle=True,
                  cache_limit=limit, read_ahead=ReadAhead(files=1))
        first: dict[int, list] = {}
        states = {}
        for rank in (0, 1):  # both ranks of a 2-rank run take 20 batches, then stop
            s = stream("train", **kw, ranks=Ranks(rank, 2))
            first[rank] = []
            async for b in s:
                first[rank].append(b)
                if len(first[rank]) == 20:
                    break
            states[rank] = s.state_dict()
            await s.aclose()
        resumed = stream("train", **kw, ranks=Ranks(0, 2), resume=states[0])
        exact = [b async for b in resumed]
        assert resumed.stats["evicted"] > 0
        # at world size 1, from the global position rank 1's state tells
        elastic = [b async for b in stream("train", **kw, ranks=Ranks(0, 1), resume=states[1])]
        downloads = Counter(r.path for r in srv.requests
                            if r.method == "GET" and not (r.range or "").startswith("bytes=-"))
    mine = stream("train", **kw, ranks=Ranks(0, 2)).settled_deal(0).sequence(0)
    assert [(b.shard, b.row_group) for b in first[0] + exact] == mine  # exact: the rest of rank 0's epoch
    read = Counter(doc_id(t) for b in first[0] + first[1] + elastic for t in b.texts)
    assert read == Counter({(s, g, r): 1 for s in range(SHARDS) for g in range(GROUPS) for r in range(ROWS)})
    assert max(downloads.values()) >= 2  # some file was evicted, then fetched again for a resume
    assert folder_bytes(local) <= limit


def test_cli_cache_bad_input_exits_2(tmp_path: Path) -> None:
    write_catalog(tmp_path, numbered_catalog("t", "http://127.0.0.1:9", 4))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = lambda *a: subprocess.run([sys.executable, "-m", "nanostream.cli", "cache", *a], capture_output=True,  # noqa: E731
                                    text=True, env=env)
    bad = run(str(tmp_path), "--prune-to", "lots")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--prune-to" in bad.stderr
    missing = run(str(tmp_path / "nope"))
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    ok = run(str(tmp_path))
    assert ok.returncode == 0 and "files: 0" in ok.stdout


async def test_token_dataset_takes_cache_limit_and_resumes_under_another(remote: Path, tmp_path: Path) -> None:
    from nanostream import ByteTokenizer, TokenDataset

    size = (remote / shard_name(0)).stat().st_size
    async with FaultServer(remote, rate=50e6) as srv:
        def make(limit: int) -> TokenDataset:
            return TokenDataset("train", ByteTokenizer(), 2, 256, epochs=1, cache_limit=limit,
                                data=Source(srv.url, folder=tmp_path / "t", num_shards=4, max_shard=4),
                                ranks=Ranks(0, 1), read_ahead=ReadAhead(files=1))

        def run() -> tuple[list, list, list]:
            ds = make(3 * size)
            it = iter(ds)
            head = [next(it) for _ in range(5)]
            state = ds.state_dict()
            want = head + list(it)
            resumed = make(4 * size)  # another budget: resuming is allowed
            resumed.load_state_dict(state)
            return head, list(resumed), want

        head, rest, want = await asyncio.to_thread(run)
    assert len(want) > 10 and len(head) + len(rest) == len(want)
    assert all(bool((a[0] == b[0]).all()) for a, b in zip(head + rest, want, strict=True))
    assert folder_bytes(tmp_path / "t") <= 4 * size


async def test_validation_beside_training_in_one_folder_and_budget(remote: Path, tmp_path: Path) -> None:
    """A trainer's evaluation: the training stream stops mid-file (it holds it) while a validation stream
    on the same folder reads its file; validation files count in the same budget."""
    local = tmp_path / "v"
    async with FaultServer(remote, rate=50e6) as srv:
        kw = dict(data=Source(srv.url, folder=local, num_shards=8, max_shard=SHARDS))
        limit = await asyncio.to_thread(stream("train", **kw, read_ahead=ReadAhead(files=1)).cache_minimum)
        train = stream("train", **kw, cache_limit=limit, epochs=None, read_ahead=ReadAhead(row_groups=1, files=1))
        got, val_rows = 0, 0
        with Sampler([local]) as sampler:
            async for _ in train:
                got += 1
                if got % 20 == 0:  # evaluate, as a trainer does every few steps
                    val_rows += sum([len(b.texts) async for b in stream("val", **kw, cache_limit=limit,
                                                                        read_ahead=ReadAhead(files=1))])
                if got == 3 * 8 * GROUPS:
                    break
            await train.aclose()
    assert val_rows == (3 * 8 * GROUPS // 20) * GROUPS * ROWS and 0 < sampler.peak[local] <= limit
    assert folder_bytes(local) <= limit
