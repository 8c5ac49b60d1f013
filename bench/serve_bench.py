"""Serve benchmark: ``nanostream serve`` as a cluster mirror vs ``python -m http.server`` and nginx.

1. Throughput: 16 ``curl`` processes on loopback, each fetching a distinct ~32 MB file
   (16 MB with ``--quick``) from the server, all at once. Servers take turns round by
   round (interleaved); the figure is the median over rounds of total bytes / wall time
   of the round. Every download's size is checked, and one file's sha256 per server.
   The server's CPU seconds per GB come from its process tree.
2. 1000 concurrent ranged GETs (4 MiB each) from one aiohttp client process: every
   answer is checked (206, 4 MiB) and the server's peak RSS and open file
   descriptors (its process tree, sampled every 20 ms) are reported. nanostream runs
   with its default ``--max-connections 256``; nginx (``worker_connections 1100``)
   for reference.

``python -m http.server`` runs one thread per connection; nginx (when installed:
``apt-get install nginx-light``) runs ``worker_processes 1`` with ``sendfile on``, from a
temporary config on a loopback port, so each server gets one core, as nanostream has.

    python -m bench.serve_bench [--quick]

On a small loopback machine the kernel's copying and the 16 curls take most of the
CPU, so throughputs come out close; the server's CPU seconds per GB tell the
servers apart better.

Targets (printed PASS/FAIL, never asserted): nanostream >= 0.8x the faster of
http.server and single-worker nginx (the mirror is not the bottleneck); the 1000 GETs all succeed, with fds <= 2 x 256 + 64
(bounded by the cap) and peak RSS < 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from bench.common import MB, bench_env, sha256, stop_process, table, verdict

FETCHERS = 16
MANY = 1000
RANGE = 4 << 20
CAP = 256  # nanostream serve's default --max-connections

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1100; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    default_type application/octet-stream;
    client_body_temp_path {work}/nginx-tmp;
    proxy_temp_path {work}/nginx-tmp;
    fastcgi_temp_path {work}/nginx-tmp;
    uwsgi_temp_path {work}/nginx-tmp;
    scgi_temp_path {work}/nginx-tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:g} s")


@contextlib.contextmanager
def running(cmd: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[psutil.Process]:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, proc)
        yield psutil.Process(proc.pid)
    finally:
        stop_process(proc)


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def _cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in _tree(proc):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _rss_fds(proc: psutil.Process) -> tuple[int, int]:
    rss = fds = 0
    for p in _tree(proc):
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss
            fds += p.num_fds()
    return rss, fds


def fetch_round(url: str, files: list[Path]) -> float:
    """16 curls at once, one file each; return the wall time. Raises if any download is short."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}",
                               f"{url}/{f.name}"], stdout=subprocess.PIPE, text=True) for f in files]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    wall = time.perf_counter() - t0
    for f, p, out in zip(files, procs, outs, strict=True):
        if p.returncode != 0 or out.strip() != str(f.stat().st_size):
            raise RuntimeError(f"curl {url}/{f.name}: exit {p.returncode}, got {out.strip()} bytes")
    return wall


def verify_one(url: str, path: Path, work: Path) -> bool:
    out = work / "check.bin"
    subprocess.run(["curl", "-sS", "--fail", "-o", str(out), f"{url}/{path.name}"], check=True, timeout=120)
    ok = sha256(out) == sha256(path)
    out.unlink()
    return ok


async def _many_gets(url: str, files: list[Path]) -> int:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(i: int) -> bool:
            headers = {"Range": f"bytes=0-{RANGE - 1}"}
            async with session.get(f"{url}/{files[i % len(files)].name}", headers=headers) as r:
                n = 0
                async for chunk in r.content.iter_chunked(1 << 20):
                    n += len(chunk)
                return r.status == 206 and n == RANGE

        results = await asyncio.gather(*(one(i) for i in range(MANY)), return_exceptions=True)
    return sum(1 for r in results if r is True)


def many_gets(url: str, files: list[Path], server: psutil.Process) -> dict[str, float]:
    """1000 concurrent ranged GETs; the server's RSS/fds sampled meanwhile."""
    rss0, fds0 = _rss_fds(server)
    peak = [rss0, fds0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss, fds = _rss_fds(server)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], fds)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    try:
        ok = asyncio.run(_many_gets(url, files))
    finally:
        stop.set()
        sampler.join()
    return {"ok": ok, "wall": time.perf_counter() - t0, "rss0": rss0 / MB, "rss": peak[0] / MB,
            "fds0": fds0, "fds": peak[1]}


def main(quick: bool = False) -> dict:
    size_mb = 16 if quick else 32
    rounds = 3 if quick else 7
    work = Path(tempfile.mkdtemp(prefix="nanostream-serve-bench-"))
    try:
        work.chmod(0o755)  # nginx's workers may run as another user
        root = work / "files"
        root.mkdir(mode=0o755)
        print(f"serve bench: writing {FETCHERS} files of {size_mb} MB ...", flush=True)
        files = []
        for i in range(FETCHERS):
            path = root / f"shard_{i:05d}.bin"
            with path.open("wb") as f:
                for _ in range(size_mb):
                    f.write(os.urandom(MB))
            path.chmod(0o644)
            files.append(path)
        total = sum(f.stat().st_size for f in files)
        env = bench_env(work / "base")
        py = sys.executable
        servers: dict[str, tuple[list[str], int]] = {}
        port = _free_port()
        servers["nanostream serve"] = ([py, "-m", "nanostream.cli", "serve", str(root), "--port", str(port)], port)
        port = _free_port()
        servers["python -m http.server"] = ([py, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                             "--directory", str(root)], port)
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if nginx:
            port = _free_port()
            (work / "nginx-tmp").mkdir()
            conf = work / "nginx.conf"
            conf.write_text(NGINX_CONF.format(work=work, port=port, root=root))
            servers["nginx (1 worker)"] = ([nginx, "-c", str(conf), "-p", str(work), "-e", str(work / "nginx-error.log")],
                                           port)
        else:
            print("serve bench: nginx not installed (apt-get install nginx-light): skipping it", flush=True)
        walls: dict[str, list[float]] = {name: [] for name in servers}
        cpus: dict[str, float] = dict.fromkeys(servers, 0.0)
        verified: dict[str, bool] = {}
        many: dict[str, dict[str, float]] = {}
        with contextlib.ExitStack() as stack:
            procs = {name: stack.enter_context(running(cmd, port, env, work / f"server{i}.log"))
                     for i, (name, (cmd, port)) in enumerate(servers.items())}
            urls = {name: f"http://127.0.0.1:{port}" for name, (_, port) in servers.items()}
            for name in servers:
                verified[name] = verify_one(urls[name], files[0], work)
                fetch_round(urls[name], files)  # warm-up: page cache, hashes, imports
            names = list(servers)
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    cpu0 = _cpu(procs[name])
                    walls[name].append(fetch_round(urls[name], files))
                    cpus[name] += _cpu(procs[name]) - cpu0
                print(f"serve bench: round {r + 1}/{rounds}: " + ", ".join(
                    f"{n} {total / walls[n][-1] / MB:.0f} MB/s" for n in names), flush=True)
            for name in names:
                if name.startswith(("nanostream", "nginx")):
                    print(f"serve bench: {MANY} concurrent GETs against {name} ...", flush=True)
                    many[name] = many_gets(urls[name], files, procs[name])
        rate = {n: total / statistics.median(w) / MB for n, w in walls.items()}
        base = rate["nanostream serve"]
        rows = [[n, f"{rate[n]:.0f}", f"{total / max(w) / MB:.0f}-{total / min(w) / MB:.0f}",
                 f"{cpus[n] / (total * rounds / 1e9):.2f}", f"{base / rate[n]:.2f}x", "yes" if verified[n] else "NO"]
                for n, w in walls.items()]
        print(f"\nthroughput: {FETCHERS} curls at once, {FETCHERS} x {size_mb} MB files, loopback, "
              f"median of {rounds} interleaved rounds")
        print(table(["server", "MB/s", "range", "server CPU s/GB", "nanostream is", "sha256 ok"], rows))
        if many:
            print(f"\n{MANY} concurrent GETs of {RANGE >> 20} MiB (Range) each:")
            print(table(["server", "ok", "wall s", "RSS before MB", "peak RSS MB", "fds before", "peak fds"],
                        [[n, f"{m['ok']}/{MANY}", f"{m['wall']:.1f}", f"{m['rss0']:.0f}", f"{m['rss']:.0f}",
                          m["fds0"], m["fds"]] for n, m in many.items()]))
        ns = many.get("nanostream serve", {})
        best = max(r for n, r in rate.items() if n != "nanostream serve")
        checks = [
            (f"nanostream >= 0.8x the faster baseline ({base / best:.2f}x)", base >= 0.8 * best),
            (f"{MANY} GETs all answered ({ns.get('ok', 0)}/{MANY})", ns.get("ok") == MANY),
            (f"peak fds <= {2 * CAP + 64} ({ns.get('fds')})", ns.get("fds", 1 << 30) <= 2 * CAP + 64),
            (f"peak RSS < 150 MB ({ns.get('rss', 0):.0f} MB)", ns.get("rss", 1e9) < 150),
            ("every download verified", all(verified.values())),
        ]
        for text, ok in checks:
            print(f"  {verdict(ok)}  {text}")
        return {"rate": rate, "many": many}
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(quick=parser.parse_args().quick)
    sys.exit(0)
