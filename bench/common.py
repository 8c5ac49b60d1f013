"""Shared benchmark helpers: test shards, the throttled server subprocess, and process-tree measurement.

``measure(cmd)`` runs a command to completion and reports wall time, CPU seconds
(user+sys of the whole process tree, from ``RUSAGE_CHILDREN`` deltas) and peak
RSS (sum of RSS over the process and all its descendants, sampled every 50 ms
with psutil; PSS likewise). Run one measured command at a time: the CPU delta covers every
child reaped in between.

``run_tree(cmd)`` does the same for one command in its own session, with the
CPU seconds taken from ``os.wait4``'s rusage of that child (its whole reaped
tree), and can ``kill -9`` the whole process group when a condition holds
(the fetch bench's kill test). ``server_subprocess`` yields a handle whose
``stats()`` reads the server's byte counters (``GET /-/stats``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
MB = 1_000_000


def make_big_shards(folder: Path, n: int, megabytes: float) -> list[Path]:
    """Write ``shard_00000..n-1`` of about ``megabytes`` MB each (tests/datagen.make_big_shard)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from nanostream.shards import shard_name

    from datagen import make_big_shard

    folder.mkdir(parents=True, exist_ok=True)
    return [make_big_shard(folder / shard_name(i), i, megabytes) for i in range(n)]


@dataclass
class ServerProcess:
    url: str
    process: psutil.Process

    def cpu(self) -> float:
        """CPU seconds (user+sys) the server has used so far."""
        t = self.process.cpu_times()
        return t.user + t.system

    def stats(self) -> dict:
        """The server's counters: ``{"bytes_sent": int, "requests": int, "files": {name: bytes}}``."""
        with urllib.request.urlopen(f"{self.url}/-/stats", timeout=10) as r:
            return json.loads(r.read())

    def warm(self, names: Sequence[str]) -> None:
        """HEAD every file once, so the server hashes them before any client is timed."""
        for name in names:
            req = urllib.request.Request(f"{self.url}/{name}", method="HEAD")
            with urllib.request.urlopen(req, timeout=120):
                pass


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s: a bench's server subprocess never outlives its part."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def server_subprocess(root: Path, *, rate: float | None = None, latency: float = 0.0,
                      redirect: bool = False, no_sha256: bool = False, corrupt: float = 0.0,
                      seed: int = 0) -> Iterator[ServerProcess]:
    """Run ``tests/servers.py`` on ``root`` in a subprocess; yield its URL and process; stop it on exit."""
    cmd = [sys.executable, str(TESTS / "servers.py"), str(root), "--port", "0", "--latency", str(latency)]
    if rate:
        cmd += ["--rate", str(rate)]
    if redirect:
        cmd.append("--redirect")
    if no_sha256:
        cmd.append("--no-sha256")
    if corrupt:
        cmd += ["--corrupt", str(corrupt), "--seed", str(seed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"server subprocess did not print its URL (got {url!r}, exit {proc.poll()})")
        yield ServerProcess(url, psutil.Process(proc.pid))
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class RunStats:
    wall: float
    cpu: float  # user + sys
    cpu_user: float
    cpu_sys: float
    peak_rss: int  # peak of the tree's summed RSS (counts pages shared by forked workers once per process)
    peak_pss: int  # peak of the tree's summed PSS (shared pages split between sharers)
    returncode: int
    stderr: str


def _tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) over ``proc`` and its descendants; PSS splits shared pages fairly."""
    rss = pss = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in members:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    return rss, pss


def measure(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 600,
            interval: float = 0.05) -> RunStats:
    """Run ``cmd`` to completion; see the module docstring for what is measured."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = peak_pss = 0
    try:
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            rss, pss = _tree_memory(ps)
            peak, peak_pss = max(peak, rss), max(peak_pss, pss)
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{cmd[:4]} ran past {timeout} s")
            time.sleep(interval)
        wall = time.perf_counter() - t0
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return RunStats(wall=wall, cpu=user + system, cpu_user=user, cpu_sys=system, peak_rss=peak, peak_pss=peak_pss,
                    returncode=proc.returncode, stderr=stderr)


@dataclass
class TreeRun:
    wall: float
    cpu: float  # user + sys of the child and every descendant it reaped (os.wait4)
    peak_rss: int  # peak of the tree's summed RSS, sampled
    returncode: int  # -9 when killed (by ``kill_when`` or the timeout)
    killed: bool  # by ``kill_when``
    output: str  # the tail of stdout + stderr


def run_tree(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 300,
             kill_when: Callable[[], bool] | None = None, poll: float = 0.02, rss_every: float = 0.1,
             log: Path | None = None, cwd: Path | None = None) -> TreeRun:
    """Run ``cmd`` in its own session to completion, or until ``kill_when()`` is true (then SIGKILL its whole
    process group, as ``kill -9`` / an OOM kill would). Past ``timeout`` it is killed too (``killed`` False)."""
    log = log or Path(os.devnull)
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    ps = psutil.Process(proc.pid)
    peak, next_rss, killed, status, usage = 0, 0.0, False, None, None
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            status = None
            now = time.perf_counter()
            if now >= next_rss:
                peak, next_rss = max(peak, _tree_rss(ps)), now + rss_every
            if not killed and (now - t0 > timeout or (kill_when is not None and kill_when())):
                killed = now - t0 <= timeout
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(poll)
        wall = time.perf_counter() - t0
    finally:
        if status is None:  # interrupted: leave nothing running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(ProcessLookupError):  # grandchildren a killed parent left behind
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_bytes()[-4000:].decode(errors="replace") if str(log) != os.devnull else ""
    return TreeRun(wall=wall, cpu=usage.ru_utime + usage.ru_stime, peak_rss=peak, returncode=proc.returncode,
                   killed=killed, output=text)


def _tree_rss(proc: psutil.Process) -> int:
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in members:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def bad_files(digests: dict[str, str], folder: Path) -> list[str]:
    """Names in ``digests`` whose file in ``folder`` is missing or not byte-identical (by sha256)."""
    bad = []
    for name, digest in digests.items():
        path = folder / name
        if not path.is_file() or sha256(path) != digest:
            bad.append(name)
    return bad


def identical(source: Sequence[Path], folder: Path) -> bool:
    """True when ``folder`` holds a byte-identical copy of every file in ``source``."""
    for src in source:
        dst = folder / src.name
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size or sha256(dst) != sha256(src):
            return False
    return True


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in headers], *[[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def bench_env(base_dir: Path) -> dict[str, str]:
    """The environment for measured subprocesses: no Hub token, a private base dir, src importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "NANOSTREAM_LOOP")}
    env["NANOSTREAM_BASE_DIR"] = str(base_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")) if p)
    return env
