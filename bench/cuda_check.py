"""One-call GPU check of the loader's device path: correctness, copy/compute overlap, data wait.

Run from the repository root on a machine with CUDA (no install needed: ``src`` and
``tests`` are put on ``sys.path``)::

    python bench/cuda_check.py            # ~1-2 minutes on an H100
    python bench/cuda_check.py --cpu-dry-run   # no GPU: runs the same code paths on CPU (no timings judged)

It prints one PASS/FAIL line per check and a JSON summary (also written to
``$OUT/cuda_check.json`` when ``OUT`` is set). Checks:

1. correctness: batches from ``to_device(TokenDataset, "cuda")`` (the pinned ring), from
   ``to_device(iter(TokenDataset), "cuda")`` (the prefetch thread) and from
   ``to_device(DataLoader(ds, num_workers=2, pin_memory=True), "cuda")`` equal the same
   source's batches on CPU (the DataLoader compared with the same DataLoader: its two
   workers interleave two strides); single batches (pinned and not) move intact; resume
   through read-ahead is exact (``ds.state_dict()`` describes the batch last returned).
2. overlap: synthetic int64 batches (unpinned) and a fixed matmul "step" on the default
   stream; step time with ``to_device`` vs compute alone vs a plain blocking ``.to("cuda")``,
   median of interleaved rounds. ``hidden`` = share of the copy cost that ``to_device``
   removes. Targets: >= 0.9 for the large batch; the small batch no slower than blocking.
3. data wait: a small GPT-like model trained on ``TokenDataset`` through ``to_device``
   (in-process, the pinned ring; and DataLoader workers, informational), ``loss.item()``
   every step, threads from ``threads_for("cuda")``; ``wait`` = time spent in ``next()`` /
   total. Target: < 1% in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT / "src", ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from nanostream import ByteTokenizer, Ranks, TokenDataset, threads_for, to_device  # noqa: E402

from datagen import make_shards  # noqa: E402  (tests/)


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x.cpu(), ex) and torch.equal(y.cpu(), ey)
                                    for (x, y), (ex, ey) in zip(a, b, strict=True))


def correctness(folder: Path, device: str) -> dict[str, bool]:
    def ds() -> TokenDataset:
        return TokenDataset("train", ByteTokenizer(), 8, 512, data=folder, ranks=Ranks(0, 1), epochs=1)

    cpu = list(ds())
    res = {"dataset": _same([tuple(t.clone() for t in b) for b in to_device(ds(), device)], cpu),
           "iterator": _same([tuple(t.clone() for t in b) for b in to_device(iter(ds()), device)], cpu)}
    def loader() -> DataLoader:  # two workers interleave two strides: compare with the same on CPU
        return DataLoader(ds(), batch_size=None, num_workers=2, pin_memory=device == "cuda")

    cpu_loader = [tuple(t.clone() for t in b) for b in loader()]
    res["dataloader_2_workers"] = _same([tuple(t.clone() for t in b) for b in to_device(loader(), device)],
                                        cpu_loader)
    x, y = cpu[0]
    moved = to_device((x, y), device)
    res["single_batch"] = torch.equal(moved[0].cpu(), x) and torch.equal(moved[1].cpu(), y)
    if device == "cuda":
        px = x.pin_memory()
        res["single_pinned"] = torch.equal(to_device(px, device).cpu(), x)
    d = ds()
    it = to_device(d, device)
    head = [tuple(t.clone().cpu() for t in next(it)) for _ in range(5)]
    state = d.state_dict()
    close = getattr(it, "close", None)
    if close is not None:
        close()
    fresh = ds()
    fresh.load_state_dict(state)
    res["resume_through_prefetcher"] = state["batches"] == 5 and _same(head + list(fresh), cpu)
    return res


def overlap(device: str, shape: tuple[int, int], steps: int, rounds: int = 3) -> dict[str, float]:
    """Seconds per step: compute only, blocking copy + compute, prefetcher + compute."""
    dev = torch.device(device)
    batches = [(torch.randint(0, 50_000, shape), torch.randint(0, 50_000, shape)) for _ in range(4)]
    n = 4096 if device == "cuda" else 256
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16 if device == "cuda" else torch.float32)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    # size the compute to ~3x the blocking copy of one batch
    sync()
    t0 = time.perf_counter()
    for i in range(10):
        x, y = batches[i % 4]
        x.to(dev), y.to(dev)
    sync()
    copy = (time.perf_counter() - t0) / 10
    t0 = time.perf_counter()
    for _ in range(10):
        a @ a
    sync()
    mm = (time.perf_counter() - t0) / 10
    reps = max(1, round(3 * copy / mm))

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = (x[:, :8].float().mean() + y[:, :8].float().mean()).to(a.dtype)
        c = a
        for _ in range(reps):
            c = a @ a
        return c[0, 0] + z

    def run(make_source: Any) -> float:
        sync()
        t0 = time.perf_counter()
        source = make_source()  # inside the timing: a prefetcher gets no head start
        for x, y in source:
            step(x, y)
        sync()
        close = getattr(source, "close", None)
        if close is not None:
            close()
        return (time.perf_counter() - t0) / steps

    on_dev = [(x.to(dev), y.to(dev)) for x, y in batches]
    def host(n: int) -> Any:
        return (batches[i % 4] for i in range(n))

    sources = {"compute": lambda: (on_dev[i % 4] for i in range(steps)),
               "blocking": lambda: ((x.to(dev), y.to(dev)) for x, y in host(steps)),
               "prefetch": lambda: to_device(host(steps), device)}
    run(lambda: (on_dev[i % 4] for i in range(3)))  # warm up (kernels, pinned buffers)
    run(lambda: to_device(host(3), device))
    times: dict[str, list[float]] = {k: [] for k in sources}
    for _ in range(rounds):  # interleaved, so a disturbance hits all three alike
        for k, make_source in sources.items():
            times[k].append(run(make_source))
    compute, blocking, prefetch = (statistics.median(times[k]) for k in ("compute", "blocking", "prefetch"))
    added = blocking - compute
    hidden = (blocking - prefetch) / added if added > 0 else 1.0
    return {"copy_ms": 1000 * copy, "compute_ms": 1000 * compute, "blocking_ms": 1000 * blocking,
            "prefetch_ms": 1000 * prefetch, "matmuls_per_step": reps, "hidden": hidden}


def data_wait(folder: Path, device: str, steps: int, workers: int) -> dict[str, float]:
    """Train a small model on ``TokenDataset``; ``workers`` 0: in-process (``to_device`` packs into
    the pinned ring), else a DataLoader with that many workers behind ``to_device``."""
    B, T, V, D = (16, 1024, 257, 512) if device == "cuda" else (4, 128, 257, 64)
    torch.manual_seed(0)
    dev = torch.device(device)
    model = torch.nn.Sequential(torch.nn.Embedding(V, D), *[torch.nn.Sequential(torch.nn.Linear(D, 4 * D),
                                torch.nn.GELU(), torch.nn.Linear(4 * D, D)) for _ in range(4)],
                                torch.nn.Linear(D, V)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ds = TokenDataset("train", ByteTokenizer(), B, T, data=folder, ranks=Ranks(0, 1))
    source: Any = ds if workers == 0 else DataLoader(ds, batch_size=None, num_workers=workers,
                                                    pin_memory=device == "cuda")
    it = to_device(source, device)
    waited = 0.0
    t_start = 0.0
    try:
        for i in range(steps + 5):
            if i == 5:  # after warm-up (worker start, first kernels)
                waited, t_start = 0.0, time.perf_counter()
            t0 = time.perf_counter()
            x, y = next(it)
            waited += time.perf_counter() - t0
            loss = F.cross_entropy(model(x).view(-1, V), y.view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
        total = time.perf_counter() - t_start
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return {"steps": steps, "workers": workers, "step_ms": 1000 * total / steps, "wait_fraction": waited / total}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-dry-run", action="store_true", help="run every code path on CPU; judge nothing")
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("cuda_check: SKIP (torch.cuda.is_available() is False; use --cpu-dry-run to exercise the code)")
        return 0
    device = "cpu" if args.cpu_dry_run else "cuda"
    steps = 3 if args.cpu_dry_run else args.steps
    res: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                           "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="nanostream-cuda-check-") as tmp:
        folder = Path(tmp) / "data"
        make_shards(folder, 5, row_groups=8, rows=256, words=120)
        res["correctness"] = correctness(folder, device)
        small, large = ((8, 64), (8, 256)) if args.cpu_dry_run else ((32, 2048), (128, 16384))
        res["overlap_small"] = overlap(device, small, steps)
        res["overlap_large"] = overlap(device, large, steps)
        plan = threads_for(device)
        plan.apply()
        res["threads"] = {"torch": plan.torch, "loader": plan.loader, "cores": plan.cores}
        res["data_wait"] = data_wait(folder, device, steps, workers=0)
        res["data_wait_dataloader"] = data_wait(folder, device, steps, workers=min(4, os.cpu_count() or 1))
    checks = {f"correct: {k}": v for k, v in res["correctness"].items()}
    checks["overlap: large batch copy >= 90% hidden"] = res["overlap_large"]["hidden"] >= 0.9
    small = res["overlap_small"]
    checks["overlap: small batch no slower than a blocking copy"] = small["prefetch_ms"] <= small["blocking_ms"]
    checks["data wait < 1% of step time (in-process TokenDataset)"] = res["data_wait"]["wait_fraction"] < 0.01
    for name, ok in checks.items():
        judged = device == "cuda" or name.startswith("correct")
        print(f"{('PASS' if ok else 'FAIL') if judged else 'n/a '}  {name}")
    for k in ("overlap_small", "overlap_large"):
        o = res[k]
        print(f"{k}: copy {o['copy_ms']:.3f} ms, compute {o['compute_ms']:.3f} ms/step, blocking "
              f"{o['blocking_ms']:.3f}, prefetch {o['prefetch_ms']:.3f} -> {100 * o['hidden']:.0f}% of the copy hidden")
    for k in ("data_wait", "data_wait_dataloader"):
        dw = res[k]
        print(f"{k}: {100 * dw['wait_fraction']:.2f}% of {dw['step_ms']:.1f} ms/step over {dw['steps']} steps "
              f"({dw['workers']} DataLoader workers; threads {res['threads']})")
    print(json.dumps(res, indent=1))
    out = os.environ.get("OUT")
    if out:
        Path(out, "cuda_check.json").write_text(json.dumps(res, indent=1))
    return 0 if all(v for k, v in checks.items() if device == "cuda" or k.startswith("correct")) else 1


if __name__ == "__main__":
    sys.exit(main())
