"""nanochat bench: nanochat's own loader vs the drop-in ``nanostream.nanochat``, side by side in one run.

Skipped (cleanly) unless ``NANOCHAT_DIR`` names a checkout of github.com/karpathy/nanochat; its code
runs from there, in ``NANOCHAT_PYTHON`` (its own venv; default: this interpreter), never copied.

Same everything, as ``runs/runcpu.sh`` sets it up: the data is nanochat's folder
(``NANOCHAT_BASE_DIR/base_data_climbmix``) holding the offline sample corpus (``python -m demo.sample``,
4 shards, the last validation); the tokenizer is trained by nanochat's own
``RustBPETokenizer.train_from_iterator`` (tok_train.py's vocab 32768 and 10,000-character document cap,
quick: 8192) and read back with ``RustBPETokenizer.from_directory``, as base_train.py's
``get_tokenizer()`` does; both loaders get that object, B=32, T=512 (runcpu.sh's
``--device-batch-size=32 --max-seq-len=512``), ``split="train"``, ``device="cpu"`` and their other
defaults (``tokenizer_threads=4``, ``buffer_size=1000``). Each loader runs in its own process:

* first batch: from the call to the first ``next()`` returning, for the process's first loader (the drop-in
  then also imports and checks its fast encoder, once per process) and for a val loader made later, as
  base_train.py's ``build_val_loader()`` makes one at every evaluation;
* tokens/s: ``next()`` free-running over N batches (B x T tokens each);
* step share: a simulated training loop, each step a 30 ms ``time.sleep`` (a GPU step releases the GIL
  the same way) followed by ``next()``: the share of wall time spent in ``next()``;
* resume: the state yielded with the last of those batches goes through ``json.dumps``/``loads`` (as
  base_train.py's checkpoint) into a new loader: the time to its first batch, and how many of its first
  20 batches equal the batches the uninterrupted loader yielded from that one on;
* RSS: the process's peak resident memory (``ru_maxrss``; both import torch).

Targets (PASS/FAIL, printed, never asserted): the drop-in's tokens/s >= nanochat's, its val loader's first
batch no slower, its step share below nanochat's, its resume exact (every batch equal).

Run: ``NANOCHAT_DIR=<checkout> [NANOCHAT_PYTHON=<its venv's python>] python -m bench.nanochat_bench [--quick]``
(``BENCH_PARTS=nanochat make bench`` calls ``main``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

B, T, STEP_S = 32, 512, 0.030
RESUMED = 20  # batches compared after a resume
ROOT = Path(__file__).resolve().parent.parent

TRAIN_TOKENIZER = r"""
import sys, pyarrow.parquet as pq
from pathlib import Path
from nanochat.tokenizer import RustBPETokenizer
folder, out, vocab = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def texts():  # tok_train.py's iterator: the train files' documents, each cropped to doc_cap characters
    for f in sorted(folder.glob("*.parquet"))[:-1]:
        for t in pq.read_table(f, columns=["text"]).column("text").to_pylist():
            yield t[:10_000]
RustBPETokenizer.train_from_iterator(texts(), vocab).save(out)
"""


def measure(side: str, base: Path, batches: int, steps: int) -> dict[str, Any]:
    """In this process: one loader (``side``), as base_train.py makes it; its figures."""
    os.environ["NANOCHAT_BASE_DIR"] = str(base)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(k, None)
    sys.path.insert(0, os.environ["NANOCHAT_DIR"])
    from nanochat.tokenizer import RustBPETokenizer

    if side == "nanochat":
        from nanochat.dataloader import tokenizing_distributed_data_loader_bos_bestfit as plain
        from nanochat.dataloader import tokenizing_distributed_data_loader_with_state_bos_bestfit as make
    else:
        from nanostream.nanochat import tokenizing_distributed_data_loader_bos_bestfit as plain
        from nanostream.nanochat import tokenizing_distributed_data_loader_with_state_bos_bestfit as make
    tokenizer = RustBPETokenizer.from_directory(str(base / "tokenizer"))
    t0 = time.perf_counter()
    loader = make(tokenizer, B, T, split="train", device="cpu")
    next(loader)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
        next(loader)
    free = time.perf_counter() - t0
    waited, t0 = 0.0, time.perf_counter()
    for _ in range(steps):
        time.sleep(STEP_S)
        t1 = time.perf_counter()
        x, _, state = next(loader)
        waited += time.perf_counter() - t1
    wall = time.perf_counter() - t0
    saved = json.dumps(state)  # base_train.py's meta_{step}.json, written before training on x
    want = [x.clone()] + [next(loader)[0].clone() for _ in range(RESUMED - 1)]  # nanochat reuses its buffer
    t0 = time.perf_counter()
    resumed = make(tokenizer, B, T, split="train", device="cpu", resume_state_dict=json.loads(saved))
    got = [next(resumed)[0].clone()]
    first_resumed = time.perf_counter() - t0
    got += [next(resumed)[0].clone() for _ in range(RESUMED - 1)]
    resumed.close()
    same = sum(bool((a == b).all()) for a, b in zip(got, want, strict=True))
    t0 = time.perf_counter()
    val = plain(tokenizer, B, T, split="val", device="cpu")  # build_val_loader(), as each evaluation makes one
    next(val)
    first_val = time.perf_counter() - t0
    for it in (loader, val):
        it.close()
    reread = 0
    if side == "nanostream":  # the row groups the resumed loader read again for its buffered documents
        from nanostream.loader.docrefs import unpack

        reread = len({(r.tag[1], r.tag[2]) for s in state["nanostream"]["ranks"]
                      for r in unpack(s["docs"])})
    return {"side": side, "first_s": first, "first_val_s": first_val, "first_resumed_s": first_resumed,
            "reread": reread, "same": same, "state_bytes": len(saved), "tok_s": batches * B * T / free, "share": waited / wall,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def state_size(base: Path, batches: int, ranks: int = 8, batch: int = 32, seq: int = 2048) -> dict[str, Any]:
    """The JSON size of rank 0's state (every rank's, as the drop-in gathers it) for ``ranks`` ranks of
    (``batch``, ``seq``) batches, buffer_size 1000, over the sample corpus: the largest over ``batches``
    batches, sampled every 10. The ranks run one after the other in this process."""
    sys.path.insert(0, os.environ["NANOCHAT_DIR"])
    from nanochat.tokenizer import RustBPETokenizer

    from nanostream import Ranks, TokenDataset
    from nanostream.nanochat import FORMAT, _log_fields

    tokenizer = RustBPETokenizer.from_directory(str(base / "tokenizer"))
    per_rank: list[list[dict[str, Any]]] = []
    for r in range(ranks):
        ds = TokenDataset("train", tokenizer, batch, seq, data=base / "base_data_climbmix",
                          ranks=Ranks(r, ranks), buffer_docs=1000)
        it, states = iter(ds), []
        for k in range(1, batches + 1):
            next(it)
            if k % 10 == 0:
                states.append(ds.state_dict())
        it.close()
        per_rank.append(states)
    sizes = [len(json.dumps({**_log_fields(group[0]), "nanostream": {"format": FORMAT, "world_size": ranks,
                                                                      "ranks": list(group)}}))
             for group in zip(*per_rank, strict=True)]
    return {"max_bytes": max(sizes), "last_bytes": sizes[-1], "batches": batches}


def _run(python: str, args: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    proc = subprocess.run([python, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main(quick: bool = False) -> dict[str, Any] | None:
    root = os.environ.get("NANOCHAT_DIR")
    if not root or not (Path(root) / "nanochat" / "dataloader.py").is_file():
        print("nanochat: skipped (set NANOCHAT_DIR to a checkout of github.com/karpathy/nanochat, and "
              "NANOCHAT_PYTHON to its venv's python)")
        return None
    python = os.environ.get("NANOCHAT_PYTHON", sys.executable)
    vocab, batches, steps = (8192, 100, 100) if quick else (32768, 400, 300)
    with tempfile.TemporaryDirectory(prefix="nanochat-bench-") as tmp:
        base = Path(tmp)
        data = base / "base_data_climbmix"
        from demo.sample import write_sample

        write_sample(data, shards=4)
        env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "NANOCHAT_DIR": root, "PYTHONPATH": root}
        t0 = time.perf_counter()
        _run(python, ["-c", TRAIN_TOKENIZER, str(data), str(base / "tokenizer"), str(vocab)], env, Path(root))
        print(f"tokenizer: nanochat's RustBPETokenizer, vocab {vocab}, trained in {time.perf_counter() - t0:.1f}s "
              f"on the sample corpus's train files")
        out = {}
        for side, py in (("nanochat", python), ("nanostream", sys.executable)):
            line = _run(py, ["-m", "bench.nanochat_bench", "--side", side, "--base", str(base), "--batches",
                             str(batches), "--steps", str(steps)], {**env, "PYTHONPATH": f"{ROOT}:{root}"}, ROOT)
            out[side] = json.loads(line.strip().splitlines()[-1])
        line = _run(sys.executable, ["-m", "bench.nanochat_bench", "--side", "size", "--base", str(base), "--batches",
                                     str(batches // 2)], {**env, "PYTHONPATH": f"{ROOT}:{root}"}, ROOT)
        out["size"] = json.loads(line.strip().splitlines()[-1])
    show(out, batches, steps)
    return out


def show(out: dict[str, Any], batches: int, steps: int) -> None:
    nc, ns = out["nanochat"], out["nanostream"]
    rows = [(f"tokens/s (free-running, {batches} batches)", f"{nc['tok_s'] / 1e6:.2f}M", f"{ns['tok_s'] / 1e6:.2f}M",
             f"{ns['tok_s'] / nc['tok_s']:.1f}x", ns["tok_s"] >= nc["tok_s"]),
            ("first batch (the process's first loader)", f"{nc['first_s']:.2f} s", f"{ns['first_s']:.2f} s",
             f"{nc['first_s'] / ns['first_s']:.1f}x sooner", None),
            ("first batch of a val loader (each eval)", f"{nc['first_val_s']:.3f} s", f"{ns['first_val_s']:.3f} s",
             f"{nc['first_val_s'] / ns['first_val_s']:.1f}x sooner", ns["first_val_s"] <= nc["first_val_s"]),
            (f"next() share of a {STEP_S * 1000:.0f} ms step ({steps} steps)", f"{100 * nc['share']:.1f}%",
             f"{100 * ns['share']:.2f}%", "", ns["share"] < nc["share"]),
            ("first batch after a resume (json state)", f"{nc['first_resumed_s']:.2f} s",
             f"{ns['first_resumed_s']:.2f} s", f"{ns['reread']} row groups read again", None),
            (f"batches after a resume = the run's ({RESUMED})", f"{nc['same']}/{RESUMED}", f"{ns['same']}/{RESUMED}",
             "", ns["same"] == RESUMED),
            ("state as json.dump writes it (1 rank)", f"{nc['state_bytes']} B", f"{ns['state_bytes']} B", "", None),
            ("peak RSS", f"{nc['rss_mb']:.0f} MB", f"{ns['rss_mb']:.0f} MB", "", None)]
    print(f"B={B}, T={T}, device cpu, split train, nanochat's defaults otherwise")
    print(f"{'':44} {'nanochat':>10} {'nanostream':>11}  {'ratio':<24}  target")
    for name, a, b, ratio, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"{name:44} {a:>10} {b:>11}  {ratio:<24}  {verdict}")
    size = out["size"]
    print(f"rank 0's state of 8 ranks, B=32, T=2048, buffer_size 1000: {size['max_bytes']:,} bytes at most over "
          f"{size['batches']} batches ({size['last_bytes']:,} at the last); target <= 65,536: "
          f"{'PASS' if size['max_bytes'] <= 65536 else 'FAIL'}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--side", choices=("nanochat", "nanostream", "size"))
    p.add_argument("--base", type=Path)
    p.add_argument("--batches", type=int, default=400)
    p.add_argument("--steps", type=int, default=300)
    a = p.parse_args()
    if a.side == "size":
        print(json.dumps(state_size(a.base, a.batches)))
    elif a.side:
        print(json.dumps(measure(a.side, a.base, a.batches, a.steps)))
    else:
        main(quick=a.quick)
