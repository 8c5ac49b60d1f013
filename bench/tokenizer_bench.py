"""Tokenizer benchmark: rustbpe training, and encoding by tiktoken, gigatoken and HF ``tokenizers``.

Text: the offline sample corpus (``demo.sample.documents()``: real English
docstrings, ~11 MB), cycled up to 20M characters (``--quick``: 2M). Both
libraries train a byte-level BPE of 8192 tokens (incl. ``<|bos|>``) with the same
GPT-4-style split pattern, then encode the whole text in batches of 1024
documents (one row group, what TokenDataset hands the tokenizer) on 1 and 2
threads. Rows: nanostream's ``BPETokenizer.encode_batch`` on tiktoken (one chunk per
thread), tiktoken's own ``encode_ordinary_batch`` (one task per text) and gigatoken's
``encode_flat`` (the default encoder; 2 threads = the batch cut in two) on the same merges,
and HF ``encode_batch`` (rayon; parallelism off = 1 thread). Then, per vocabulary (ours,
a nanochat-style one with its ``\\p{N}{1,2}`` pattern, OpenAI's cl100k_base when its file is
installed): load time with and without the fast encoder (its identity check), 1-thread
speed of each encoder, and the documents whose ids are identical; and the peak RSS over
text of unique words with gigatoken's encoder rebuilt every ``REBUILD_CHARS`` characters and never.

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
import gc
import itertools
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import rustbpe
from demo.sample import documents
from demo.tokenizer import train_with_stats

from bench.common import table
from nanostream.text.fast import NANOCHAT, REBUILD_CHARS, FastEncoder, from_ranks
from nanostream.text.formats import BOS, ranks_text
from nanostream.text.load import load_tokenizer
from nanostream.text.tokenizer import SPLIT_PATTERN, BPETokenizer

VOCAB = 8192
NANOCHAT_SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                     "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]  # nanochat's nine
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


def encode_rate(encode_batch: Encoder, texts: list[str], count: Callable[[Any], int] | None = None) -> dict:
    """Tokens, tokens/s, this process's CPU/wall and other processes' busy cores while encoding
    (``count``: tokens of one call's result; default: the sum of its lists' lengths)."""
    count = count or (lambda lists: sum(map(len, lists)))
    ticks0, c0, t0 = _cpu_ticks(), time.process_time(), time.perf_counter()
    tokens = sum(count(encode_batch(texts[i:i + BATCH])) for i in range(0, len(texts), BATCH))
    wall, cpu, ticks1 = time.perf_counter() - t0, time.process_time() - c0, _cpu_ticks()
    busy = None
    if ticks0 and ticks1 and ticks1[1] > ticks0[1]:
        used = 1 - (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1])
        busy = max(0.0, used * (os.cpu_count() or 1) - cpu / wall)
    return {"tokens": tokens, "tok_s": tokens / wall, "cpu_per_wall": cpu / wall, "busy": busy}


def flat_count(flat: tuple[Any, Any]) -> int:
    return int(flat[1][-1])


def flat_threads(tok: Any, threads: int) -> Encoder:
    """``tok.encode_flat`` of a batch cut into ``threads`` runs encoded at once (gigatoken releases the GIL)."""
    pool = ThreadPoolExecutor(threads)

    def encode(batch: Sequence[str]) -> Any:
        step = -(-len(batch) // threads)
        parts = list(pool.map(tok.encode_flat, [batch[a:a + step] for a in range(0, len(batch), step)]))
        return None, [sum(int(p[1][-1]) for p in parts)]
    return encode


def bench_nanostream(texts: list[str], chars: int) -> tuple[dict, dict, dict, Any]:
    """rustbpe's training, then the same merges encoded by tiktoken (BPETokenizer's and tiktoken's own
    batch call) and by gigatoken (encode_flat, nanostream's default where its ids are tiktoken's)."""
    t0 = time.perf_counter()
    tok, _ = train_with_stats(texts, vocab_size=VOCAB, max_chars=chars)
    ours: dict = {"train_s": time.perf_counter() - t0, "vocab": tok.vocab_size}
    ref = BPETokenizer(tok.ranks, encoder="tiktoken")
    plain: dict = {"train_s": None, "vocab": tok.vocab_size}
    giga: dict = {"train_s": None, "vocab": tok.vocab_size, "encoder": tok.encoder_name}
    enc = ref._enc  # the same tiktoken Encoding, called the way tiktoken batches
    for threads in (1, 2):
        ref.num_threads = threads
        ours[threads] = encode_rate(ref.encode_batch, texts)
        plain[threads] = encode_rate(lambda b, n=threads: enc.encode_ordinary_batch(list(b), num_threads=n), texts)
        giga[threads] = encode_rate(flat_threads(tok, threads), texts, flat_count)
    return ours, plain, giga, tok


def identical(tok: Any, ref: Any, texts: list[str]) -> int:
    """Texts whose ids from ``tok.encode_flat`` equal ``ref.encode_batch``'s."""
    same = 0
    for a in range(0, len(texts), BATCH):
        batch = texts[a:a + BATCH]
        tokens, offsets = tok.encode_flat(batch)
        same += sum(tokens[offsets[i]:offsets[i + 1]].tolist() == ids for i, ids in enumerate(ref.encode_batch(batch)))
    return same


def bench_formats(texts: list[str], ours: Any) -> list[list[str]]:
    """Per vocabulary (ours; nanochat's pattern on the same corpus; OpenAI's cl100k_base when its file is
    installed): load time with and without the fast encoder (the identity check), 1-thread Mtok/s of
    each encoder, and the documents whose ids are identical."""
    rows = []
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts[:20000]), VOCAB - len(NANOCHAT_SPECIALS), pattern=NANOCHAT)
    nc_ranks = {bytes(k): v for k, v in trainer.get_mergeable_ranks()}
    nc_specials = {s: len(nc_ranks) + i for i, s in enumerate(NANOCHAT_SPECIALS)}
    vocabs: list[tuple[str, Callable[[str], Any]]] = [
        ("nanostream BPE (GPT-4 split)", lambda e: BPETokenizer(ours.ranks, encoder=e, num_threads=1)),
        ("nanochat-style (\\p{N}{1,2}: digit cut)", lambda e: BPETokenizer(
            nc_ranks, pattern=NANOCHAT, special_tokens=nc_specials, encoder=e, num_threads=1))]
    cl100k = _cl100k_file()
    if cl100k is not None:
        vocabs.append(("cl100k_base (OpenAI's file)", lambda e: load_tokenizer(cl100k, encoder=e, num_threads=1)))
    for label, make in vocabs:
        t0 = time.perf_counter()
        ref = make("tiktoken")
        t1 = time.perf_counter()
        fast = make("gigatoken")
        t2 = time.perf_counter()
        r_ref = encode_rate(ref.encode_batch, texts)
        r_fast = encode_rate(fast.encode_flat, texts, flat_count)
        rows.append([label, f"{1000 * (t1 - t0):.0f}", f"{1000 * (t2 - t1):.0f}", f"{r_ref['tok_s'] / 1e6:.2f}",
                     f"{r_fast['tok_s'] / 1e6:.2f}", f"{r_fast['tok_s'] / r_ref['tok_s']:.1f}x",
                     f"{identical(fast, ref, texts):,} / {len(texts):,}"])
    return rows


def _cl100k_file() -> Path | None:
    try:
        import tiktoken_ext
    except ImportError:
        return None
    found = [Path(p) / "data" / "cl100k_base.tiktoken" for p in tiktoken_ext.__path__]
    return next((p for p in found if p.is_file()), None)


def bench_cache(ours: Any, megabytes: int) -> list[list[str]]:
    """RSS after encoding ``megabytes`` MB of text of almost only unique words (random letters), with
    the encoder rebuilt every REBUILD_CHARS characters (nanostream's) and never (gigatoken's own)."""
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    rows = []
    for label, every in ((f"rebuilt every {REBUILD_CHARS / 1e6:.0f}M chars", REBUILD_CHARS), ("never rebuilt", 1 << 62)):
        gc.collect()
        proc = psutil.Process()
        enc = FastEncoder(partial(from_ranks, ranks_text(ours.ranks), "gpt4"), rebuild_chars=every)
        start, peak, t0, done = proc.memory_info().rss, 0, time.perf_counter(), 0
        while done < megabytes * 1_000_000:
            chars = letters[rng.integers(0, 26, size=1024 * 1000, dtype=np.uint8)]
            chars[rng.integers(0, 100, size=chars.size, dtype=np.uint8) < 15] = ord(" ")
            text = chars.tobytes().decode("ascii")
            enc.encode_flat([text[i * 1000:(i + 1) * 1000] for i in range(1024)])
            done += len(text)
            peak = max(peak, proc.memory_info().rss)
        rows.append([label, f"{megabytes}", f"{start / 1e6:.0f}", f"{peak / 1e6:.0f}", str(enc.builds),
                     f"{time.perf_counter() - t0:.1f}"])
        del enc
    return rows


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


def main_formats(quick: bool, texts: list[str], ours: Any) -> dict:
    rows = bench_formats(texts, ours)
    print(f"\nencoders per vocabulary: {len(texts):,} documents, 1 thread; load = load time with the encoder "
          "(gigatoken: build + identity check)")
    print(table(["vocabulary", "load ms tiktoken", "load ms gigatoken", "tiktoken Mtok/s", "gigatoken Mtok/s",
                 "speed-up", "identical docs"], rows))
    cache = bench_cache(ours, 60 if quick else 400)
    print("\ngigatoken's encode cache over text of unique words (peak RSS of this process)")
    print(table(["encoder", "MB of text", "RSS before MB", "peak RSS MB", "builds", "s"], cache))
    return {"formats": rows, "cache": cache}


def main(quick: bool = False) -> dict:
    chars = 2_000_000 if quick else 20_000_000
    os.environ.setdefault("RAYON_NUM_THREADS", "2")  # read when a rayon pool first starts
    t0 = time.perf_counter()
    texts = corpus(chars)
    print(f"tokenizer bench: {chars:,} chars in {len(texts):,} documents of the sample corpus "
          f"(built in {time.perf_counter() - t0:.1f} s); vocab {VOCAB}; {os.cpu_count()} CPUs, "
          f"RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}", flush=True)
    ours, plain, giga, tok = bench_nanostream(texts, chars)
    results = {"chars": chars, "docs": len(texts), "nanostream": ours, "tiktoken_batch": plain, "gigatoken": giga,
               "hf": bench_hf(texts)}
    print(table(["tokenizer", "train s", "vocab", "chars/token", "Mtok/s 1 thr", "Mtok/s 2 thr",
                 "2 thr CPU/wall", "others"],
                [_row("rustbpe merges, BPETokenizer on tiktoken", ours, chars),
                 _row("  same merges, tiktoken encode_ordinary_batch", plain, chars),
                 _row("  same merges, gigatoken encode_flat (default)", giga, chars),
                 _row("HF tokenizers", results["hf"], chars)]))
    hf = results["hf"]
    if hf is not None:
        print(f"rustbpe+tiktoken vs HF: train {hf['train_s'] / ours['train_s']:.1f}x faster, encode "
              f"{ours[1]['tok_s'] / hf[1]['tok_s']:.1f}x on 1 thread, {ours[2]['tok_s'] / hf[2]['tok_s']:.1f}x on 2")
    results.update(main_formats(quick, texts, tok))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="rustbpe+tiktoken vs HF tokenizers")
    parser.add_argument("--quick", action="store_true", help="2M characters instead of 20M")
    main(quick=parser.parse_args().quick)
