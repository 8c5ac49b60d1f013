"""ClimbMix's scale on one machine: nodes as processes behind one address, under the Hub double's quota.

The first batch waits for no other shard's footer, and each footer is read once for the whole cluster:
the nodes learn their own shards' counts from the files they download and tell each other through
torch.distributed's store (tests/scale_worker.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hubserver import HubServer

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("scale_worker.py")
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_two_nodes_under_one_quota_start_at_once_and_read_each_footer_once(tmp_path: Path) -> None:
    """2 nodes (processes) x 1 rank, 16 numbered shards of 52 row groups, the Hub's resolver quota (300 per
    30 s for the address both share): each node's first batch comes after its own first shard, with at most
    4 /resolve/ requests a node before it; over an epoch and into the next, every shard is asked for once in
    all (its download: no footer is read remotely, no count twice), and no answer is a 429."""
    shards = 16
    async with HubServer(quota={"resolvers": (300, 30)}) as hub:
        hub.add_numbered("karpathy/climbmix-400b-shuffle", 6543, row_groups=52)
        port = free_port()
        procs = []
        for rank in range(2):
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_ENDPOINT": hub.url, "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                   "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": str(rank), "OMP_NUM_THREADS": "1",
                   "HF_TOKEN": f"node-{rank}"}  # how the double tells the nodes apart
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, str(WORKER), str(tmp_path / f"out{rank}.json"), str(tmp_path / f"node{rank}"),
                str(shards), "--dist", "--next-epoch", stderr=subprocess.PIPE, env=env))
        errs = [(await p.communicate())[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0], "\n".join(errs)[-4000:]
        stats = hub.stats()
    reports = [json.loads((tmp_path / f"out{r}.json").read_text()) for r in range(2)]
    for r, rep in enumerate(reports):
        assert rep["hub_after_first"]["resolve_by"][f"node-{r}"] <= 4  # its first shard (and what it fetches next)
        mine = sorted(os.listdir(tmp_path / f"node{r}"))
        assert [m for m in mine if m.endswith(".parquet")] == [f"shard_{i:05d}.parquet" for i in range(8 * r, 8 * r + 8)]
    assert stats["limited"] == 0
    assert stats["per_path"] == {f"shard_{i:05d}.parquet": 1 for i in range(shards)}
    assert min(rep["steps"] for rep in reports) > 100  # an epoch and into the next, in lockstep


def test_a_finite_run_starts_without_counting_and_len_counts_the_rest(tmp_path: Path) -> None:
    """``TokenDataset(epochs=1)`` from an empty folder behind a plain file server (no counts in its answers):
    the first batch reads no footer remotely (it asks only for the files it reads or fetches next, not
    every footer first); ``len(ds)`` asked then learns the rest (remote footers, once each) and is what the iterator
    yields."""
    from nanostream import ByteTokenizer, ReadAhead, Source, TokenDataset

    from datagen import make_shards
    from servers import FaultServer

    make_shards(tmp_path / "remote", 13, row_groups=4, rows=64, record=False)

    async def run() -> tuple[set[str], int, int, int]:
        async with FaultServer(tmp_path / "remote") as srv:
            srv.files.row_groups = False
            kw = dict(data=Source(srv.url, folder=tmp_path / "local", num_shards=12, max_shard=12), epochs=1,
                      buffer_docs=16, read_ahead=ReadAhead(files=1))
            ds = TokenDataset("train", ByteTokenizer(), 4, 64, **kw)
            it = iter(ds)
            await asyncio.to_thread(next, it)
            asked = {r.path.lstrip("/") for r in srv.requests if (r.range or "").startswith("bytes=-")}
            n = await asyncio.to_thread(len, TokenDataset("train", ByteTokenizer(), 4, 64, **kw))
            got = 1 + sum(1 for _ in await asyncio.to_thread(list, it))
            footers = sum(1 for r in srv.requests if (r.range or "").startswith("bytes=-"))
            return asked, n, got, footers

    asked, n, got, footers = asyncio.run(run())
    assert asked == set()  # no footer read before the first batch
    assert n == got > 1
    assert footers <= 12  # each remote footer at most once (the files already local are read there)


def test_a_dataloader_worker_shares_counts_through_its_own_store_client() -> None:
    """A ``StoreSharer`` pickled into another process (a DataLoader worker has no process group) opens its own
    client of the same TCPStore: what it publishes, the main process reads, and the other way round."""
    import pickle

    import torch.distributed as dist

    from nanostream.loader.sharer import StoreSharer

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    sharer = StoreSharer(store)
    sharer.publish("hf://datasets/org/x@abc", {"a.parquet": 3})
    child = ("import pickle, sys; s = pickle.loads(sys.stdin.buffer.read()); "
             "s.publish('hf://datasets/org/x@abc', {'b.parquet': 7}); print(sorted(s.fetch('hf://datasets/org/x@abc')))")
    out = subprocess.run([sys.executable, "-c", child], input=pickle.dumps(sharer), capture_output=True, timeout=100,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode().split() == ["['a.parquet',", "'b.parquet']"]
    assert sharer.fetch("hf://datasets/org/x@abc") == {"a.parquet": 3, "b.parquet": 7}
    assert sharer.fetch("hf://datasets/org/x@abc") == {} and sharer.fetch("another@") == {}
