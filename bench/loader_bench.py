"""Loader benchmark: ``TokenDataset`` with the fast encoder vs the same loader on tiktoken and vs the reference loop.

Data: the offline sample corpus (``demo.sample``, real English text) written to
a temp folder; tokenizer: a BPE trained on it with ``demo.tokenizer.train_tokenizer``
(gigatoken encodes it where its ids equal tiktoken's, as ``load_tokenizer`` gives it), and the
same ranks on tiktoken as the baseline, else ``ByteTokenizer`` (the table says which). Batches are (8, 1024).

Rows (targets, PASS/FAIL, never asserted), all in document tokens/s over the same row groups:
* encoder alone: ``encode_flat`` of each row group on one thread (the encoder's own limit);
* stream alone: ``iter_batches`` (parquet decode and the Python strings) with no tokenizer;
* TokenDataset: one in-process iterator (num_workers=0); target >= 5x the same loader on tiktoken;
* TokenDataset on tiktoken, and tiktoken's ``encode_batch`` alone (info);
* reference: ``bench/reference_loader.py`` on tiktoken (tokenize + scan-the-list best fit +
  ``torch.tensor`` per document, all in the consuming thread, as nanochat's loop); target:
  TokenDataset >= 10x;
* data path only: both loaders over a tokenizer that only looks ids up (packing and copies);
* RSS: resident memory sampled over a long endless run (5000 batches, ~16 epochs of the
  corpus); target: flat, i.e. the peak of the last third within 16 MB of the peak of the
  first third (after a warm-up fifth);
* RSS over >= 1 GB of text: a TokenDataset over 1.1 GB of generated text whose words are
  almost all unique (the worst case for gigatoken's encode cache, which nanostream bounds by
  rebuilding the encoder); target: peak of the last third within 10% of the first third's;
plus informational rows: DataLoader with 2 workers, ``state_dict()`` cost, crop fraction.

Training-loop simulation (issue 9; what a GPU step costs the data path, measurable without a
GPU): batches (32, 1024) with the BPE tokenizer, each "step" a ``time.sleep`` of 30 ms (a GPU
step releases the GIL the same way), tokenizer threads from ``threads_for("cuda")``. Reported:
median and p99 ``next()`` latency and the share of wall time spent in ``next()``; target
< 1% whenever the loader's production rate (measured free-running, same run) exceeds the
consumption rate (32 x 1024 tokens / 30 ms = 1.09M tok/s). Baseline: the reference loop
(tokenizing and packing in ``next()``). Also the time to the first (32, 2048) batch from a
fresh dataset vs the reference loop and, when ``NANOCHAT_DIR`` names a checkout of
github.com/karpathy/nanochat (only imported from there, to run it), vs nanochat's own
``tokenizing_distributed_data_loader_bos_bestfit`` on the same shards with the same BPE
(target: no slower).

Run: ``python -m bench.loader_bench [--quick] [--sim-only]`` (``make bench`` calls ``main``).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from bench.reference_loader import reference_batches
from nanostream import ByteTokenizer, Ranks, TokenDataset, iter_batches, threads_for
from nanostream.loader.dataset import fix_rows_per_row_group
from nanostream.loader.threads import set_loader_idle
from nanostream.sources.catalog import numbered_catalog, write_catalog
from nanostream.text.tokenizer import BPETokenizer

B, T = 8, 1024


def _table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers, *[[f"{c:,.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _data(folder: Path) -> Path:
    try:
        from demo.sample import write_sample
    except ImportError:  # sample corpus not there: a synthetic one from the test generator
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from datagen import make_shards

        make_shards(folder, 4, row_groups=12, rows=1024, words=150)
        return folder
    write_sample(folder, shards=4)
    return folder


def _tokenizer(texts: list[str]) -> tuple[Any, Any, str]:
    """(the tokenizer as load_tokenizer gives it: gigatoken where it is exact, the same BPE on tiktoken, a name)."""
    try:
        from demo.tokenizer import train_tokenizer
    except ImportError:
        return ByteTokenizer(), ByteTokenizer(), "ByteTokenizer (train_tokenizer not available)"
    tok = train_tokenizer(texts, vocab_size=8192, max_chars=4_000_000)
    ref = BPETokenizer(tok.ranks, encoder="tiktoken", num_threads=tok.num_threads)
    return tok, ref, (f"BPE via train_tokenizer, vocab {tok.vocab_size}, {tok.num_threads} threads, encoder "
                      f"{tok.encoder_name} (reference: the same ranks on {ref.encoder_name})")


def _groups(folder: Path) -> list[list[str]]:
    with iter_batches("train", data=folder, ranks=Ranks(0, 1), epochs=1) as it:
        return [b.texts for b in it]


class _Pretokenized:
    """A tokenizer whose encode_flat/encode_batch return precomputed ids: isolates the loaders' own costs."""

    def __init__(self, tok: Any, groups: list[list[str]]) -> None:
        self.bos_id, self.vocab_size = tok.bos_id, tok.vocab_size
        self._ids = {t: np.asarray(ids, dtype=np.uint32)
                     for g in groups for t, ids in zip(g, tok.encode_batch(g), strict=True)}

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._ids[t].tolist() for t in texts]

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [self._ids[t] for t in texts]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in parts], out=offsets[1:])
        return (np.concatenate(parts) if parts else np.zeros(0, np.uint32)), offsets

    def decode(self, ids: Any) -> str:
        return ""


def _timed(fn: Any) -> tuple[float, float, Any]:
    """(wall s, CPU s of this process, result)."""
    gc.collect()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = fn()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), out


def _rss() -> int:
    return psutil.Process().memory_info().rss


SIM_B, SIM_T, SIM_STEP_S = 32, 1024, 0.030
TTFB_T = 2048


def _simulated_steps(it: Any, steps: int, warmup: int, step_s: float) -> tuple[list[float], float, float]:
    """Over ``steps`` simulated training steps (after ``warmup`` ones): the ``next()`` latencies, the
    wall time, and the CPU time the training thread itself spent in ``next()``."""
    for _ in range(warmup):
        next(it)
        time.sleep(step_s)
    latencies = []
    cpu = 0.0
    t_start = time.perf_counter()
    for _ in range(steps):
        c0, t0 = time.thread_time(), time.perf_counter()
        next(it)
        latencies.append(time.perf_counter() - t0)
        cpu += time.thread_time() - c0
        time.sleep(step_s)  # the "GPU step": releases the GIL, as a step waiting on the device does
    return latencies, time.perf_counter() - t_start, cpu


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def simulate(folder: Path, tok: Any, ref_tok: Any, quick: bool) -> dict[str, Any]:
    """The training-loop simulation and time to first batch (see the module docstring); the reference
    loop encodes with ``ref_tok`` (tiktoken, as nanochat's loop does)."""
    plan = threads_for("cuda")
    saved = [(t, getattr(t, "num_threads", None)) for t in (tok, ref_tok)]
    for t, threads in saved:
        if threads is not None:
            t.num_threads = plan.loader
    try:
        return _simulate(folder, tok, ref_tok, quick, plan.loader)
    finally:
        for t, threads in saved:
            if threads is not None:
                t.num_threads = threads


def _simulate(folder: Path, tok: Any, ref_tok: Any, quick: bool, loader_threads: int) -> dict[str, Any]:
    steps, ref_steps = (100, 30) if quick else (400, 60)

    def dataset(seq_len: int) -> TokenDataset:
        return TokenDataset("train", tok, SIM_B, seq_len, data=folder, ranks=Ranks(0, 1), epochs=None)

    def endless_texts() -> Any:
        with iter_batches("train", data=folder, ranks=Ranks(0, 1), epochs=None) as it:
            for b in it:
                yield b.texts

    out: dict[str, Any] = {"batch": [SIM_B, SIM_T], "step_ms": 1000 * SIM_STEP_S, "steps": steps,
                           "loader_threads": loader_threads,
                           "consumption_tok_s": SIM_B * SIM_T / SIM_STEP_S}
    # production rate, free-running (no sleep), after the pipeline has filled
    it = iter(dataset(SIM_T))
    for _ in range(5):
        next(it)
    n = 15 if quick else 40
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    out["production_tok_s"] = n * SIM_B * SIM_T / (time.perf_counter() - t0)
    it.close()
    # the simulation: TokenDataset (loader threads at normal priority, then under SCHED_IDLE),
    # then the reference loop (all its work is inside next())
    for key, idle in (("", False), ("idle_", True)):
        set_loader_idle(idle)
        try:
            it = iter(dataset(SIM_T))
            lat, wall, cpu = _simulated_steps(it, steps, warmup=10, step_s=SIM_STEP_S)
            it.close()
        finally:
            set_loader_idle(False)
        out.update({f"{key}next_median_ms": 1000 * statistics.median(lat), f"{key}next_p99_ms": 1000 * _pct(lat, 0.99),
                    f"{key}wait_share": sum(lat) / wall, f"{key}cpu_share": cpu / wall})
    ref = reference_batches(endless_texts(), ref_tok, SIM_B, SIM_T)
    lat, wall, cpu = _simulated_steps(ref, ref_steps, warmup=3, step_s=SIM_STEP_S)
    ref.close()
    out.update(ref_next_median_ms=1000 * statistics.median(lat), ref_next_p99_ms=1000 * _pct(lat, 0.99),
               ref_wait_share=sum(lat) / wall, ref_cpu_share=cpu / wall, ref_steps=ref_steps)
    # time to the first (32, 2048) batch from a fresh dataset (page cache warm), interleaved rounds
    ttfb: dict[str, list[float]] = {"dataset": [], "reference": []}
    nanochat = _nanochat_loader(folder, tok, loader_threads)
    if nanochat is not None:
        ttfb["nanochat"] = []
    for _ in range(3):
        if nanochat is not None:
            t0 = time.perf_counter()
            nc = nanochat(SIM_B, TTFB_T)
            next(nc)
            ttfb["nanochat"].append(time.perf_counter() - t0)
            nc.close()
        t0 = time.perf_counter()
        it = iter(dataset(TTFB_T))
        next(it)
        ttfb["dataset"].append(time.perf_counter() - t0)
        it.close()
        t0 = time.perf_counter()
        ref = reference_batches(endless_texts(), ref_tok, SIM_B, TTFB_T)
        next(ref)
        ttfb["reference"].append(time.perf_counter() - t0)
        ref.close()
    out["ttfb_s"] = {k: statistics.median(v) for k, v in ttfb.items()}
    ahead = out["production_tok_s"] > out["consumption_tok_s"]
    out["pass"] = {"wait_share<1%": out["wait_share"] < 0.01,
                   "wait_share<1% (loader_idle)": out["idle_wait_share"] < 0.01} if ahead else {}
    if nanochat is not None:
        out["pass"]["ttfb<=nanochat"] = out["ttfb_s"]["dataset"] <= out["ttfb_s"]["nanochat"]
    return out


def _nanochat_loader(folder: Path, tok: Any, threads: int) -> Any:
    """nanochat's best-fit loader over ``folder``'s shards with ``tok``'s BPE, from the checkout named
    by ``NANOCHAT_DIR``; None when that is unset. Its modules are imported from there, not copied."""
    root = os.environ.get("NANOCHAT_DIR")
    if not root or not hasattr(tok, "_enc"):
        return None
    base = folder.parent / "nanochat-base"
    data = base / "base_data_climbmix"  # where nanochat.dataset looks for shards
    data.mkdir(parents=True, exist_ok=True)
    for shard in sorted(folder.glob("shard_*.parquet")):  # same split: the last shard is val
        if not (data / shard.name).exists():
            (data / shard.name).symlink_to(shard)
    os.environ["NANOCHAT_BASE_DIR"] = str(base)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(k, None)
    sys.path.insert(0, root)
    try:
        from nanochat.dataloader import tokenizing_distributed_data_loader_bos_bestfit
        from nanochat.tokenizer import RustBPETokenizer
    finally:
        sys.path.remove(root)
    nc_tok = RustBPETokenizer(tok._enc, "<|bos|>")

    def loader(b: int, t: int) -> Any:
        return tokenizing_distributed_data_loader_bos_bestfit(nc_tok, b, t, "train", device="cpu",
                                                               tokenizer_threads=threads)

    return loader


def show_simulation(out: dict[str, Any]) -> None:
    ahead = out["production_tok_s"] > out["consumption_tok_s"]

    def verdict(share: float) -> str:
        return ("PASS" if share < 0.01 else "FAIL") if ahead else "n/a (production below consumption)"

    steps, ref_steps = out["steps"], out["ref_steps"]
    print(f"\ntraining-loop simulation: batch ({SIM_B}, {SIM_T}), step = sleep {1000 * SIM_STEP_S:.0f} ms, "
          f"{steps} steps (reference: {ref_steps}); tokenizer threads {out['loader_threads']} (threads_for('cuda'))")
    print(f"  production {out['production_tok_s'] / 1e6:.2f}M tok/s free-running vs consumption "
          f"{out['consumption_tok_s'] / 1e6:.2f}M tok/s")
    print(_table(["loader", "next() median ms", "p99 ms", "wall in next()", "target", "result",
                  "CPU of the training thread in next() (info)"], [
        *[[name, f"{out[k + 'next_median_ms']:.3f}", f"{out[k + 'next_p99_ms']:.3f}",
           f"{100 * out[k + 'wait_share']:.2f}%", "< 1%", verdict(out[k + "wait_share"]),
           f"{100 * out[k + 'cpu_share']:.2f}% of wall"]
          for name, k in (("TokenDataset", ""), ("TokenDataset, loader_idle=True", "idle_"))],
        ["reference loop", f"{out['ref_next_median_ms']:.1f}", f"{out['ref_next_p99_ms']:.1f}",
         f"{100 * out['ref_wait_share']:.1f}%", "baseline", "", f"{100 * out['ref_cpu_share']:.1f}% of wall"],
    ]))
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs. Wall time in next() beyond its CPU "
          "time is the training thread waiting for a core, mostly one the loader's own threads hold: "
          "loader_idle=True (threads_for(..., loader_idle=True)) runs them under SCHED_IDLE")
    tt = out["ttfb_s"]
    nc = (f", nanochat's loader {tt['nanochat']:.2f} s (target: no slower: "
          f"{'PASS' if tt['dataset'] <= tt['nanochat'] else 'FAIL'})") if "nanochat" in tt else \
        " (info; set NANOCHAT_DIR to a nanochat checkout to compare with its loader)"
    print(f"  time to first ({SIM_B}, {TTFB_T}) batch, fresh loader, median of 3 interleaved: TokenDataset "
          f"{tt['dataset']:.2f} s, reference loop {tt['reference']:.2f} s{nc}")



def _diverse_shards(folder: Path, megabytes: int) -> int:
    """Shards of ``megabytes`` MB of text whose words are almost all unique (random letters): the worst
    case for an encoder's cache. Returns the characters written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    doc, per_shard, total = 1000, 64 * 1024, 0  # 1,000-character documents, 64 MB a shard
    shards = max(2, -(-megabytes * 1000 // per_shard) + 1)  # + the validation shard
    for i in range(shards):
        chars = letters[rng.integers(0, 26, size=per_shard * doc, dtype=np.uint8)]
        chars[rng.integers(0, 100, size=chars.size, dtype=np.uint8) < 15] = ord(" ")
        text = chars.tobytes().decode("ascii")
        table = pa.table({"text": [text[j * doc:(j + 1) * doc] for j in range(per_shard)]})
        pq.write_table(table, folder / f"shard_{i:05d}.parquet", row_group_size=1024, compression="zstd",
                       compression_level=1)
        total += len(text) if i < shards - 1 else 0
    write_catalog(folder, numbered_catalog(str(folder), "", shards))  # the last is validation
    return total


def rss_over_text(folder: Path, tok: Any, megabytes: int) -> dict[str, Any]:
    """Peak RSS of a TokenDataset over ``megabytes`` MB of diverse text, first third vs last third
    (after a warm-up fifth), sampled every 20 batches."""
    chars = _diverse_shards(folder, megabytes)
    gc.collect()
    samples: list[int] = []
    t0 = time.perf_counter()
    ds = TokenDataset("train", tok, B, T, data=folder, ranks=Ranks(0, 1), epochs=1)
    n = 0
    for n, _ in enumerate(ds, 1):
        if n % 20 == 0:
            samples.append(_rss())
    wall = time.perf_counter() - t0
    keep = samples[len(samples) // 5:]
    q = max(1, len(keep) // 3)
    first, last = max(keep[:q]), max(keep[-q:])
    builds = getattr(getattr(tok, "fast", None), "builds", None)
    return {"chars": chars, "batches": n, "wall_s": wall, "rss_first_mb": first / 1e6, "rss_last_mb": last / 1e6,
            "rss_change": (last - first) / first, "encoder_builds": builds}


def main(quick: bool = False, sim_only: bool = False) -> dict[str, Any]:
    epochs = 1 if quick else 3
    res: dict[str, Any] = {"quick": quick, "batch": [B, T], "epochs": epochs}
    with tempfile.TemporaryDirectory(prefix="nanostream-loader-bench-") as tmp:
        folder = _data(Path(tmp) / "data")
        groups = _groups(folder)
        tok, ref_tok, tok_name = _tokenizer([t for g in groups for t in g])
        res["tokenizer"] = tok_name
        res["docs"] = sum(map(len, groups))
        if sim_only:
            print(f"loader bench (simulation only): {res['docs']:,} docs, tokenizer: {tok_name}")
            res["simulation"] = simulate(folder, tok, ref_tok, quick)
            show_simulation(res["simulation"])
            return res

        def loader(t: Any = tok, **kw: Any) -> TokenDataset:
            return TokenDataset("train", t, B, T, data=folder, ranks=Ranks(0, 1), **kw)

        def texts() -> Any:
            with iter_batches("train", data=folder, ranks=Ranks(0, 1), epochs=epochs) as it:
                for b in it:
                    yield b.texts

        def run_encode_flat() -> int:  # the fast encoder's own limit, one thread, row group by row group
            return sum(int(tok.encode_flat(g)[1][-1]) for _ in range(epochs) for g in groups)

        def run_encode_tiktoken() -> int:
            return sum(sum(map(len, ref_tok.encode_batch(g))) for _ in range(epochs) for g in groups)

        def run_stream_only() -> int:  # parquet decode + Python strings: what the stream costs
            return sum(len(t) for t in texts())

        rows = loader(epochs=epochs).rows_per_row_group()  # the batch count's estimate, read once untimed

        def run_dataset(t: Any = tok, key: str = "dataset") -> TokenDataset:
            ds = fix_rows_per_row_group(loader(t, epochs=epochs), rows)
            res[f"{key}_batches"] = sum(1 for _ in ds)
            return ds

        def run_reference() -> None:
            res["reference_batches"] = sum(1 for _ in reference_batches(texts(), ref_tok, B, T))

        # interleaved rounds, best of each: the machine is shared, so take the least disturbed run
        best: dict[str, tuple[float, float]] = {}
        rounds = 1 if quick else 3
        for _ in range(rounds):
            runs = [("encode", run_encode_flat), ("encode_tiktoken", run_encode_tiktoken),
                    ("stream_only", run_stream_only), ("dataset", run_dataset),
                    ("dataset_tiktoken", lambda: run_dataset(ref_tok, "dataset_tiktoken")),
                    ("reference", run_reference)]
            for name, fn in runs:
                wall, cpu, out = _timed(fn)
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, cpu)
                    if name == "dataset":
                        st = out.stats()  # the counters of the run that is reported
                if name == "encode":
                    doc_tokens = out
        res["rounds"] = rounds
        for name, (wall, cpu) in best.items():
            res[f"{name}_tok_s"] = doc_tokens / wall
            res[f"{name}_cpu_s_per_mtok"] = cpu / (doc_tokens / 1e6)
        res.update(doc_tokens=doc_tokens, dataset_s=best["dataset"][0], crop_fraction=st["crop_fraction"],
                   wait_s=st["wait_s"])
        first_ref = list(itertools.islice(reference_batches(texts(), ref_tok, B, T), 3))
        first_ds = list(itertools.islice(loader(epochs=epochs), 3))
        same = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first_ref, first_ds, strict=True))
        res["same_batches"] = same

        # the data path alone: the same two loaders over a tokenizer that only looks tokens up
        cached = _Pretokenized(tok, groups)
        pre: dict[str, float] = {}
        for name, fn in (("dataset", lambda: sum(1 for _ in fix_rows_per_row_group(loader(cached, epochs=epochs),
                                                                                    rows))),
                         ("reference", lambda: sum(1 for _ in reference_batches(texts(), cached, B, T)))):
            pre[name] = min(_timed(fn)[0] for _ in range(rounds))
        res["pretok_dataset_tok_s"] = doc_tokens / pre["dataset"]
        res["pretok_reference_tok_s"] = doc_tokens / pre["reference"]

        # DataLoader with 2 workers (informational: 2 cores here, so workers compete with encode threads)
        t0 = time.perf_counter()
        n_dl = sum(1 for _ in DataLoader(loader(epochs=epochs), batch_size=None, num_workers=2))
        res["dataloader2_tok_s"] = doc_tokens / (time.perf_counter() - t0)
        res["dataloader2_batches"] = n_dl

        # state_dict cost with a full buffer
        ds = loader(epochs=None)
        it = iter(ds)
        for _ in range(20):
            next(it)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            state = ds.state_dict()
            times.append(time.perf_counter() - t0)
            next(it)
        it.close()
        res["state_ms"] = 1000 * statistics.median(times)
        res["state_mb"] = len(json.dumps(state)) / 1e6  # the state as json.dump writes it (documents by reference)

        # RSS over a long endless run: peak of the first third vs peak of the last third, after
        # a warm-up of a fifth (buffer filling up with long documents, allocator pools)
        steps = 500 if quick else 5000
        gc.collect()
        samples = []
        it = iter(loader(epochs=None))
        for i in range(steps):
            next(it)
            if i >= steps // 5 and i % 25 == 0:
                samples.append(_rss())
        it.close()
        q = max(1, len(samples) // 3)
        first, last = max(samples[:q]), max(samples[-q:])
        res.update(rss_first_mb=first / 1e6, rss_last_mb=last / 1e6, rss_growth_mb=(last - first) / 1e6,
                   rss_steps=steps)

        res["simulation"] = simulate(folder, tok, ref_tok, quick)
        res["rss_text"] = rss_over_text(Path(tmp) / "diverse", tok, 150 if quick else 1100)

    ratio_tt = res["dataset_tok_s"] / res["dataset_tiktoken_tok_s"]
    ratio_ref = res["dataset_tok_s"] / res["reference_tok_s"]
    rt = res["rss_text"]
    res["vs_tiktoken_loader"], res["vs_reference"] = ratio_tt, ratio_ref
    res["pass"] = {"vs_tiktoken_loader>=5": ratio_tt >= 5.0, "vs_reference>=10": ratio_ref >= 10.0,
                   "rss_flat": res["rss_growth_mb"] < 16, "rss_text_flat": abs(rt["rss_change"]) <= 0.10,
                   **res["simulation"]["pass"]}
    v = {k: "PASS" if ok else "FAIL" for k, ok in res["pass"].items()}
    lim = res["encode_tok_s"]
    print(f"loader bench: {res['docs']:,} docs, {res['doc_tokens'] / epochs / 1e6:.2f}M tokens x {epochs} epoch(s), "
          f"batch ({B}, {T}), best of {res['rounds']} round(s), tokenizer: {tok_name}")
    print(_table(["what", "doc tokens/s", "x encoder", "CPU s/Mtok", "target", "result"], [
        ["encoder alone: encode_flat, 1 thread (its limit)", f"{lim:,.0f}", 1.0, res["encode_cpu_s_per_mtok"], "info", ""],
        ["stream alone: parquet decode + Python strings", f"{res['stream_only_tok_s']:,.0f}",
         res["stream_only_tok_s"] / lim, res["stream_only_cpu_s_per_mtok"], "info", ""],
        ["TokenDataset, num_workers=0", f"{res['dataset_tok_s']:,.0f}", res["dataset_tok_s"] / lim,
         res["dataset_cpu_s_per_mtok"], ">= 5x on tiktoken", f"{v['vs_tiktoken_loader>=5']} ({ratio_tt:.1f}x)"],
        ["TokenDataset on tiktoken (same loader)", f"{res['dataset_tiktoken_tok_s']:,.0f}",
         res["dataset_tiktoken_tok_s"] / lim, res["dataset_tiktoken_cpu_s_per_mtok"], "baseline", ""],
        ["tiktoken encode_batch alone", f"{res['encode_tiktoken_tok_s']:,.0f}", res["encode_tiktoken_tok_s"] / lim,
         res["encode_tiktoken_cpu_s_per_mtok"], "info", ""],
        ["reference best-fit loop (tiktoken)", f"{res['reference_tok_s']:,.0f}", res["reference_tok_s"] / lim,
         res["reference_cpu_s_per_mtok"], "TokenDataset >= 10x", f"{v['vs_reference>=10']} ({ratio_ref:.1f}x)"],
        ["data path only (pre-tokenized): TokenDataset", f"{res['pretok_dataset_tok_s']:,.0f}",
         res["pretok_dataset_tok_s"] / lim, "-", "info", ""],
        ["data path only (pre-tokenized): reference", f"{res['pretok_reference_tok_s']:,.0f}",
         res["pretok_reference_tok_s"] / lim, "-", "info",
         f"{res['pretok_dataset_tok_s'] / res['pretok_reference_tok_s']:.1f}x"],
        ["DataLoader, 2 workers", f"{res['dataloader2_tok_s']:,.0f}", res["dataloader2_tok_s"] / lim, "-", "info", ""],
    ]))
    print(f"peak RSS over {res['rss_steps']} batches: {res['rss_first_mb']:.0f} MB (first third) -> "
          f"{res['rss_last_mb']:.0f} MB (last third), growth {res['rss_growth_mb']:+.1f} MB: {v['rss_flat']}")
    print(f"peak RSS over {rt['chars'] / 1e9:.2f} GB of diverse text ({rt['batches']:,} batches in {rt['wall_s']:.0f} s, "
          f"encoder built {rt['encoder_builds']} times): {rt['rss_first_mb']:.0f} MB (first third) -> "
          f"{rt['rss_last_mb']:.0f} MB (last third), {100 * rt['rss_change']:+.1f}% (target +-10%): {v['rss_text_flat']}")
    print(f"crop fraction {100 * res['crop_fraction']:.2f}% of document tokens; consumer waited {res['wait_s']:.2f}s "
          f"of {res['dataset_s']:.2f}s on the tokenizer thread; state_dict() {res['state_ms']:.2f} ms for "
          f"{res['state_mb'] * 1000:.1f} KB as JSON; same batches as reference: {same}")
    show_simulation(res["simulation"])
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sim-only", action="store_true", help="only the training-loop simulation and first batch")
    args = p.parse_args()
    main(quick=args.quick, sim_only=args.sim_only)
