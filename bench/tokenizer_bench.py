"""Tokenizer benchmark: rustbpe training + tiktoken encoding vs HF ``tokenizers``.

Text: the offline sample corpus (``nanostream.sample.documents()``: real English
docstrings, ~11 MB), cycled up to 20M characters (``--quick``: 2M). Both
libraries train a byte-level BPE of 8192 tokens (incl. ``<|bos|>``) with the same
GPT-4-style split pattern, then encode the whole text in batches of 1024
documents (one row group, what TokenDataset hands the tokenizer) on 1 and 2
threads. Besides wall-clock tokens/s it prints tokens per CPU-second on one
thread (what a core can do, whatever else runs) and CPU/wall on two threads
(how much of two cores the encoder really used: ~2 means the GIL is released). Rayon pools (rustbpe training, HF) are capped at ``RAYON_NUM_THREADS``
(default here: 2). HF ``tokenizers`` is not a nanostream dependency: without it
its column says ``-``.

    python -m bench.tokenizer_bench [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Callable, Sequence

from bench.common import table
from nanostream.bpe import train_with_stats
from nanostream.sample import documents
from nanostream.tokenizer import BOS, SPLIT_PATTERN

VOCAB = 8192
BATCH = 1024  # documents per encode_batch call: one row group


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def corpus(chars: int) -> list[str]:
    """Sample-corpus documents, cycled and cut so they hold exactly ``chars`` characters."""
    docs = documents()
    out: list[str] = []
    total = 0
    for doc in itertools.cycle(docs):
        piece = doc[: chars - total]
        out.append(piece)
        total += len(piece)
        if total >= chars:
            return out
    raise AssertionError("unreachable")


def encode_rate(encode_batch: Callable[[Sequence[str]], list[list[int]]], texts: list[str]) -> dict:
    """Tokens, tokens/s (wall) and process CPU s / wall s for encoding ``texts`` in row-group batches."""
    c0, t0 = time.process_time(), time.perf_counter()
    tokens = sum(len(ids) for i in range(0, len(texts), BATCH) for ids in encode_batch(texts[i:i + BATCH]))
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "tok_s": tokens / wall, "cpu_per_wall": (time.process_time() - c0) / wall}


def bench_tiktoken(texts: list[str], chars: int) -> dict:
    t0 = time.perf_counter()
    tok, _ = train_with_stats(texts, vocab_size=VOCAB, max_chars=chars)
    result: dict = {"train_s": time.perf_counter() - t0, "vocab": tok.vocab_size}
    for threads in (1, 2):
        tok.num_threads = threads
        result[threads] = encode_rate(tok.encode_batch, texts)
    return result


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
        for threads in (1, 2):  # HF: parallelism off = 1 thread, on = the rayon pool
            os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"

            def encode_batch(batch: Sequence[str]) -> list[list[int]]:
                return [e.ids for e in tok.encode_batch(list(batch), add_special_tokens=False)]

            result[threads] = encode_rate(encode_batch, texts)
        sample = texts[0][:2000]
        result["round_trip"] = tok.decode(tok.encode(sample, add_special_tokens=False).ids) == sample
        return result
    finally:  # leave parallelism configured so later forks (DataLoader workers) do not warn
        os.environ["TOKENIZERS_PARALLELISM"] = previous or "false"


def main(quick: bool = False) -> dict:
    chars = 2_000_000 if quick else 20_000_000
    os.environ.setdefault("RAYON_NUM_THREADS", "2")  # read when a rayon pool first starts
    t0 = time.perf_counter()
    texts = corpus(chars)
    print(f"tokenizer bench: {chars:,} chars in {len(texts):,} documents of the sample corpus "
          f"(built in {time.perf_counter() - t0:.1f} s); vocab {VOCAB}; {os.cpu_count()} CPUs, "
          f"RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}; load average {_load()}", flush=True)
    results = {"chars": chars, "docs": len(texts), "tiktoken": bench_tiktoken(texts, chars),
               "hf": bench_hf(texts)}
    rows = []
    for name, label in (("tiktoken", "rustbpe train + tiktoken encode"), ("hf", "HF tokenizers")):
        r = results[name]
        if r is None:
            rows.append([label, "-", "-", "-", "-", "-", "-", "-", "not installed"])
            continue
        rows.append([label, f"{r['train_s']:.2f}", r["vocab"], f"{chars / r[1]['tokens']:.2f}",
                     f"{r[1]['tok_s'] / 1e6:.2f}", f"{r[1]['tok_s'] / r[1]['cpu_per_wall'] / 1e6:.2f}",
                     f"{r[2]['tok_s'] / 1e6:.2f}", f"{r[2]['cpu_per_wall']:.2f}", ""])
    print(table(["tokenizer", "train s", "vocab", "chars/token", "Mtok/s 1 thr", "Mtok/CPU-s 1 thr",
                 "Mtok/s 2 thr", "2 thr CPU/wall", "note"], rows))
    hf, tk = results["hf"], results["tiktoken"]
    if hf is not None:
        print(f"tiktoken vs HF encode: {tk[1]['tok_s'] / hf[1]['tok_s']:.1f}x on 1 thread, "
              f"{tk[2]['tok_s'] / hf[2]['tok_s']:.1f}x on 2 threads")
    print(f"load average after: {_load()} (other processes on this machine slow the wall-clock figures)")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2M characters instead of 20M")
    main(quick=parser.parse_args().quick)
    sys.exit(0)
