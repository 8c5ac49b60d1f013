"""stream() / iter_batches(): coverage across ranks, splits, back-pressure, shutdown, errors,
background fetching from a real loopback server, one download per shard across processes, resume."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from nanostream import Ranks as R
from nanostream import ReadAhead, Source, iter_batches, stream
from nanostream.errors import ConfigError, CorruptShardError, FetchError, MissingShardError
from nanostream.shards import shard_name
from nanostream.sources.catalog import numbered_catalog, read_catalog, write_catalog
from nanostream.sources.resolve import url_prefix
from nanostream.streaming.order import Cursor
from nanostream.streaming.plan import Batch

from datagen import doc_id, make_shards
from servers import FaultServer

ROOT = Path(__file__).resolve().parent.parent


def ids(batches: list[Batch]) -> list[tuple[int, int, int]]:
    return [doc_id(t) for b in batches for t in b.texts]


def all_ids(shards, row_groups=4, rows=8) -> set[tuple[int, int, int]]:
    return {(s, g, r) for s in shards for g in range(row_groups) for r in range(rows)}


async def collect(s) -> list[Batch]:
    return [b async for b in s]


async def with_states(s) -> list[tuple[Batch, dict]]:
    """Each batch, and the stream's state right after it (through JSON: plain values)."""
    return [(b, json.loads(json.dumps(s.state_dict()))) async for b in s]


def our_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("nanostream-read", "nanostream-loop"))]


def open_shard_files() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(".parquet"):
            out.append(target)
    return out


async def settled() -> None:
    """Wait until only the current task is left, and none of our threads or shard files."""
    me = asyncio.current_task()
    for _ in range(200):
        if not [t for t in asyncio.all_tasks() if t is not me] and not our_threads() and not open_shard_files():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"left behind: {asyncio.all_tasks()} {our_threads()} {open_shard_files()}")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    make_shards(folder, 5, row_groups=4, rows=8, base_url="")  # train 0..3, val 4, no remote
    return folder


# -- which shards, which ranks -------------------------------------------------------------------
def one_node_sequence(shards, counts, rank, world, epoch, shuffle, seed) -> list[tuple[int, int]]:
    """The one-node rule, written out: the epoch's global order (its shard order, each shard's row
    groups in their order) dealt by a running count: its ``j``-th row group goes to rank ``j % world``."""
    order = list(shards)
    if shuffle:
        random.Random(f"nanostream:{seed}:{epoch}").shuffle(order)
    out = []
    for s in order:
        groups = list(range(counts[s]))
        if shuffle:
            random.Random(f"nanostream:{seed}:{epoch}:{s}").shuffle(groups)
        out += [(s, g) for g in groups]
    return out[rank::world]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("shuffle", [False, True])
async def test_one_node_reads_the_epoch_order_by_a_running_count(tmp_path: Path, world_size: int, drop_last: bool,
                                                      shuffle: bool) -> None:
    folder = tmp_path / "d"
    make_shards(folder, 4, row_groups=5, rows=2, base_url="")  # train 0..2: 15 row groups, not a multiple of 2
    kw = dict(data=folder, shuffle=shuffle, seed=5, epochs=2)
    runs = [await collect(stream("train", ranks=R(r, world_size, drop_last=drop_last), **kw))
            for r in range(world_size)]
    for epoch in range(2):
        today = [one_node_sequence((0, 1, 2), {0: 5, 1: 5, 2: 5}, r, world_size, epoch, shuffle, 5)
                 for r in range(world_size)]
        n = (min if drop_last else max)(len(t) for t in today)
        assert n == (15 // world_size if drop_last else -(-15 // world_size))  # at most world-1 left out
        assert stream("train", ranks=R(0, world_size, drop_last=drop_last), **kw).epoch_length(epoch) == n
        seen: Counter[tuple[int, int, int]] = Counter()
        for r, run in enumerate(runs):
            got = [(b.shard, b.row_group) for b in run if b.epoch == epoch]
            assert got == (today[r] * 2)[:n]  # today's order, cut (drop_last) or padded from its start
            seen.update(ids([b for b in run if b.epoch == epoch]))
        if drop_last:
            assert max(seen.values()) == 1 and len(seen) == 2 * n * world_size
        else:
            assert set(seen) == all_ids(range(3), row_groups=5, rows=2)


async def test_rank_without_row_groups_is_an_error_on_every_rank(data: Path) -> None:
    for rank in (0, 16):  # 16 row groups for 17 readers: reader 16 reads none
        for epochs in (1, None):  # one epoch: not 0 batches silently; forever: not a hang
            s = stream("train", data=data, ranks=R(rank, 17), epochs=epochs)
            with pytest.raises(ConfigError, match=r"reader 16 of 17 .* reads no row group"):
                await collect(s)
            with pytest.raises(ConfigError, match="reads no row group"):
                s.epoch_length()


async def test_shuffle_same_order_on_every_rank_and_exactly_once(data: Path) -> None:
    runs = [await collect(stream("train", data=data, ranks=R(r, 2), shuffle=True, seed=7, epochs=2))
            for r in range(2)]
    for epoch in range(2):
        seen = Counter(i for run in runs for i in ids([b for b in run if b.epoch == epoch]))
        assert set(seen) == all_ids(range(4)) and max(seen.values()) == 1
    shard_seq = [[b.shard for b in run if b.epoch == 0] for run in runs]
    assert list(dict.fromkeys(shard_seq[0])) == list(dict.fromkeys(shard_seq[1]))
    plain = await collect(stream("train", data=data))
    e0 = [b.position for b in runs[0] if b.epoch == 0]
    e1 = [b.position for b in runs[0] if b.epoch == 1]
    assert [(p.shard, p.row_group) for p in e0] != [(p.shard, p.row_group) for p in e1]
    assert [b.position for b in plain] == sorted(b.position for b in plain)  # unshuffled: file order


async def test_val_is_last_shard_also_with_fewer_train_shards(data: Path, caplog) -> None:
    for i in (2, 3):
        (data / shard_name(i)).unlink()  # only train 0, 1 downloaded; val 4 present
    val = await collect(stream("val", data=data, ranks=R(0, 1)))
    assert {b.shard for b in val} == {4} and set(ids(val)) == all_ids([4])
    train = await collect(stream("train", data=data))
    assert set(ids(train)) == all_ids([0, 1])
    # no record: the last shard file is val, and we are told so once
    (data / ".nanostream.json").unlink()
    with caplog.at_level(logging.WARNING, logger="nanostream"):
        assert set(ids(await collect(stream("val", data=data)))) == all_ids([4])  # the folder's 3rd file
        assert set(ids(await collect(stream("train", data=data)))) == all_ids([0, 1])
    warnings = [r for r in caplog.records if "for validation" in r.getMessage()]
    assert len(warnings) == 1 and "shard_00004.parquet" in warnings[0].getMessage()


def test_bad_arguments(data: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError):
        stream("test", data=data)
    with pytest.raises(ConfigError):
        stream("train", data=data, ranks=R(2, 2))
    with pytest.raises(ConfigError):
        stream("train", data=data, epochs=0)
    with pytest.raises(ConfigError, match="not in this split"):
        stream("train", data=data, resume={"ranks": [0, 1, 1, True], "position": [0, 4, 0, 1, None], "cursor": None})
    with pytest.raises(ConfigError, match=r"takes a Stream\.state_dict"):
        stream("train", data=data, resume={"position": [0, 1, 0]})
    with pytest.raises(ConfigError, match="a mix needs two or more"):
        stream("train", data=[Source(data)])
    with pytest.raises(ConfigError, match="data= takes a name"):
        stream("train", data=3)
    with pytest.raises(ConfigError, match="is a folder: folder= is for"):
        stream("train", data=Source(data, folder=data))
    with pytest.raises(ConfigError, match="ReadAhead needs"):
        stream("train", data=data, read_ahead=ReadAhead(row_groups=0))
    with pytest.raises(MissingShardError, match="does not exist"):
        stream("train", data=tmp_path / "nope")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert stream("train", data=data).plan.ranks == R(1, 3, 3)


# -- the producer ----------------------------------------------------------------------------------
async def test_back_pressure_slow_consumer(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    make_shards(folder, 3, row_groups=10, rows=4, base_url="")
    s = stream("train", data=folder, read_ahead=ReadAhead(row_groups=3))
    consumed = 0
    async for _ in s:
        consumed += 1
        await asyncio.sleep(0.05)  # slow consumer: the producer must wait, not run ahead
        st = s.stats
        assert st["max_queued"] <= 3  # the largest queue seen right after a put
        assert st["produced"] <= consumed + 3
    assert consumed == 20 and s.stats["produced"] == 20 and s.stats["max_queued"] == 3


@pytest.mark.parametrize("how", ["break", "aclose", "async_with", "cancel"])
async def test_clean_shutdown(data: Path, how: str) -> None:
    if how == "break":
        async for _ in stream("train", data=data, epochs=None, read_ahead=ReadAhead(row_groups=2)):
            break
    elif how == "aclose":
        s = stream("train", data=data, epochs=None)
        await s.__anext__()
        await s.aclose()
        assert not our_threads() and not open_shard_files()
    elif how == "async_with":
        async with stream("train", data=data, epochs=None) as s:
            async for _ in s:
                break
        assert not our_threads() and not open_shard_files()
    else:
        got = asyncio.Event()

        async def consume() -> None:
            async for _ in stream("train", data=data, epochs=None, read_ahead=ReadAhead(row_groups=1)):
                got.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(consume())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await settled()


async def test_cancel_at_any_point_leaves_nothing_open(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    make_shards(folder, 9, row_groups=1, rows=2, base_url="")  # a shard open per batch
    for k in range(12):
        async def consume(k: int = k) -> None:
            async for _ in stream("train", data=folder, epochs=None, read_ahead=ReadAhead(row_groups=1)):
                await asyncio.sleep(0.001 * (k % 3))

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.002 * k)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settled()


async def test_epochs_none_runs_on_and_epochs_two_twice(data: Path) -> None:
    two = await collect(stream("train", data=data, epochs=2))
    assert Counter(ids(two)) == Counter({i: 2 for i in all_ids(range(4))})
    assert [b.epoch for b in two] == [0] * 16 + [1] * 16
    n = 0
    async with stream("train", data=data, epochs=None) as s:
        async for b in s:
            n += 1
            if b.epoch == 3:
                break
    assert n == 16 * 3 + 1


# -- errors ----------------------------------------------------------------------------------------
async def test_truncated_shard_raises_named_error(data: Path) -> None:
    path = data / shard_name(2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    got: list[Batch] = []
    with pytest.raises(CorruptShardError, match=r"shard_00002\.parquet") as err:
        async for b in stream("train", data=data):
            got.append(b)
    assert err.value.path == path and "fetch it again" in str(err.value)
    assert {b.shard for b in got} == {0, 1}  # nothing is counted up front: it fails when it is reached
    await settled()


@pytest.mark.parametrize("content", [b"", b"not parquet at all" * 10])
async def test_garbage_shard_raises(data: Path, content: bytes) -> None:
    (data / shard_name(0)).write_bytes(content)
    with pytest.raises(CorruptShardError, match=r"shard_00000\.parquet"):
        await collect(stream("train", data=data))


async def test_missing_shard_without_remote(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    make_shards(folder, 2, base_url="")
    with pytest.raises(MissingShardError, match=r"shard_00002\.parquet"):
        await collect(stream("train", data=Source(folder, num_shards=5, max_shard=9)))


# -- background fetching ---------------------------------------------------------------------------
def downloads(srv: FaultServer, name: str) -> int:
    """GETs of ``name`` that download it (not the suffix-range reads of its footer)."""
    return sum(1 for r in srv.requests if r.path == "/" + name and r.method == "GET"
               and not (r.range or "").startswith("bytes=-"))


def remote(tmp_path: Path, n: int = 6, **kw) -> Path:
    folder = tmp_path / "remote"
    make_shards(folder, n, record=False, **kw)
    return folder


async def test_stream_from_empty_folder_while_downloading(tmp_path: Path) -> None:
    src = remote(tmp_path)  # shards of ~5 kB; 10 kB/s per connection: ~0.5 s each
    local = tmp_path / "local"
    async with FaultServer(src, rate=10_000) as srv:
        t0 = time.monotonic()
        got: list[Batch] = []
        first = None
        async for b in stream("train", data=Source(srv.url, folder=local, num_shards=5, max_shard=5),
                              read_ahead=ReadAhead(files=1)):
            if first is None:
                first = time.monotonic() - t0
                assert not (local / shard_name(4)).exists()  # the rest is still to come
            got.append(b)
        total = time.monotonic() - t0
    assert first is not None and first < total / 2
    assert Counter(ids(got)) == Counter(all_ids(range(5), rows=16))
    assert [b.shard for b in got] == sorted(b.shard for b in got)
    assert all(downloads(srv, shard_name(i)) == 1 for i in range(5)) and srv.count(shard_name(5)) == 0
    rec = read_catalog(local)
    assert rec is not None and len(rec.files) == 6 and url_prefix(rec) == srv.url
    await settled()


async def test_corrupt_local_shard_is_fetched_again(tmp_path: Path) -> None:
    src = remote(tmp_path, 4)
    local = tmp_path / "local"
    make_shards(local, 4, record=False)
    (local / shard_name(1)).write_bytes(b"PAR1 truncated")
    async with FaultServer(src) as srv:
        write_catalog(local, numbered_catalog(srv.url, srv.url, 4))
        got = await collect(stream("train", data=local))
    assert set(ids(got)) == all_ids(range(3), rows=16)
    assert downloads(srv, shard_name(1)) == 1 and srv.count(shard_name(0)) == 0


async def test_failed_download_raises_named_error(tmp_path: Path) -> None:
    src = remote(tmp_path, 4)
    async with FaultServer(src) as srv:
        srv.script(shard_name(1), "status:404")
        got: list[Batch] = []
        with pytest.raises(FetchError, match=r"shard_00001\.parquet"):
            async for b in stream("train", data=Source(srv.url, folder=tmp_path / "local", num_shards=3,
                                                       max_shard=3)):
                got.append(b)
        assert {b.shard for b in got} <= {0}
    await settled()


async def test_break_stops_background_downloads(tmp_path: Path) -> None:
    src = remote(tmp_path)
    async with FaultServer(src, rate=5_000) as srv:
        s = stream("train", data=Source(srv.url, folder=tmp_path / "local", num_shards=5, max_shard=5))
        async with s:
            await s.__anext__()  # shards 1, 2 are starting to download now
        await settled()
        assert not (tmp_path / "local" / shard_name(4)).exists()


WORKER = """
import sys
from collections import Counter
from nanostream import Ranks, Source, iter_batches
data = Source(sys.argv[2], folder=sys.argv[1], num_shards=5, max_shard=5)
n = Counter(t.split(" ", 1)[0] for b in iter_batches("train", data=data, ranks=Ranks(int(sys.argv[3]), 2))
            for t in b.texts)
print(sum(n.values()), max(n.values()))
"""


async def test_two_processes_download_each_shard_once(tmp_path: Path) -> None:
    src = remote(tmp_path)
    local = tmp_path / "local"
    async with FaultServer(src, rate=5_000) as srv:  # ~1 s a shard: the two overlap
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", WORKER, str(local), srv.url, str(r),
                                                      stdout=subprocess.PIPE, env=env) for r in range(2)]
        outs = [(await p.communicate())[0].decode().split() for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
    assert outs == [["160", "1"], ["160", "1"]]  # 5 shards * 2 of 4 row groups * 16 rows, once each
    assert [downloads(srv, shard_name(i)) for i in range(6)] == [1, 1, 1, 1, 1, 0]
    assert [srv.count(shard_name(i)) for i in range(5)] == [1] * 5  # no footer read: counts come with the files


# -- resume and the blocking twin ------------------------------------------------------------------
@pytest.mark.parametrize("shuffle", [False, True])
async def test_resume_continues_exactly_after(data: Path, shuffle: bool) -> None:
    kw = dict(data=data, ranks=R(1, 2), epochs=3, shuffle=shuffle, seed=3)
    s = stream("train", **kw)
    assert s.state_dict() == {"ranks": [1, 2, 2, True], "position": None, "cursor": None}  # not started
    full, states = zip(*await with_states(s), strict=True)
    assert len(full) == 24
    for k in (0, 3, 7, 8, 15, 22):
        again = stream("train", resume=states[k], **kw)
        assert again.state_dict() == states[k]  # a resumed stream that has not started is where it resumed
        rest = await collect(again)
        assert [b.position for b in rest] == [b.position for b in full[k + 1:]]
        assert [b.texts for b in rest] == [b.texts for b in full[k + 1:]]


@pytest.mark.parametrize("shuffle", [False, True])
async def test_resume_exact_on_two_nodes_and_cursor_from_any_rank(tmp_path: Path, shuffle: bool) -> None:
    folder = tmp_path / "d"
    make_shards(folder, 6, row_groups=4, rows=2, base_url="")  # 5 train shards on 2 nodes: 20 row groups
    kw = dict(data=folder, epochs=2, shuffle=shuffle, seed=3)
    runs = [await with_states(stream("train", ranks=R(r, 4, 2), **kw)) for r in range(4)]
    n = stream("train", ranks=R(0, 4, 2), **kw).epoch_length()
    assert [len(f) for f in runs] == [2 * n] * 4 and n == 5  # 10 row groups a node, 5 a rank: none left out
    for k in (0, 2, n, n + 1):
        rest = await collect(stream("train", ranks=R(3, 4, 2), resume=runs[3][k][1], **kw))
        assert [b.position for b in rest] == [b.position for b, _ in runs[3][k + 1:]]
        # at another layout: the global position after k+1 batches of every rank, whichever rank's state it is
        starts = {stream("train", ranks=R(0, 1), resume=runs[r][k][1], **kw).plan.start for r in range(4)}
        assert len(starts) == 1 and isinstance(starts.pop(), Cursor)


def test_layout_from_torchrun_env(data: Path, monkeypatch) -> None:
    for k, v in dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2", GROUP_RANK="1").items():
        monkeypatch.setenv(k, v)
    assert stream("train", data=data).plan.ranks == R(3, 4, 2)
    assert stream("train", data=data, ranks=R(5, 8)).plan.ranks == R(5, 8, 8)  # workers folded in: not torchrun's
    assert stream("val", data=data).plan.ranks.local_world_size == 2  # one val shard: its row groups dealt to both
    monkeypatch.setenv("GROUP_RANK", "0")
    with pytest.raises(ConfigError, match="node by node"):
        stream("train", data=data)
    with pytest.raises(ConfigError, match="does not divide"):
        stream("train", data=data, ranks=R(0, 4, 3))


async def test_resume_with_a_foreign_row_group_is_refused(data: Path) -> None:
    foreign = {"ranks": [0, 2, 2, True], "position": [0, 1, 1, 1, None], "cursor": None}  # rank 1's first
    with pytest.raises(ConfigError, match="not one rank 0 reads"):
        await collect(stream("train", data=data, ranks=R(0, 2), resume=foreign))
    with pytest.raises(ConfigError, match="row group 9"):
        await collect(stream("train", data=data, resume={"ranks": [0, 1, 1, True], "position": [0, 1, 9, 5, None],
                                                         "cursor": None}))


def test_iter_batches_matches_stream_and_cleans_up(data: Path) -> None:
    blocking = list(iter_batches("train", data=data, ranks=R(0, 2)))
    expected = asyncio.run(collect(stream("train", data=data, ranks=R(0, 2))))
    assert [b.position for b in blocking] == [b.position for b in expected]
    assert [b.texts for b in blocking] == [b.texts for b in expected]
    for _ in iter_batches("train", data=data, epochs=None):
        break
    it = iter_batches("val", data=data, epochs=None)
    next(it)
    with it:
        pass
    assert next(it, None) is None
    for _ in range(100):
        if not our_threads() and not open_shard_files():
            break
        time.sleep(0.01)
    assert not our_threads() and not open_shard_files()


def test_iter_batches_raises_stream_errors(data: Path) -> None:
    (data / shard_name(1)).write_bytes(b"junk")
    it = iter_batches("train", data=data)
    with pytest.raises(CorruptShardError, match=r"shard_00001\.parquet"):
        for _ in it:
            pass
    assert not [t for t in our_threads() if t.is_alive()]


# -- catalog sources: any names, hf:// listed once, splits, text column ----------------------------
async def test_hub_dataset_streams_while_downloading_listed_once_for_every_rank(tmp_path: Path) -> None:
    from nanostream.config import Config

    from datagen import write_shard
    from hubserver import HubServer

    repo = tmp_path / "repo" / "data"
    repo.mkdir(parents=True)
    names = ["train-00000-of-00003.parquet", "train-00001-of-00003.parquet", "train-00002-of-00003.parquet",
             "validation-00000-of-00001.parquet"]
    for i, n in enumerate(names):
        write_shard(repo / n, i, 4, 8)
    local = tmp_path / "local"
    async with HubServer(page_size=2) as hub:
        sha = hub.add_repo("org/corpus", tmp_path / "repo")
        cfg = Config(base_dir=tmp_path, hf_endpoint=hub.url)
        data = Source("hf://datasets/org/corpus", folder=local, num_shards=3)
        # stream() lists on the caller's thread (blocking): off this loop, which serves the Hub here
        runs = [await collect(await asyncio.to_thread(stream, "train", data=data, config=cfg, ranks=R(r, 2)))
                for r in range(2)]
        val = await collect(await asyncio.to_thread(stream, "val", data=data, config=cfg, ranks=R(0, 1)))
        listings = [r for r in hub.requests if "/api/" in r.path_qs]
    assert Counter(ids(runs[0] + runs[1])) == Counter(all_ids(range(3)))  # every row group once, over 2 ranks
    assert set(ids(val)) == all_ids([3]) and {b.shard for b in val} == {3}
    assert len([r for r in listings if "/revision/" in r.path_qs]) == 1  # the first stream listed; the rest read
    rec = json.loads((local / ".nanostream.json").read_text())
    assert rec["revision"] == sha and [f["path"] for f in rec["files"]] == [f"data/{n}" for n in names]
    assert (local / "data" / names[0]).read_bytes() == (repo / names[0]).read_bytes()


async def test_local_folder_of_any_names_with_val_glob_and_text_column(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from nanostream.errors import DatasetError

    from datagen import write_shard

    folder = tmp_path / "mine"
    for i, name in enumerate(["b/x.parquet", "a/y.parquet", "c.parquet"]):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_shard(folder / name, i, 2, 4)
        table = pq.read_table(folder / name)
        pq.write_table(table.rename_columns(["body"]), folder / name, row_group_size=4)
    with pytest.raises(DatasetError, match=r"has no column 'text'; its columns are: body"):
        await collect(stream("train", data=folder))
    train = await collect(stream("train", data=Source(folder, text_column="body")))
    assert set(ids(train)) == all_ids([0, 1], row_groups=2, rows=4)  # sorted paths: a/y, b/x; c is validation
    train, states = zip(*await with_states(stream("train", data=Source(folder, text_column="body"))), strict=True)
    rest = await collect(stream("train", data=Source(folder, text_column="body"), resume=states[1]))
    assert [b.position for b in rest] == [b.position for b in train[2:]]  # exact resume by catalog index
    val = await collect(stream("val", data=Source(folder, text_column="body", val="a/*")))
    assert set(ids(val)) == all_ids([1], row_groups=2, rows=4)
    with pytest.raises(DatasetError, match=r"split 'validation' resolves to no file.*'z\*' matches none"):
        stream("val", data=Source(folder, val="z*"))


def test_replay_reads_row_groups_first_once_each(data: Path) -> None:
    """``Options.replay`` (a TokenDataset resume's buffered documents): those row groups first, each once, sorted
    and flagged, then the order; a shard outside the split or a row group its file lacks is refused."""
    from nanostream.config import Config
    from nanostream.streaming.plan import Options
    from nanostream.streaming.single import open_stream
    from nanostream.streaming.streams import BatchIterator

    def replayed(replay: list[tuple[int, int]]) -> BatchIterator:
        options = Options("train", R(0, 1, 1), epochs=1, replay=tuple(replay)).check()
        return BatchIterator(open_stream(Source(data), options, Config()))

    with replayed([(2, 1), (0, 3), (2, 1), (0, 0)]) as it:
        got = list(it)
    assert [(b.shard, b.row_group, b.replay) for b in got[:3]] == [(0, 0, True), (0, 3, True), (2, 1, True)]
    assert all(doc_id(t)[:2] == (b.shard, b.row_group) for b in got[:3] for t in b.texts)
    plain = [(b.shard, b.row_group) for b in iter_batches("train", data=data, ranks=R(0, 1), epochs=1)]
    assert [(b.shard, b.row_group) for b in got[3:]] == plain and not any(b.replay for b in got[3:])
    with pytest.raises(ConfigError, match="not in this split"):
        replayed([(4, 0)])  # the validation shard
    with pytest.raises(ConfigError, match="row group 9"):
        list(replayed([(1, 9)]))
