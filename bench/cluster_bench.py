"""Bytes each node downloads in a simulated 4-node x 2-rank cluster, node-aware vs every node reading all.

Eight processes (tests/cluster_worker.py) with torchrun's environment set by hand,
each node its own empty data folder, one loopback server (tests/servers.py
``FaultServer``) counting the bytes sent to each node (told apart by HF_TOKEN).
One epoch of ``stream()``, shuffled. The baseline is the same cluster dealt as one
node (LOCAL_WORLD_SIZE = WORLD_SIZE: the rule before node-aware striding), where
every node downloads every shard. Same run, same data.

The server sends at most RATE bytes/s per connection, as a remote does: unthrottled on
loopback, a shard split over several connections (the downloader's work stealing)
makes the server push megabytes into socket buffers past the point where the first
connection's range was cut, and those count as served although nobody reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import MB, ROOT, TESTS, table, verdict
from bench.stream_bench import make_text_shards

NODES, PER_NODE = 4, 2
RATE = 4_000_000  # bytes/s per connection, as in the fetch and stream benches


async def run_cluster(work: Path, url: str, shards: int, tag: str, *, node_aware: bool) -> tuple[list[dict], float]:
    world = NODES * PER_NODE
    out = work / f"{tag}-out"
    procs = []
    t0 = time.perf_counter()
    for rank in range(world):
        node = rank // PER_NODE
        local = PER_NODE if node_aware else world
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_RANK": str(rank % local), "LOCAL_WORLD_SIZE": str(local), "GROUP_RANK": str(rank // local),
               "HF_TOKEN": f"{tag}-{node}", "OMP_NUM_THREADS": "1",
               "NANOSTREAM_TOKEN_HOSTS": url.split("://", 1)[1].split("/", 1)[0]}  # tokens tell nodes apart
        cmd = [sys.executable, str(TESTS / "cluster_worker.py"), str(out), "--data-dir", str(work / f"{tag}-{node}"),
               "--base-url", url, "--num-shards", str(shards), "--max-shard", str(shards), "--shuffle"]
        procs.append(await asyncio.create_subprocess_exec(*cmd, stderr=subprocess.PIPE, env=env))
    errs = [(await p.communicate())[1].decode() for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise RuntimeError("a cluster worker failed:\n" + "\n".join(errs)[-3000:])
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)], wall


async def measure(work: Path, shards: int) -> dict:
    sys.path.insert(0, str(TESTS))
    from servers import FaultServer

    remote = work / "remote"
    results = {}
    async with FaultServer(remote, rate=RATE) as srv:
        for tag, aware in (("one-node", False), ("node-aware", True)):
            before = dict(srv.bytes_by)
            reports, wall = await run_cluster(work, srv.url, shards, tag, node_aware=aware)
            per_node = [srv.bytes_by[f"{tag}-{n}"] - before.get(f"{tag}-{n}", 0) for n in range(NODES)]
            docs = Counter(tuple(d) for r in reports for b in r["batches"] for d in b[2])
            results[tag] = {"per_node": per_node, "wall_s": wall, "docs": sum(docs.values()),
                            "max_reads": max(docs.values()), "batches": sorted({len(r["batches"]) for r in reports})}
    return results


def main(quick: bool = False) -> dict:
    shards, groups, words = (8, 8, 50) if quick else (16, 8, 150)  # 8 row groups: one each in the baseline
    work = Path(tempfile.mkdtemp(prefix="nanostream-cluster-bench-"))
    try:
        print(f"cluster bench: writing {shards + 1} shards of {groups} x 1024 documents ...", flush=True)
        paths = make_text_shards(work / "remote", shards + 1, row_groups=groups, rows=1024, words=words)
        (work / "remote" / ".nanostream.json").unlink()  # a bare remote, like the Hub's folder
        sizes = [p.stat().st_size for p in paths[:shards]]
        print(f"cluster bench: {NODES} nodes x {PER_NODE} ranks, one epoch, twice ...", flush=True)
        res = asyncio.run(measure(work, shards))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data, shard = sum(sizes), max(sizes)
    print(f"\nbytes served per node: {shards} train shards, {data / MB:.1f} MB in all ({shard / MB:.2f} MB the largest), "
          f"{NODES} nodes x {PER_NODE} ranks, shuffled, one epoch, {RATE / MB:g} MB/s per connection")
    rows = []
    for tag, r in res.items():
        total = sum(r["per_node"])
        rows.append([tag, *[f"{b / MB:.2f}" for b in r["per_node"]], f"{total / MB:.2f}", f"{total / data:.2f}x",
                     f"{r['wall_s']:.1f}", str(r["batches"]), str(r["docs"]), str(r["max_reads"])])
    print(table(["dealing", *[f"node {n} MB" for n in range(NODES)], "total MB", "vs data", "wall s",
                 "batches/rank", "docs read", "max reads/doc"], rows))
    aware = res["node-aware"]
    targets = {
        "node-aware: bytes served <= 1.1 x data + one shard per node": sum(aware["per_node"]) <= 1.1 * data + NODES * shard,
        "node-aware: every node <= its quarter + one shard": max(aware["per_node"]) <= data / NODES + shard,
        "node-aware: equal batches on every rank, every document at most once": len(aware["batches"]) == 1
        and aware["max_reads"] == 1,
        "node-aware: every document read but at most ranks-1 row groups": aware["docs"]
        >= shards * groups * 1024 - (NODES * PER_NODE - 1) * 1024,
    }
    for name, ok in targets.items():
        print(f"  {verdict(ok)}  {name}")
    print(f"  documents read by node-aware: {aware['docs']:,} of {shards * groups * 1024:,}")
    return {"data_mb": round(data / MB, 2),
            "per_node_mb": {t: [round(b / MB, 2) for b in r["per_node"]] for t, r in res.items()},
            "targets": targets}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller shards")
    main(quick=parser.parse_args().quick)
