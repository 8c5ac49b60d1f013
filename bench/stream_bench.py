"""Benchmark of ``stream()``: throughput, time to first batch, and memory.

1. Documents/s through ``stream()`` (and the blocking ``iter_batches``) vs a bare
   pyarrow ``read_row_group`` loop over the same files (with pyarrow's default
   ``use_threads=True`` and with ``False``, which is faster for one text column),
   same process, warm page cache, a few alternating rounds. Target: >= 0.9x the
   faster bare loop (median over rounds of the same-round ratio: robust to load
   from other processes on a shared machine).
2. Time to the first batch from an empty folder behind the throttled loopback
   server (``tests/servers.py`` as a subprocess) vs "fetch everything, then read",
   and vs one shard's download time alone (same downloader, same workers).
   Target: first batch within 1.5x of one shard's download. And the issue-15 row: 9 small
   shards (~0.8 MB) behind 1.5 MB/s per connection and 50 ms latency, where reading every
   footer first costs as much as a shard: the first batch over one shard's download,
   median of interleaved rounds. Target <= 1.1.
3. Peak RSS streaming 4 vs 16 shards, each in a fresh subprocess that reports its own
   ``VmHWM`` (``/proc/self/status``: the peak of *its* address space, which starts anew at
   exec; ``ru_maxrss`` would carry the peak of the big bench parent over the exec). Target:
   flat, within 10%.

``python -m bench.stream_bench [--quick]``; ``make bench`` calls ``main(quick)``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import MB, bench_env, make_big_shards, server_subprocess, table, verdict
from nanostream import Ranks, ReadAhead, Source, iter_batches, stream
from nanostream.fetch.many import fetch_shards
from nanostream.shards import shard_name
from nanostream.sources.catalog import numbered_catalog, write_catalog

RATE = 4_000_000  # bytes/s per connection
LATENCY = 0.05
WORKERS = 4


def make_text_shards(folder: Path, n: int, *, row_groups: int, rows: int, words: int, seed: int = 0) -> list[Path]:
    """``n`` shards in the real layout (1024-doc row groups, zstd) of English-ish random word documents."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    weights = np.linspace(2.0, 0.1, len(letters))
    vocab = np.array(["".join(rng.choice(letters, size=int(k), p=weights / weights.sum()))
                      for k in rng.integers(2, 10, size=8000)], dtype=object)
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n):
        texts = []
        for g in range(row_groups):
            lengths = rng.integers(words // 2, words * 3 // 2, size=rows)
            picks = rng.choice(len(vocab), size=int(lengths.sum()), p=zipf / zipf.sum())
            at = 0
            for r, k in enumerate(lengths):
                texts.append(f"doc:{s}:{g}:{r} " + " ".join(vocab[picks[at:at + k]]))
                at += k
        path = folder / shard_name(s)
        pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), path, row_group_size=rows,
                       compression="zstd")
        paths.append(path)
    write_catalog(folder, numbered_catalog(str(folder), "", n))
    return paths


# -- 1. throughput ---------------------------------------------------------------------------------
def bare_loop(paths: list[Path], use_threads: bool = True) -> int:
    docs = 0
    for path in paths:
        pf = pq.ParquetFile(path)
        try:
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g, columns=["text"], use_threads=use_threads)
                docs += len(table.column(0).to_pylist())
        finally:
            pf.close()
    return docs


async def _stream_docs(folder: Path, n: int) -> int:
    return sum([len(b.texts) async for b in stream("train", data=Source(folder, num_shards=n), ranks=Ranks(0, 1))])


def stream_loop(folder: Path, n: int) -> int:
    return asyncio.run(_stream_docs(folder, n))


def blocking_loop(folder: Path, n: int) -> int:
    with iter_batches("train", data=Source(folder, num_shards=n), ranks=Ranks(0, 1)) as it:
        return sum(len(b.texts) for b in it)


BARE = ("pyarrow loop", "pyarrow loop, use_threads=False")


def throughput(folder: Path, n: int, rounds: int) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """Per reader: best-of-``rounds`` (docs/s by wall time, docs per CPU second of this process);
    and per reader the median over rounds of (its docs/s / the faster bare loop's, same round)."""
    paths = [folder / shard_name(i) for i in range(n)]
    runs = {BARE[0]: lambda: bare_loop(paths), BARE[1]: lambda: bare_loop(paths, use_threads=False),
            "stream()": lambda: stream_loop(folder, n), "iter_batches()": lambda: blocking_loop(folder, n)}
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    docs = {}
    bare_loop(paths)  # warm the page cache
    for _ in range(rounds):
        for name, fn in runs.items():  # alternate, so load from elsewhere hits all alike
            t0, c0 = time.perf_counter(), time.process_time()
            docs[name] = fn()
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
    assert len(set(docs.values())) == 1, docs
    best = {name: (docs[name] / min(walls[name]), docs[name] / min(cpus[name])) for name in runs}
    fastest_bare = [min(a, b) for a, b in zip(walls[BARE[0]], walls[BARE[1]], strict=True)]
    ratios = {name: float(np.median([b / w for b, w in zip(fastest_bare, walls[name], strict=True)]))
              for name in runs}
    return best, ratios


# -- 2. time to first batch ------------------------------------------------------------------------
async def _first_batch(local: Path, url: str, n: int) -> float:
    t0 = time.perf_counter()
    async with stream("train", data=Source(url, folder=local, num_shards=n, max_shard=n), ranks=Ranks(0, 1),
                      read_ahead=ReadAhead(connections=WORKERS)) as s:
        async for _ in s:
            return time.perf_counter() - t0
    raise RuntimeError("no batch")


async def _fetch_then_read(local: Path, url: str, n: int) -> float:
    t0 = time.perf_counter()
    results = await fetch_shards(range(n), data_dir=local, base_url=url, workers=WORKERS)
    bad = [r.error for r in results if r.error]
    if bad:
        raise bad[0]
    pf = pq.ParquetFile(local / shard_name(0))
    try:
        pf.read_row_group(0, columns=["text"]).column(0).to_pylist()
    finally:
        pf.close()
    return time.perf_counter() - t0


async def _one_shard(local: Path, url: str) -> float:
    t0 = time.perf_counter()
    [res] = await fetch_shards([0], data_dir=local, base_url=url, workers=WORKERS)
    if res.error:
        raise res.error
    return time.perf_counter() - t0


def first_batch(work: Path, n: int, shard_mb: float) -> dict[str, float]:
    src = work / "remote"
    make_big_shards(src, n + 1, shard_mb)
    out: dict[str, float] = {}
    with server_subprocess(src, rate=RATE, latency=LATENCY) as server:
        for name, fn in (("one shard alone", lambda d: _one_shard(d, server.url)),
                         ("stream(): first batch", lambda d: _first_batch(d, server.url, n)),
                         ("fetch all, then read", lambda d: _fetch_then_read(d, server.url, n))):
            local = work / name.replace(" ", "_").replace(",", "").replace(":", "").replace("()", "")
            out[name] = asyncio.run(fn(local))
            shutil.rmtree(local, ignore_errors=True)
    out["shard_mb"] = sum(p.stat().st_size for p in src.glob("shard_*.parquet")) / (n + 1) / MB
    return out


SMALL_RATE = 1_500_000  # the links: 1.5 MB/s per connection, 50 ms latency


def first_batch_small(work: Path, rounds: int) -> dict[str, float]:
    """First batch vs one shard's download, 9 train shards of ~0.8 MB, interleaved rounds."""
    src = work / "small"
    paths = make_text_shards(src, 10, row_groups=4, rows=1024, words=75)
    (src / ".nanostream.json").unlink()  # a bare remote
    ratios, firsts, ones = [], [], []
    with server_subprocess(src, rate=SMALL_RATE, latency=LATENCY) as server:
        for k in range(rounds):
            one = asyncio.run(_one_shard(work / f"one{k}", server.url))
            first = asyncio.run(_first_batch(work / f"first{k}", server.url, 9))
            ones.append(one)
            firsts.append(first)
            ratios.append(first / one)
    return {"shard_mb": float(np.mean([p.stat().st_size for p in paths])) / MB, "one": float(np.median(ones)),
            "first": float(np.median(firsts)), "ratio": float(np.median(ratios))}


# -- 3. memory ---------------------------------------------------------------------------------------
def vm_hwm() -> int:
    """This process's peak resident set size in bytes (``VmHWM``; Linux only)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_child(folder: Path, n: int) -> None:
    docs = stream_loop(folder, n)
    print(docs, vm_hwm())


def peak_rss(folder: Path, n: int, env: dict[str, str]) -> int:
    out = subprocess.run([sys.executable, "-m", "bench.stream_bench", "--rss-child", str(folder), str(n)],
                         env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[1])


def main(quick: bool = False) -> dict:
    n_tp, rounds = (8, 7) if quick else (16, 7)
    groups, words = (4, 300) if quick else (4, 400)
    shard_mb, n_ttfb = (8.0, 4) if quick else (16.0, 8)
    work = Path(tempfile.mkdtemp(prefix="nanostream-stream-bench-"))
    try:
        print(f"stream bench: writing 17 shards of {groups} x 1024 documents ...", flush=True)
        t0 = time.perf_counter()
        data = work / "data"
        make_text_shards(data, 17, row_groups=groups, rows=1024, words=words)
        print(f"stream bench: ({time.perf_counter() - t0:.1f}s) throughput ...", flush=True)
        tp, per_round = throughput(data, n_tp, rounds)
        print("stream bench: memory (fresh subprocesses) ...", flush=True)
        env = bench_env(work / "base")
        rss = {n: peak_rss(data, n, env) for n in (4, 16)}
        print("stream bench: time to first batch ...", flush=True)
        ttfb = first_batch(work / "ttfb", n_ttfb, shard_mb)
        small = first_batch_small(work / "ttfb-small", 3 if quick else 5)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # the baseline is the faster of the two bare loops (stream() reads with use_threads=False)
    base = max(tp[BARE[0]][0], tp[BARE[1]][0])
    base_cpu = max(tp[BARE[0]][1], tp[BARE[1]][1])
    ratio = per_round["stream()"]
    ratio_blocking = per_round["iter_batches()"]
    rows = [[name, f"{v:,.0f}", f"{v / base:.2f}x", f"{per_round[name]:.2f}x", f"{c:,.0f}", f"{c / base_cpu:.2f}x"]
            for name, (v, c) in tp.items()]
    print(f"\nstream throughput: {n_tp} shards x {groups} row groups x 1024 docs (~{words * 6} chars each), "
          f"{rounds} alternating rounds (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(table(["reader", "best docs/s", "vs best bare", "median per round", "docs/CPU s", "vs best bare"], rows))
    one, first, every = ttfb["one shard alone"], ttfb["stream(): first batch"], ttfb["fetch all, then read"]
    print(f"\ntime to first batch: {n_ttfb} train shards of {ttfb['shard_mb']:.1f} MB, {WORKERS} connections "
          f"at {RATE / MB:g} MB/s each, {LATENCY * 1000:.0f} ms latency")
    print(table(["", "seconds", "vs one shard"],
                [[k, f"{v:.2f}", f"{v / one:.2f}x"] for k, v in ttfb.items() if k != "shard_mb"]))
    print(f"\ntime to first batch, small shards: 9 train shards of {small['shard_mb']:.2f} MB, {WORKERS} connections at "
          f"{SMALL_RATE / MB:g} MB/s each, {LATENCY * 1000:.0f} ms latency: first batch {small['first']:.2f} s, one "
          f"shard {small['one']:.2f} s (medians), {small['ratio']:.2f}x (median of the rounds' ratios)")
    flat = rss[16] / rss[4]
    print(f"\npeak RSS streaming 4 shards: {rss[4] / MB:.0f} MB, 16 shards: {rss[16] / MB:.0f} MB "
          f"({flat:.2f}x)")
    targets = {
        "stream() >= 0.9x the faster bare pyarrow loop (docs/s, median per round)": ratio >= 0.9,
        "first batch within 1.5x of one shard's download": first <= 1.5 * one,
        "small shards: first batch <= 1.1x one shard's download (footers read alongside)": small["ratio"] <= 1.1,
        "peak RSS flat (16 vs 4 shards within 10%)": flat <= 1.10,
    }
    for name, ok in targets.items():
        print(f"  {verdict(ok)}  {name}")
    return {
        "docs_per_s": {k: round(v) for k, (v, _) in tp.items()},
        "docs_per_cpu_s": {k: round(c) for k, (_, c) in tp.items()},
        "stream_over_best_pyarrow": round(ratio, 3),
        "iter_batches_over_best_pyarrow": round(ratio_blocking, 3),
        "first_batch_s": round(first, 3),
        "one_shard_s": round(one, 3),
        "fetch_all_then_read_s": round(every, 3),
        "first_batch_over_one_shard": round(first / one, 2),
        "small_first_batch_over_one_shard": round(small["ratio"], 2),
        "peak_rss_mb": {n: round(v / MB, 1) for n, v in rss.items()},
        "rss_16_over_4": round(flat, 3),
        "targets": targets,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shards and fewer of them")
    parser.add_argument("--rss-child", nargs=2, metavar=("DIR", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(Path(args.rss_child[0]), int(args.rss_child[1]))
    else:
        main(quick=args.quick)
