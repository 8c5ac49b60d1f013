"""Fetch benchmark: ``nanostream fetch`` vs the reference ``multiprocessing.Pool`` downloader.

Both download the same 17 parquet shards (16 train + 1 validation) from a
throttled loopback server running in its own subprocess (``tests/servers.py``:
RATE bytes/s per connection, LATENCY s before each response), so the server's
CPU is counted against neither client. Each client runs as a subprocess and is
measured for wall time, MB/s, CPU seconds and peak RSS of its whole process
tree; both outputs are checked byte-identical to the source files.

    python -m bench.fetch_bench [--quick]

Targets (printed PASS/FAIL, never asserted): nanostream >= 1.5x faster than the
pool, within 1.3x of ideal (total bytes / (16 x RATE) + LATENCY), less CPU and
less memory than the pool; the default event loop is the faster one.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench.common import (
    MB,
    RunStats,
    bench_env,
    identical,
    make_big_shards,
    measure,
    server_subprocess,
    table,
    verdict,
)

RATE = 4_000_000  # bytes/s per connection
LATENCY = 0.05  # seconds before each response
WORKERS = 16
TRAIN = 16  # train shards 0..15; shard 16 is validation: 17 files in all


def _default_loop() -> str:
    from nanostream.config import Config

    return Config().loop


def main(quick: bool = False) -> dict:
    shard_mb = 8.0 if quick else 16.0
    work = Path(tempfile.mkdtemp(prefix="nanostream-fetch-bench-"))
    try:
        src = work / "remote"
        print(f"fetch bench: writing {TRAIN + 1} shards of ~{shard_mb:g} MB ...", flush=True)
        shards = make_big_shards(src, TRAIN + 1, shard_mb)
        total = sum(p.stat().st_size for p in shards)
        ideal = total / (WORKERS * RATE) + LATENCY
        env = bench_env(work / "base")
        py = sys.executable
        default_loop = _default_loop()
        runs: dict[str, tuple[RunStats, bool]] = {}
        server_cpus: dict[str, float] = {}
        with server_subprocess(src, rate=RATE, latency=LATENCY) as server:
            url = server.url
            commands = {
                "pool (reference)": [py, "-m", "bench.baseline_pool", url, "{dir}", str(TRAIN + 1), str(WORKERS)],
            }
            for loop in ("asyncio", "uvloop"):
                commands[f"nanostream --loop {loop}"] = [
                    py, "-m", "nanostream.cli", "fetch", "-n", str(TRAIN), "--workers", str(WORKERS),
                    "--max-shard", str(TRAIN), "--base-url", url, "--data-dir", "{dir}", "--quiet", "--loop", loop]
            for i, (label, cmd) in enumerate(commands.items()):
                out = work / f"out{i}"
                print(f"fetch bench: running {label} ...", flush=True)
                server_cpu = server.cpu()
                stats = measure([c.replace("{dir}", str(out)) for c in cmd], env=env)
                server_cpus[label] = server.cpu() - server_cpu
                if stats.returncode != 0:
                    print(f"fetch bench: {label} exited {stats.returncode}: {stats.stderr.strip()[-2000:]}",
                          file=sys.stderr)
                runs[label] = (stats, stats.returncode == 0 and identical(shards, out))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    pool = runs["pool (reference)"][0]
    ns_label = f"nanostream --loop {default_loop}"
    ns = runs[ns_label][0]
    rows = [["ideal", f"{ideal:.2f}", f"{total / MB / ideal:.1f}", "-", "-", "-", "-", "-"]]
    for label, (s, ok) in runs.items():
        rows.append([label, f"{s.wall:.2f}", f"{total / MB / s.wall:.1f}", f"{s.cpu:.2f} ({s.cpu_user:.2f}+{s.cpu_sys:.2f})",
                     f"{s.peak_rss / MB:.0f}", f"{s.peak_pss / MB:.0f}", "yes" if ok else "NO", f"{server_cpus[label]:.2f}"])
    print(f"\nfetch: {TRAIN + 1} shards, {total / MB:.1f} MB, {WORKERS} workers, "
          f"{RATE / MB:g} MB/s per connection, {LATENCY * 1000:.0f} ms latency")
    print(table(["client", "wall s", "MB/s", "CPU s (user+sys)", "peak RSS MB", "peak PSS MB", "identical", "server CPU s"], rows))
    other = "uvloop" if default_loop == "asyncio" else "asyncio"
    faster = min(("asyncio", "uvloop"), key=lambda lp: runs[f"nanostream --loop {lp}"][0].wall)
    speedup = pool.wall / ns.wall
    vs_ideal = ns.wall / ideal
    targets = {
        "nanostream >= 1.5x faster than pool": speedup >= 1.5,
        "nanostream within 1.3x of ideal": vs_ideal <= 1.3,
        "nanostream less CPU than pool": ns.cpu < pool.cpu,
        "nanostream less memory than pool": ns.peak_rss < pool.peak_rss,
        "all outputs byte-identical": all(ok for _, ok in runs.values()),
        f"default loop ({default_loop}) faster than {other}": faster == default_loop,
    }
    print(f"pool / nanostream wall: {speedup:.2f}x   nanostream / ideal: {vs_ideal:.2f}x   "
          f"faster loop: {faster}")
    for name, ok in targets.items():
        print(f"  {verdict(ok)}  {name}")
    return {
        "shards": TRAIN + 1,
        "total_mb": round(total / MB, 1),
        "rate_mb_s_per_conn": RATE / MB,
        "latency_s": LATENCY,
        "ideal_s": round(ideal, 3),
        "runs": {label: {"wall_s": round(s.wall, 3), "mb_s": round(total / MB / s.wall, 1), "cpu_s": round(s.cpu, 3),
                         "cpu_user_s": round(s.cpu_user, 3), "cpu_sys_s": round(s.cpu_sys, 3),
                         "peak_rss_mb": round(s.peak_rss / MB, 1),
                         "peak_pss_mb": round(s.peak_pss / MB, 1), "identical": ok,
                         "server_cpu_s": round(server_cpus[label], 3)}
                 for label, (s, ok) in runs.items()},
        "pool_over_nanostream": round(speedup, 2),
        "nanostream_over_ideal": round(vs_ideal, 2),
        "default_loop": default_loop,
        "faster_loop": faster,
        "targets": targets,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 MB shards instead of 16 MB")
    main(quick=parser.parse_args().quick)
