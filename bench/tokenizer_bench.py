"""Tokenizer benchmark: rustbpe training + tiktoken encoding vs HF ``tokenizers``.

Text: the offline sample corpus (``nanostream.text.sample.documents()``: real English
docstrings, ~11 MB), cycled up to 20M characters (``--quick``: 2M). Both
libraries train a byte-level BPE of 8192 tokens (incl. ``<|bos|>``) with the same
GPT-4-style split pattern, then encode the whole text in batches of 1024
documents (one row group, what TokenDataset hands the tokenizer) on 1 and 2
threads. Rows: nanostream's ``BPETokenizer.encode_batch`` (tiktoken, one chunk per
thread), tiktoken's own ``encode_ordinary_batch`` (one task per text) on the same
merges, and HF ``encode_batch`` (rayon; parallelism off = 1 thread).

Besides tokens/s it prints CPU/wall of the 2-thread run (how much of two cores the
encoder used; ~2 means the GIL is really released) and ``busy``: the cores other
processes kept busy meanwhile (from /proc/stat), because on a shared machine the
2-thread figure is only meaningful when that is near 0. Rayon pools are capped at
``RAYON_NUM_THREADS`` (default here: 2). HF ``tokenizers`` is not a nanostream
dependency: without it its row says ``not installed``.

    python -m bench.tokenizer_bench [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from collections.abc import Callable, Sequence

from bench.common import table
from nanostream.text.bpe import train_with_stats
from nanostream.text.sample import documents
from nanostream.text.tokenizer import BOS, SPLIT_PATTERN

VOCAB = 8192
BATCH = 1024  # documents per encode_batch call: one row group
Encoder = Callable[[Sequence[str]], list[list[int]]]


def corpus(chars: int) -> list[str]:
    """Sample-corpus documents, cycled and cut so they hold exactly ``chars`` characters."""
    out: list[str] = []
    total = 0
    for doc in itertools.cycle(documents()):
        piece = doc[: chars - total]
        out.append(piece)
        total += len(piece)
        if total >= chars:
            return out
    raise AssertionError("unreachable")


def _cpu_ticks() -> tuple[int, int] | None:
    """(idle, total) jiffies of the whole machine, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    return fields[3] + fields[4], sum(fields)


def encode_rate(encode_batch: Encoder, texts: list[str]) -> dict:
    """Tokens, tokens/s, this process's CPU/wall and other processes' busy cores while encoding."""
    ticks0, c0, t0 = _cpu_ticks(), time.process_time(), time.perf_counter()
    tokens = sum(len(ids) for i in range(0, len(texts), BATCH) for ids in encode_batch(texts[i:i + BATCH]))
    wall, cpu, ticks1 = time.perf_counter() - t0, time.process_time() - c0, _cpu_ticks()
    busy = None
    if ticks0 and ticks1 and ticks1[1] > ticks0[1]:
        used = 1 - (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1])
        busy = max(0.0, used * (os.cpu_count() or 1) - cpu / wall)
    return {"tokens": tokens, "tok_s": tokens / wall, "cpu_per_wall": cpu / wall, "busy": busy}


def bench_nanostream(texts: list[str], chars: int) -> tuple[dict, dict]:
    t0 = time.perf_counter()
    tok, _ = train_with_stats(texts, vocab_size=VOCAB, max_chars=chars)
    ours: dict = {"train_s": time.perf_counter() - t0, "vocab": tok.vocab_size}
    plain: dict = {"train_s": None, "vocab": tok.vocab_size}
    enc = tok._enc  # the same tiktoken Encoding, called the way tiktoken batches
    for threads in (1, 2):
        tok.num_threads = threads
        ours[threads] = encode_rate(tok.encode_batch, texts)
        plain[threads] = encode_rate(lambda b, n=threads: enc.encode_ordinary_batch(list(b), num_threads=n), texts)
    return ours, plain


def bench_hf(texts: list[str]) -> dict | None:
    try:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        return None
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[BOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=0)
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        t0 = time.perf_counter()
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
        result: dict = {"train_s": time.perf_counter() - t0, "vocab": tok.get_vocab_size()}

        def encode_batch(batch: Sequence[str]) -> list[list[int]]:
            return [e.ids for e in tok.encode_batch(list(batch), add_special_tokens=False)]

        for threads in (1, 2):  # parallelism off = 1 thread, on = the rayon pool
            os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
            result[threads] = encode_rate(encode_batch, texts)
        return result
    finally:  # keep parallelism configured so later forks (DataLoader workers) do not warn
        os.environ["TOKENIZERS_PARALLELISM"] = previous or "false"


def _row(label: str, r: dict | None, chars: int) -> list[str]:
    if r is None:
        return [label, "-", "-", "-", "-", "-", "-", "not installed"]
    busy = r[2]["busy"]
    return [label, "-" if r["train_s"] is None else f"{r['train_s']:.2f}", str(r["vocab"]),
            f"{chars / r[1]['tokens']:.2f}", f"{r[1]['tok_s'] / 1e6:.2f}", f"{r[2]['tok_s'] / 1e6:.2f}",
            f"{r[2]['cpu_per_wall']:.2f}", "?" if busy is None else f"busy {busy:.2f}"]


def main(quick: bool = False) -> dict:
    chars = 2_000_000 if quick else 20_000_000
    os.environ.setdefault("RAYON_NUM_THREADS", "2")  # read when a rayon pool first starts
    t0 = time.perf_counter()
    texts = corpus(chars)
    print(f"tokenizer bench: {chars:,} chars in {len(texts):,} documents of the sample corpus "
          f"(built in {time.perf_counter() - t0:.1f} s); vocab {VOCAB}; {os.cpu_count()} CPUs, "
          f"RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}", flush=True)
    ours, plain = bench_nanostream(texts, chars)
    results = {"chars": chars, "docs": len(texts), "nanostream": ours, "tiktoken_batch": plain,
               "hf": bench_hf(texts)}
    print(table(["tokenizer", "train s", "vocab", "chars/token", "Mtok/s 1 thr", "Mtok/s 2 thr",
                 "2 thr CPU/wall", "others"],
                [_row("nanostream BPETokenizer (rustbpe+tiktoken)", ours, chars),
                 _row("  same merges, tiktoken encode_ordinary_batch", plain, chars),
                 _row("HF tokenizers", results["hf"], chars)]))
    hf = results["hf"]
    if hf is not None:
        print(f"nanostream vs HF: train {hf['train_s'] / ours['train_s']:.1f}x faster, encode "
              f"{ours[1]['tok_s'] / hf[1]['tok_s']:.1f}x on 1 thread, {ours[2]['tok_s'] / hf[2]['tok_s']:.1f}x on 2")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="rustbpe+tiktoken vs HF tokenizers")
    parser.add_argument("--quick", action="store_true", help="2M characters instead of 20M")
    main(quick=parser.parse_args().quick)
