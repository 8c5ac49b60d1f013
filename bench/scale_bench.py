"""Benchmark part ``scale``: ClimbMix's scale behind a Hub double, today's code against this one (issue 22).

Nodes are processes (``tests/scale_worker.py``) reading the built-in ``climbmix-400b`` from an empty folder
each, from ``tests/hubserver.py`` serving numbered shards (52 row groups of 24 documents, made on
request) as ``karpathy/climbmix-400b-shuffle`` and answering every request in 50 ms, as the real Hub
does. Nodes tell each other apart to the double by their HF_TOKEN. "today" is main at df8d4ea
(``git archive`` into a temporary folder), run against the same double in the same run.

1. First batch (``TokenDataset``) at 100 / 1,000 / 6,543 shards: seconds, /resolve/ requests before it,
   peak RSS then. Target: <= max(2 s, 1.2x one shard's download alone, measured with the same
   downloader: the built-in dataset has no listing), flat in the shard count; <= 4 /resolve/ requests;
   RSS at 6,543 shards <= 1.2x at 100.
2. 654 shards under 300 resolver requests per 30 s for the address (the anonymous quota / 10), 1 node and
   2 nodes (torch.distributed, gloo) behind it: first batch <= 10 s on every node, no 429. Today's code
   takes a minute and two here: it runs with ``--today`` only.
3. ``/resolve/`` requests per node over an epoch (``iter_batches``, 654 shards, 1 node, and 2 nodes in
   lockstep sharing counts): <= its shards + 16.

``python -m bench.scale_bench [--quick] [--today]``; ``make bench`` calls ``main(quick)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.common import ROOT, TESTS, bench_env, stop_process, table, verdict

TODAY = "df8d4ea"
REPO = "karpathy/climbmix-400b-shuffle"
WORKER = TESTS / "scale_worker.py"


@contextlib.contextmanager
def hub(quota: str | None = None, latency: float = 0.05) -> Iterator[str]:
    """tests/hubserver.py in a subprocess serving the numbered shards; yields its URL."""
    cmd = [sys.executable, str(TESTS / "hubserver.py"), "--numbered", f"{REPO}=6543", "--latency", str(latency)]
    cmd += ["--quota", quota] if quota else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=bench_env(Path(tempfile.gettempdir())))
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"hub double did not print its URL (got {url!r})")
        yield url
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/_hub/reset", method="POST"), timeout=30).close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nodes(url: str, src: Path, work: Path, shards: int, count: int, *extra: str) -> list[dict]:
    """``count`` nodes of ``scale_worker.py`` on the code in ``src``, each its own empty folder."""
    port, procs = free_port(), []
    for rank in range(count):
        env = bench_env(work / "base")
        env.update(PYTHONPATH=os.pathsep.join((str(src), str(ROOT))), HF_ENDPOINT=url, HF_TOKEN=f"node-{rank}",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(count),
                   LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", GROUP_RANK=str(rank), OMP_NUM_THREADS="1")
        folder = work / f"node{rank}"
        shutil.rmtree(folder, ignore_errors=True)
        cmd = [sys.executable, str(WORKER), str(work / f"out{rank}.json"), str(folder), str(shards), *extra]
        procs.append(subprocess.Popen(cmd + (["--dist"] if count > 1 else []), env=env, stderr=subprocess.PIPE,
                                      text=True))
    errs = [p.communicate(timeout=900)[1] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("a node failed:\n" + "\n".join(e[-3000:] for e in errs))
    return [json.loads((work / f"out{r}.json").read_text()) for r in range(count)]


def old_code(work: Path) -> Path:
    """The library as of TODAY, from git, in a folder of its own (its ``src``)."""
    dest = work / "today"
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", TODAY, "src"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def one_download(url: str, work: Path) -> float:
    """Seconds to download one shard alone from the double (nanostream's downloader, 4 connections)."""
    from nanostream.fetch.many import fetch_shards

    folder = work / "one"
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    results = asyncio.run(fetch_shards([0], data_dir=folder, base_url=f"{url}/datasets/{REPO}/resolve/main",
                                       workers=4))
    if results[0].error:
        raise results[0].error
    return time.perf_counter() - t0


def first_batches(work: Path, srcs: dict[str, Path], counts: list[int]) -> bool:
    print("\n1. first batch from an empty folder, Hub double answering in 50 ms (1 node)")
    rows: list[list] = []
    with hub() as url:
        dl = min(one_download(url, work) for _ in range(3))
        limit = max(2.0, 1.2 * dl)
        got: dict[tuple[str, int], dict] = {}
        for shards in counts:
            for label, src in srcs.items():
                reset(url)
                rep = nodes(url, src, work, shards - 1, 1)[0]
                got[(label, shards)] = rep
                rows.append([label, shards, rep["first_batch_s"], rep["hub_after_first"]["resolve"], rep["rss_mb"]])
    print(table(["code", "shards", "first batch s", "/resolve/ before it", "RSS MB"], rows))
    new = [got[("nanostream", n)] for n in counts]
    fast = all(r["first_batch_s"] <= limit for r in new)
    few = all(r["hub_after_first"]["resolve"] <= 4 for r in new)
    flat = new[-1]["rss_mb"] <= 1.2 * new[0]["rss_mb"]
    print(f"one shard's download alone: {dl:.2f}s; target first batch <= {limit:.2f}s at every size: "
          f"{verdict(fast)}; <= 4 /resolve/ before it: {verdict(few)}; RSS {new[-1]['rss_mb']:.0f} MB at "
          f"{counts[-1]} vs {new[0]['rss_mb']:.0f} MB at {counts[0]} shards (<= 1.2x): {verdict(flat)}")
    return fast and few and flat


def under_quota(work: Path, srcs: dict[str, Path]) -> bool:
    print("\n2. 654 shards, 300 resolver requests per 30 s for the address, nodes behind it")
    rows, ok = [], True
    for label, src in srcs.items():
        for count in (1, 2):
            with hub(quota="resolvers=300/30") as url:
                reps = nodes(url, src, work, 653, count)
                stats = reps[0]["hub_at_end"]
            worst = max(r["first_batch_s"] for r in reps)
            rows.append([label, count, worst, max(r["hub_after_first"]["resolve_by"].get(f"node-{i}", 0)
                                                  for i, r in enumerate(reps)), stats["limited"]])
            if label == "nanostream":
                ok = ok and worst <= 10 and stats["limited"] == 0
    print(table(["code", "nodes", "first batch s (slowest node)", "/resolve/ before it (a node)", "429s"], rows))
    print(f"target first batch <= 10 s on every node, no 429: {verdict(ok)}")
    return ok


def over_an_epoch(work: Path, srcs: dict[str, Path], shards: int) -> bool:
    print(f"\n3. /resolve/ requests per node over an epoch of {shards} shards (iter_batches, 50 ms answers)")
    rows, ok = [], True
    for label, src in srcs.items():
        for count in (1, 2):
            with hub() as url:
                reps = nodes(url, src, work, shards - 1, count, "--epoch")
                by = reps[0]["hub_at_end"]["resolve_by"]
            for rank in range(count):
                own = len([f for f in os.listdir(work / f"node{rank}") if f.endswith(".parquet")])
                n = by.get(f"node-{rank}", 0)
                rows.append([label, count, rank, own, n, reps[rank]["steps"], reps[rank]["epoch_s"]])
                if label == "nanostream":
                    ok = ok and n <= own + 16
    print(table(["code", "nodes", "node", "its shards", "/resolve/", "row groups", "epoch s"], rows))
    print(f"target /resolve/ per node <= its shards + 16: {verdict(ok)}")
    return ok


def main(quick: bool = False, today: bool = False) -> None:
    work = Path(tempfile.mkdtemp(prefix="nanostream-scale."))
    try:
        srcs = {"today": old_code(work), "nanostream": ROOT / "src"}
        counts = [100, 1000] if quick else [100, 1000, 6543]
        results = [first_batches(work, srcs, counts),
                   under_quota(work, srcs if today else {"nanostream": srcs["nanostream"]}),
                   over_an_epoch(work, srcs, 100 if quick else 654)]
        print(f"\nscale: {verdict(all(results))}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.scale_bench")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--today", action="store_true", help="also run today's code under the quota (~3 min)")
    a = p.parse_args()
    main(quick=a.quick, today=a.today)
