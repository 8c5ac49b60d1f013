"""stream() on a cluster, on one machine: nodes x ranks as processes with torchrun's environment set by
hand (tests/cluster_worker.py), each node its own data folder, one loopback server counting the bytes
each node was sent; elastic resume 4 -> 2 and 2 -> 4 nodes; and one real two-node torchrun with gloo."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nanostream import Ranks, Source, stream
from nanostream.shards import list_shards, shard_name

from datagen import make_shards
from servers import FaultServer

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("cluster_worker.py")
SHARDS, GROUPS, ROWS = 8, 4, 512  # train shards 0..7 (8 is val), 4 row groups of 512 documents
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cluster") / "remote"
    make_shards(folder, SHARDS + 1, row_groups=GROUPS, rows=ROWS, record=False)
    return folder


def token_host(url: str) -> str:
    """The server's host:port: HF_TOKEN (each node's tag) goes only to hosts opted in like this."""
    return url.split("://", 1)[1].split("/", 1)[0]


def worker_env(rank: int, world: int, per_node: int, token: str, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    return {**env, "PYTHONPATH": str(ROOT / "src"), "RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank % per_node), "LOCAL_WORLD_SIZE": str(per_node),
            "GROUP_RANK": str(rank // per_node), "HF_TOKEN": token, "OMP_NUM_THREADS": "1",
            "NANOSTREAM_TOKEN_HOSTS": token_host(url)}


async def run_cluster(tmp: Path, url: str, nodes: int, tag: str, *, take: int | None = None,
                      resume: dict | None = None, pad: bool = False, per_node: int = 2) -> list[dict]:
    """Every rank of ``nodes`` x ``per_node`` as its own process; node n downloads into tmp/<tag>-n
    with HF_TOKEN=<tag>-n (how the server tells the nodes apart). Returns each rank's report."""
    out = tmp / f"{tag}-out"
    procs = []
    for rank in range(nodes * per_node):
        cmd = [sys.executable, str(WORKER), str(out), "--data-dir", str(tmp / f"{tag}-{rank // per_node}"),
               "--base-url", url, "--num-shards", str(SHARDS), "--max-shard", str(SHARDS), "--shuffle"]
        cmd += ["--take", str(take)] if take is not None else []
        cmd += ["--resume", json.dumps(resume)] if resume is not None else []
        cmd += ["--pad"] if pad else []
        procs.append(await asyncio.create_subprocess_exec(
            *cmd, stderr=subprocess.PIPE, env=worker_env(rank, nodes * per_node, per_node, f"{tag}-{rank // per_node}", url)))
    errs = [(await p.communicate())[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(errs)[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nodes * per_node)]


def docs(reports: list[dict]) -> Counter:
    return Counter(tuple(d) for rep in reports for b in rep["batches"] for d in b[2])


def every_doc() -> set[tuple[int, int, int]]:
    return {(s, g, r) for s in range(SHARDS) for g in range(GROUPS) for r in range(ROWS)}


async def test_four_nodes_each_download_their_share(remote: Path, tmp_path: Path) -> None:
    size = {s: (remote / shard_name(s)).stat().st_size for s in range(SHARDS)}
    async with FaultServer(remote) as srv:
        reports = await run_cluster(tmp_path, srv.url, 4, "n")
    assert docs(reports) == Counter(every_doc())  # every document exactly once across the 8 ranks
    assert {len(r["batches"]) for r in reports} == {r["epoch_length"] for r in reports} == {SHARDS * GROUPS // 8}
    order = stream("train", data=Source(tmp_path / "n-0", num_shards=SHARDS, max_shard=SHARDS), shuffle=True,
                   seed=11, ranks=Ranks(0, 1)).epoch_deal(0).order
    data = sum(size.values())
    for node in range(4):
        mine = sorted(order[2 * node: 2 * node + 2])  # the epoch's order cut into 4 pieces of 2 shards
        assert list_shards(tmp_path / f"n-{node}") == mine
        assert {b[0] for r in reports[2 * node:2 * node + 2] for b in r["batches"]} == set(mine)
        # its shards, plus the footers of the others' it needed before their counts could come otherwise
        assert sum(size[s] for s in mine) < srv.bytes_by[f"n-{node}"] < sum(size[s] for s in mine) + 0.05 * data
    assert sum(srv.bytes_by.values()) <= 1.1 * data + 4 * max(size.values())


@pytest.mark.parametrize("before, after, pad", [(4, 2, False), (2, 4, True)])
async def test_resume_at_another_number_of_nodes_loses_nothing(remote: Path, tmp_path: Path, before: int,
                                                               after: int, pad: bool) -> None:
    async with FaultServer(remote) as srv:
        first = await run_cluster(tmp_path, srv.url, before, "a", take=1)
        cursors = {json.dumps(r["cursor"]) for r in first}
        assert len(cursors) == 1  # every rank computes the same global position
        assert json.loads(cursors.pop())[2] == 2 * before  # consumed: one row group per rank
        # any rank's state resumes the run at another number of nodes (from that global position)
        second = await run_cluster(tmp_path, srv.url, after, "b", resume=first[-1]["state"], pad=pad)
    assert {len(r["batches"]) for r in second} == {second[0]["epoch_length"]}
    before_docs, after_docs = docs(first), docs(second)
    assert not set(before_docs) & set(after_docs)  # the resume repeats nothing already read ...
    assert set(before_docs) | set(after_docs) == every_doc()  # ... and loses nothing
    # 4 -> 2: 24 row groups left for 4 ranks, 6 each. 2 -> 4: 28 left for 8 ranks are not even: drop_last
    # would leave 4 out (3 each); padding reads 4 of them twice instead (4 each)
    assert max(after_docs.values()) == (2 if pad else 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_nodes_two_ranks(remote: Path, tmp_path: Path) -> None:
    """The reference for the simulation: two torchrun launches on loopback, c10d rendezvous, gloo."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    srv_proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "servers.py"), str(remote)],
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        assert srv_proc.stdout is not None
        url = srv_proc.stdout.readline().strip()
        port = free_port()
        out = tmp_path / "out"
        launches = []
        for node in range(2):
            env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
            env.update(PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", HF_TOKEN=f"t-{node}",
                       NANOSTREAM_TOKEN_HOSTS=token_host(url))
            cmd = [torchrun, "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "nanostream-test", "--max-restarts", "0",
                   str(WORKER), str(out), "--data-dir", str(tmp_path / f"t-{node}"), "--base-url", url,
                   "--num-shards", str(SHARDS), "--max-shard", str(SHARDS), "--shuffle", "--dist"]
            launches.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                             env=env))
        try:
            logs = [p.communicate(timeout=100)[0] for p in launches]
        finally:
            for p in launches:
                p.kill()
                p.wait()
        if any(p.returncode for p in launches) and "rendezvous" in "".join(logs).lower() and not out.exists():
            pytest.skip("torchrun could not rendezvous on loopback here: " + logs[0][-300:])
        assert [p.returncode for p in launches] == [0, 0], "\n".join(logs)[-4000:]
    finally:
        srv_proc.terminate()
        srv_proc.communicate()
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(4)]
    assert [(r["world_size"], r["local_world_size"]) for r in reports] == [(4, 2)] * 4
    assert docs(reports) == Counter(every_doc())
    assert {len(r["batches"]) for r in reports} == {r["epoch_length"] for r in reports} == {SHARDS * GROUPS // 4}
    folders = {r["data_dir"] for r in reports[:2]}, {r["data_dir"] for r in reports[2:]}
    assert all(len(f) == 1 for f in folders) and folders[0] != folders[1]  # one folder per node
    on_disk = [set(list_shards(Path(f.pop()))) for f in folders]
    assert on_disk[0].isdisjoint(on_disk[1]) and len(on_disk[0]) == len(on_disk[1]) == SHARDS // 2
