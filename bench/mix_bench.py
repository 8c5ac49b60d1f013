"""Weighted mixes (issue 18): token shares against the weights, the mix's throughput, and its first batch.

1. Shares: ``TokenDataset(data=[web 0.7, code 0.3])`` over sources whose documents differ 3x
   in mean length (BPE of the sample corpus' kind, batches (8, 256)): each source's share of
   the tokens over 600k tokens (target within 2 points) and the worst window of 50 batches
   (target within 5 points). Rows are attributed to sources by the packer's own counters.
2. Throughput: the same files read as one source (one folder holding both halves) and as an
   equal mix of the two halves, doc tokens/s of ``TokenDataset`` over 3,000 batches (8, 1024)
   after the first, median of interleaved rounds. The halves hold documents of the same kind
   (tokens per second of the tokenizer differ by 30% between the 1x and 3x sources of row 1,
   so a window of a shuffled single source would measure the text, not the loader). The mix's
   feeds share one encoding pool, as many threads as one source has. Target: >= 0.95x.
3. First batch: ``stream(data=[two hf:// Sources])`` from empty folders against one of them
   alone, behind the Hub-like test server (tests/hubserver.py, throttled per response),
   median of interleaved rounds. Target <= 1.2x.

``python -m bench.mix_bench [--quick]``; part ``mix`` of ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from demo.tokenizer import train_tokenizer

from bench.common import ROOT, table, verdict
from bench.datasets_bench import hub_server
from bench.stream_bench import make_text_shards
from nanostream import Ranks, Source, TokenDataset, stream
from nanostream.config import Config
from nanostream.sources.catalog import numbered_catalog, write_catalog


def tokenizer(folder: Path):
    import pyarrow.parquet as pq

    texts = pq.read_table(next(folder.glob("shard_*.parquet"))).column("text").to_pylist()
    return train_tokenizer(texts, vocab_size=2048, max_chars=1_000_000, num_threads=1)


def shares(web: Path, code: Path, tok) -> dict[str, float]:
    ds = TokenDataset("train", tok, 8, 256, data=[Source(web, weight=0.7), Source(code, weight=0.3)],
                      ranks=Ranks(0, 1), epochs=None)
    it = iter(ds)
    per_batch = []  # cumulative tokens of the web source after each batch
    total = 0
    try:
        for _ in it:
            total += 8 * 256
            per_batch.append(it.stats()["sources"][0]["tokens"])
            if total >= 600_000:
                break
    finally:
        it.close()
    st = ds.stats()["sources"]
    overall = st[0]["tokens"] / (st[0]["tokens"] + st[1]["tokens"])
    worst = 0.0
    for a in range(len(per_batch) - 50):
        web_tokens = per_batch[a + 50] - per_batch[a]
        worst = max(worst, abs(web_tokens / (50 * 8 * 256) - 0.7))
    return {"overall": overall, "worst_window_dev": worst, "tokens": total}


def throughput(single: Path, halves: tuple[Path, Path], tok, rounds: int, batches: int) -> dict[str, float]:
    runs = {
        "one source": lambda: TokenDataset("train", tok, 8, 1024, data=single, ranks=Ranks(0, 1),
                                           epochs=None, shuffle=True),
        "mix of two": lambda: TokenDataset("train", tok, 8, 1024, data=[Source(halves[0]),
                                                                        Source(halves[1])],
                                           ranks=Ranks(0, 1), epochs=None, shuffle=True),
    }
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, make in runs.items():
            it = iter(make())
            next(it)  # the first batch: start-up, not throughput
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            rates[name].append(batches * 8 * 1024 / (time.perf_counter() - t0))
            it.close()
    out = {k: statistics.median(v) for k, v in rates.items()}
    ratios = [m / s for m, s in zip(rates["mix of two"], rates["one source"], strict=True)]
    out["ratio"] = statistics.median(ratios)  # of each round's own pair: robust to load from elsewhere
    out["ratio_range"] = (min(ratios), max(ratios))
    return out


async def _first_batch(kwargs: dict) -> float:
    t0 = time.perf_counter()
    async with stream("train", ranks=Ranks(0, 1), **kwargs) as s:
        async for _ in s:
            return time.perf_counter() - t0
    raise RuntimeError("no batch")


def first_batch(work: Path, rounds: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "tests"))
    from datagen import make_big_shard

    repo = work / "repo"
    for part in ("a", "b"):
        (repo / part).mkdir(parents=True)
        for i in range(4):
            name = f"validation-{i:05d}.parquet" if i == 3 else f"train-{i:05d}.parquet"
            make_big_shard(repo / part / name, i, 4.0)
    times: dict[str, list[float]] = {"one hf:// source": [], "mix of two hf:// sources": []}
    with hub_server(repo, 1000, rate=4e6) as url:
        cfg = Config.from_env({"HF_ENDPOINT": url, "NANOSTREAM_BASE_DIR": str(work / "base")})
        for k in range(rounds):
            one = {"data": Source("hf://datasets/bench/data/a", folder=work / f"one{k}", num_shards=3), "config": cfg}
            mix = {"data": [Source("hf://datasets/bench/data/a", folder=work / f"ma{k}", num_shards=3),
                            Source("hf://datasets/bench/data/b", folder=work / f"mb{k}", num_shards=3)],
                   "config": cfg}
            times["one hf:// source"].append(asyncio.run(_first_batch(one)))
            times["mix of two hf:// sources"].append(asyncio.run(_first_batch(mix)))
    return {k: statistics.median(v) for k, v in times.items()}


def main(quick: bool = False) -> dict:
    rounds, batches = (2, 300) if quick else (5, 3000)  # 600 batches took ~0.12 s at 40M tokens/s: too short a window
    work = Path(tempfile.mkdtemp(prefix="nanostream-mix-bench-"))
    try:
        print("mix bench: writing two sources (documents 1x and 3x long) ...", flush=True)
        web = work / "web"
        code = work / "code"
        make_text_shards(web, 5, row_groups=4, rows=1024, words=100, seed=1)
        make_text_shards(code, 5, row_groups=4, rows=1024, words=300, seed=2)
        halves = (work / "half0", work / "half1")
        make_text_shards(halves[0], 5, row_groups=4, rows=1024, words=150, seed=3)
        make_text_shards(halves[1], 5, row_groups=4, rows=1024, words=150, seed=4)
        single = work / "single"
        single.mkdir()
        files = [*sorted(halves[0].glob("shard_*.parquet"))[:4], *sorted(halves[1].glob("shard_*.parquet"))[:4],
                 sorted(halves[0].glob("shard_*.parquet"))[4]]
        for k, p in enumerate(files):  # both halves' train files, then one validation file
            shutil.copy(p, single / f"shard_{k:05d}.parquet")
        write_catalog(single, numbered_catalog(str(single), "", len(files)))
        tok = tokenizer(web)
        print("mix bench: token shares ...", flush=True)
        sh = shares(web, code, tok)
        print("mix bench: throughput ...", flush=True)
        tp = throughput(single, halves, tok, rounds, batches)
        print("mix bench: first batch from empty folders ...", flush=True)
        fb = first_batch(work / "ttfb", 3 if quick else 5)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = tp["ratio"]
    first = fb["mix of two hf:// sources"] / fb["one hf:// source"]
    print(f"\ntoken shares, 0.7/0.3 mix of documents 1x and 3x long, {sh['tokens']:,} tokens in batches (8, 256): "
          f"web {100 * sh['overall']:.2f}% (0.7 asked), worst window of 50 batches "
          f"{100 * sh['worst_window_dev']:.2f} points off")
    print(table(["", "tokens/s (median)"], [[k, f"{tp[k]:,.0f}"] for k in ("one source", "mix of two")]))
    print(f"mix / one source: {ratio:.3f}x (median of the rounds' ratios; range {tp['ratio_range'][0]:.3f}-"
          f"{tp['ratio_range'][1]:.3f})")
    print(table(["first batch from empty folders", "seconds"], [[k, f"{v:.3f}"] for k, v in fb.items()]))
    print(f"mix / one source: {first:.2f}x")
    targets = {
        "shares within 2 points over 600k tokens": abs(sh["overall"] - 0.7) <= 0.02,
        "within 5 points in every window of 50 batches": sh["worst_window_dev"] <= 0.05,
        "mix tokens/s >= 0.95x one source on the same files": ratio >= 0.95,
        "first batch of a mix of two hf:// sources <= 1.2x one source": first <= 1.2,
    }
    for name, ok in targets.items():
        print(f"  {verdict(ok)}  {name}")
    return {"shares": sh, "throughput": tp, "first_batch": fb, "targets": targets}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and batches")
    main(quick=parser.parse_args().quick)
