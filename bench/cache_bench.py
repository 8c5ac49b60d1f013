"""Streaming under ``cache_limit``: 16 train shards through a quarter of their size, 2 epochs, 2 ranks on one folder.

Two ranks (tests/cluster_worker.py, torchrun's environment set by hand) share one empty data
folder behind a throttled loopback server (tests/servers.py in a subprocess, RATE bytes/s per
connection). Each rank "trains" ``DELAY`` seconds per batch, either in lockstep (``--sync``: a
gloo all-reduce after every batch, as DDP keeps ranks in step) or without a barrier at the same
mean speed (``--drift``: steps of 0.5 and 1.5 x ``DELAY`` by turns, ``DRIFT`` batches each,
the two ranks in opposite phase, so they drift apart by several files and back). While they
run this process samples the folder's bytes on disk (every file, as allocated) every 10 ms.

Rows (each run is the same data, seed and layout; the figures of a row are medians of ROUNDS
interleaved rounds):

* limit = a quarter of the data vs unbounded, link faster than consumption: peak bytes vs the
  limit, documents read each epoch, bytes served vs the data (and the bytes saved by files kept
  for the next epoch's first reads), batches/s against the unbounded run (target >= 0.95x);
* the same with a link slower than consumption: the data wait the limit adds;
* both links with the ranks drifting apart (no barrier): bytes served (each file once per
  epoch: <= 2.3x the data), and the files downloaded more than once in an epoch;
* Belady vs LRU eviction (``NANOSTREAM_CACHE_POLICY=lru``) on the fast-link run: bytes served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.common import MB, ROOT, TESTS, server_subprocess, table, verdict

SHARDS, RANKS, EPOCHS = 16, 2, 2
FAST, SLOW = 16_000_000, 600_000  # bytes/s per connection (the downloader opens up to 4 per file)
DELAY = 0.05  # seconds of "training" per batch
DRIFT = 32  # batches of each speed in the runs without a barrier (half an epoch of a rank)


def make_data(folder: Path, groups: int, rows: int, filler: int) -> list[int]:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from datagen import make_dense_shards

    paths = make_dense_shards(folder, SHARDS + 1, row_groups=groups, rows=rows, filler=filler)
    return [p.stat().st_size for p in paths[:SHARDS]]


def folder_bytes(folder: Path) -> int:
    from nanostream.streaming.cache.usage import folder_bytes as measure

    return measure(folder) if folder.exists() else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_ranks(work: Path, url: str, tag: str, limit: int | None, policy: str = "belady",
                    delay: float = DELAY, sync: bool = True) -> tuple[list[dict], int]:
    """One run of both ranks into an empty folder; (reports, peak folder bytes sampled every 10 ms)."""
    folder, out, port = work / tag, work / f"{tag}-out", free_port()
    shutil.rmtree(folder, ignore_errors=True)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], folder_bytes(folder))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    procs = []
    try:
        for rank in range(RANKS):
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RANK": str(rank), "WORLD_SIZE": str(RANKS),
                   "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(RANKS), "GROUP_RANK": "0",
                   "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "NANOSTREAM_CACHE_POLICY": policy}
            env.pop("NANOSTREAM_CACHE_LIMIT", None)
            cmd = [sys.executable, str(TESTS / "cluster_worker.py"), str(out), "--data-dir", str(folder),
                   "--base-url", url, "--num-shards", str(SHARDS), "--max-shard", str(SHARDS), "--shuffle",
                   "--epochs", str(EPOCHS), "--delay", str(delay)]
            cmd += ["--sync"] if sync else ["--drift", str(DRIFT)]
            cmd += ["--cache-limit", str(limit)] if limit is not None else []
            procs.append(await asyncio.create_subprocess_exec(*cmd, stderr=subprocess.PIPE, env=env))
        errs = [(await p.communicate())[1].decode() for p in procs]
    finally:
        stop.set()
        sampler.join()
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a rank of {tag} failed:\n" + "\n".join(errs)[-3000:])
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(RANKS)]
    shutil.rmtree(folder, ignore_errors=True)
    return reports, peak[0]


def summarize(reports: list[dict], peak: int, served: int, files: dict[str, int]) -> dict:
    docs = Counter((b[3], *d) for r in reports for b in r["batches"] for d in b[2])
    batches = sum(len(r["batches"]) for r in reports) / len(reports)
    wall = max(r["wall_s"] for r in reports)
    return {"peak": peak, "served": served, "files": files, "docs": len(docs), "twice": max(docs.values()) - 1,
            "bps": batches / wall, "wait": statistics.mean(r["wait_s"] for r in reports), "wall": wall}


async def one(work: Path, remote: Path, rate: int, tag: str, limit: int | None, policy: str = "belady",
              delay: float = DELAY, sync: bool = True) -> dict:
    with server_subprocess(remote, rate=rate) as srv:
        before = srv.stats()
        reports, peak = await run_ranks(work, srv.url, tag, limit, policy, delay, sync)
        after = srv.stats()
    files = {k: v - before["files"].get(k, 0) for k, v in after["files"].items()}
    return summarize(reports, peak, after["bytes_sent"] - before["bytes_sent"], files)


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def again(run: dict, sizes: list[int]) -> int:
    """Files served more than once per epoch (whole downloads beyond ``EPOCHS``, from the server's bytes)."""
    return sum(max(0, round(run["files"].get(f"shard_{i:05d}.parquet", 0) / s) - EPOCHS) for i, s in enumerate(sizes))


def main(quick: bool = False) -> dict:
    rounds, (groups, rows, filler) = (1, (8, 128, 1000)) if quick else (3, (8, 256, 1000))
    work = Path(tempfile.mkdtemp(prefix="nanostream-cache-bench-"))
    try:
        print(f"cache bench: writing {SHARDS + 1} shards of {groups} x {rows} documents ...", flush=True)
        sizes = make_data(work / "remote", groups, rows, filler)
        data, limit = sum(sizes), sum(sizes) // 4
        every = EPOCHS * SHARDS * groups * rows
        print(f"cache bench: {SHARDS} shards, {data / MB:.1f} MB, cache_limit {limit / MB:.1f} MB (a quarter), "
              f"{RANKS} ranks in step, {EPOCHS} epochs, {DELAY * 1000:.0f} ms per batch; {rounds} round(s)",
              flush=True)
        fast: dict[str, list[dict]] = {"unbounded": [], "limit": []}
        for _ in range(rounds):  # interleaved: the machine's noise falls on both alike
            fast["unbounded"].append(asyncio.run(one(work, work / "remote", FAST, "fu", None)))
            fast["limit"].append(asyncio.run(one(work, work / "remote", FAST, "fl", limit)))
        lru = asyncio.run(one(work, work / "remote", FAST, "lru", limit, "lru"))
        slow = {"unbounded": asyncio.run(one(work, work / "remote", SLOW, "su", None)),
                "limit": asyncio.run(one(work, work / "remote", SLOW, "sl", limit))}
        drift = {"fast": asyncio.run(one(work, work / "remote", FAST, "fd", limit, sync=False)),
                 "slow": asyncio.run(one(work, work / "remote", SLOW, "sd", limit, sync=False))}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ncache_limit {limit / MB:.2f} MB = a quarter of {data / MB:.2f} MB; link {FAST / MB:g} MB/s per "
          f"connection (faster than the {data / (SHARDS * groups / RANKS * DELAY) / MB:.1f} MB/s consumed) "
          f"or {SLOW / MB:g} MB/s (slower)")
    rows_out = []
    for name, runs, link in (("unbounded", fast["unbounded"], "fast"), ("cache_limit", fast["limit"], "fast"),
                             ("cache_limit, LRU", [lru], "fast"), ("cache_limit, no barrier", [drift["fast"]], "fast"),
                             ("unbounded", [slow["unbounded"]], "slow"), ("cache_limit", [slow["limit"]], "slow"),
                             ("cache_limit, no barrier", [drift["slow"]], "slow")):
        rows_out.append([name, link, f"{med(runs, 'peak') / MB:.2f}", f"{med(runs, 'served') / MB:.2f}",
                         f"{med(runs, 'served') / data:.2f}x", f"{statistics.median(again(r, sizes) for r in runs):.0f}",
                         f"{med(runs, 'docs'):,.0f}", f"{med(runs, 'bps'):.2f}", f"{med(runs, 'wait'):.2f}"])
    print(table(["run", "link", "peak MB", "served MB", "vs data", "files again in an epoch", "docs read",
                 "batches/s/rank", "data wait s"], rows_out))
    bl = fast["limit"]
    kept = [statistics.median(max(0, 2 * s - r["files"].get(f"shard_{i:05d}.parquet", 0)) for r in bl)
            for i, s in enumerate(sizes)]
    ratio = med(bl, "bps") / med(fast["unbounded"], "bps")
    added = slow["limit"]["wait"] - slow["unbounded"]["wait"]
    print(f"  kept for the next epoch's first reads (not downloaded again): {sum(k > 0.5 * s for k, s in zip(kept, sizes, strict=True))} "
          f"file(s), {sum(kept) / MB:.2f} MB saved of {2 * data / MB:.2f} MB for two full downloads")
    print(f"  batches/s under the limit vs unbounded (fast link): {ratio:.3f}x; slow link: the limit adds "
          f"{added:+.2f} s of data wait per rank ({slow['limit']['wait']:.2f} vs {slow['unbounded']['wait']:.2f} s)")
    print(f"  Belady vs LRU (fast link): {med(bl, 'served') / MB:.2f} MB vs {lru['served'] / MB:.2f} MB served "
          f"({lru['served'] / med(bl, 'served'):.2f}x)")
    bounded = [*bl, lru, slow["limit"], drift["fast"], drift["slow"]]
    targets = {
        "peak folder bytes (sampled every 10 ms) <= cache_limit, every run": all(r["peak"] <= limit for r in bounded),
        "every document read each epoch, none twice": all(r["docs"] == every and r["twice"] == 0 for r in bounded),
        "bytes served <= 2.3 x data, ranks in lockstep (fast and slow link)": max(
            r["served"] for r in [*bl, slow["limit"]]) <= 2.3 * data,
        "bytes served <= 2.3 x data, no barrier, same mean speed (fast and slow link)": max(
            r["served"] for r in drift.values()) <= 2.3 * data,
        "batches/s >= 0.95 x unbounded (fast link)": ratio >= 0.95,
        "Belady serves no more than LRU": med(bl, "served") <= lru["served"],
    }
    for name, ok in targets.items():
        print(f"  {verdict(ok)}  {name}")
    return {"data_mb": round(data / MB, 2), "limit_mb": round(limit / MB, 2), "ratio": round(ratio, 3),
            "served_x": round(med(bl, "served") / data, 3), "lru_x": round(lru["served"] / data, 3),
            "slow_x": round(slow["limit"]["served"] / data, 3),
            "drift_x": {k: round(r["served"] / data, 3) for k, r in drift.items()},
            "added_wait_s": round(added, 2), "targets": targets}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shards, one round")
    main(quick=parser.parse_args().quick)
