"""Hugging Face ``datasets`` against ``nanostream serve`` of a folder fetched from hf:// (issue 16).

    NANOSTREAM_BENCH_VENV=.bench/venv .venv/bin/python -m bench.hubclients_bench [--quick]

A Hub-like repo (``data/train/*.parquet``, ``data/train/more/*.parquet``,
``data/validation/*.parquet``, a README) is served by tests/hubserver.py, fetched with
``nanostream fetch --dataset hf://datasets/bench/data -n -1`` into a folder, and that
folder served with ``nanostream serve DIR --port 0``. The bench venv's ``datasets``
(``bench/hubclients_peer.py``, run with ``HF_ENDPOINT`` at the double, then at the mirror)
streams ``load_dataset("bench/data", streaming=True)`` and
``load_dataset("parquet", data_files="hf://datasets/bench/data/...", streaming=True)``.
PASS when every split has exactly the rows of the repo's files, in the same order
(sha256 of the texts). Skipped when the bench venv has no ``datasets`` (``make bench``
installs it). Prints figures and PASS/FAIL, asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from .datasets_bench import hub_server
from .peers import bench_venv

ROOT = Path(__file__).resolve().parent.parent
REPO = "bench/data"  # the repo datasets_bench.hub_server serves
SPLITS = {"train": "data/train/**/*.parquet", "validation": "data/validation/*.parquet"}


def make_repo(root: Path, files: int, rows: int) -> dict[str, list[str]]:
    """The repo's parquet files by split, in the order ``datasets`` reads them (sorted paths)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from datagen import write_shard

    names = {"train": [f"data/train/part-{i:05d}.parquet" for i in range(files)]
             + [f"data/train/more/part-{i:05d}.parquet" for i in range(files // 2 or 1)],
             "validation": ["data/validation/part-00000.parquet"]}
    for k, name in enumerate(sorted(n for ns in names.values() for n in ns)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_shard(root / name, k, 2, rows)
    (root / "README.md").write_text("# bench corpus\n")
    return {s: sorted(ns) for s, ns in names.items()}


def expected(root: Path, names: dict[str, list[str]]) -> dict[str, dict]:
    out = {}
    for split, files in names.items():
        h, n = hashlib.sha256(), 0
        for f in files:
            for text in pq.read_table(root / f, columns=["text"]).column("text").to_pylist():
                h.update(text.encode() + b"\n")
                n += 1
        out[split] = {"rows": n, "sha256": h.hexdigest()}
    return out


def peer(python: Path, endpoint: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    run = subprocess.run([str(python), str(ROOT / "bench" / "hubclients_peer.py"), REPO, SPLITS["train"],
                          SPLITS["validation"]], env=env, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(quick: bool = False) -> None:
    python = bench_venv() / "bin" / "python"
    if not python.exists() or not list(bench_venv().glob("lib/python*/site-packages/datasets/__init__.py")):
        print(f"hubclients: skipped: no `datasets` in {bench_venv()} (make bench installs it)")
        return
    with tempfile.TemporaryDirectory(prefix="nanostream-hubclients-bench.") as tmp:
        t = Path(tmp)
        names = make_repo(t / "repo", 4 if quick else 16, 50 if quick else 2000)
        want = expected(t / "repo", names)
        node0 = t / "node0"
        with hub_server(t / "repo", page_size=1000) as url:
            env = {**os.environ, "HF_ENDPOINT": url}
            env.pop("HF_TOKEN", None)
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "nanostream.cli", "fetch", "--dataset", f"hf://datasets/{REPO}",
                            "-n", "-1", "--data-dir", str(node0), "--quiet"], env=env, check=True, timeout=600,
                           stdout=subprocess.DEVNULL)
            print(f"fetched {sum(map(len, names.values()))} files into {node0.name} in {time.monotonic() - t0:.1f}s")
            results = {"double": peer(python, url, t / "home-double")}
        serve = subprocess.Popen([sys.executable, "-m", "nanostream.cli", "serve", str(node0), "--port", "0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert serve.stdout is not None
            line = serve.stdout.readline()
            mirror = line.split(" at ", 1)[1].split()[0]
            results["mirror"] = peer(python, mirror, t / "home-mirror")
        finally:
            serve.terminate()
            serve.wait(timeout=30)
    print("expected rows: " + ", ".join(f"{s} {v['rows']}" for s, v in want.items()))
    for where, got in results.items():
        if "error" in got:
            print(f"{where}: FAIL (the peer crashed: {got['error']})")
            continue
        print(f"{where}: datasets {got['datasets']}, huggingface_hub {got['huggingface_hub']}")
        for call in ("repo", "parquet"):
            ok = got[call] == want
            shown = got[call].get("error") or ", ".join(f"{s} {v['rows']} rows" for s, v in got[call].items())
            label = (f'load_dataset("{REPO}", streaming=True)' if call == "repo" else
                     'load_dataset("parquet", data_files="hf://...", streaming=True)')
            print(f"  {label}: {shown} in {got[call + '_s']:.2f}s: {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--quick", action="store_true")
    main(quick=a.parse_args().quick)
