"""``python -m demo.train``: train a tiny GPT on nanostream's real data path (``make train-cpu``).

Owns the demo run: the CPU thread split, the tokenizer for the chosen corpus (trained
once, then reused), the training loop with its log lines (step, loss, tokens/s, data
wait), the validation loss in bits per byte and a generated sample. The data source
is ``demo.source``; the model is ``demo.gpt``; the data itself comes from the library
(``TokenDataset`` over ``iter_batches``, which fetches shards over HTTP while streaming).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TextIO

import torch

from demo.gpt import GPT, GPTConfig, bits_per_byte
from demo.source import PROBE_TIMEOUT, SOURCES, Source, dataset_source, env_default, mix_source, open_source
from demo.tokenizer import train_with_stats
from nanostream.config import Config
from nanostream.errors import ConfigError, NanostreamError
from nanostream.loader.dataset import TokenDataset
from nanostream.loader.device import to_device
from nanostream.loader.threads import threads_for
from nanostream.streaming.streams import iter_batches
from nanostream.text.load import load_tokenizer
from nanostream.text.tokenizer import ByteTokenizer, Tokenizer

LOSS_WINDOW = 10  # the loss "fall" compares the mean of the first and of the last this-many steps


def vocab_arg(value: str) -> int | str:
    if value == "byte":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--vocab must be an integer or 'byte', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo.train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Train a tiny GPT on nanostream's data path (make train-cpu).")
    p.add_argument("--source", choices=SOURCES, default=env_default("SOURCE", "auto"),
                   help="data: the Hub (FineWeb-Edu), the offline sample served on 127.0.0.1, or auto "
                        "(the Hub if it answers within --probe-timeout s); env SOURCE")
    p.add_argument("--dataset", default=env_default("DATASET", "") or None,
                   help="any parquet dataset instead of SOURCE: hf://datasets/ORG/NAME[@REV][/PATH], "
                        "s3://BUCKET/PREFIX/ or a local folder; env DATASET (default: none, SOURCE decides)")
    p.add_argument("--mix", default=env_default("MIX", "") or None,
                   help="a weighted mix instead of SOURCE: DATASET=WEIGHT,... (each DATASET as --dataset; weights "
                        "are shares of the tokens), e.g. hf://datasets/A=0.7,/data/code=0.3; env MIX (default: none)")
    p.add_argument("--device", default=env_default("DEVICE", "cpu"), help="cpu or cuda[:N]; env DEVICE")
    p.add_argument("--steps", type=int, default=250, help="optimizer steps")
    p.add_argument("--depth", type=int, default=4, help="transformer blocks")
    p.add_argument("--width", type=int, default=0, help="model width d_model (0: 32 * depth)")
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    p.add_argument("--shards", type=int, default=2, help="train shards (plus the validation shard)")
    p.add_argument("--vocab", type=vocab_arg, default=4096, help="BPE vocabulary size, or 'byte' (no training)")
    p.add_argument("--tokenizer-chars", type=int, default=2_000_000, help="characters to train the BPE on")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW)")
    p.add_argument("--emb-lr", type=float, default=0.1, help="peak learning rate of the token embedding")
    p.add_argument("--warmup", type=int, default=10, help="linear warmup steps")
    p.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    p.add_argument("--eval-batches", type=int, default=8, help="validation batches for bits per byte")
    p.add_argument("--sample-tokens", type=int, default=48, help="tokens to generate at the end (0: none)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: nanostream.threads_for(device): on CPU cores minus one, "
                        "on CUDA 1-2, the loader getting the rest)")
    p.add_argument("--probe-timeout", type=float, default=PROBE_TIMEOUT, help="seconds to wait for the Hub")
    p.add_argument("--seed", type=int, default=1337, help="model init and sampling seed")
    return p


def get_tokenizer(args: argparse.Namespace, src: Source, cfg: Config, threads: int,
                  say=lambda msg: None) -> tuple[Tokenizer, str]:
    """The tokenizer for this corpus: ``BASE/tokenizer/<corpus>-<vocab>``, trained on first use."""
    if args.vocab == "byte":
        return ByteTokenizer(), "bytes (no training)"
    folder = cfg.tokenizer_dir() / f"{src.name}-{args.vocab}"
    if (folder / "tokenizer.json").exists():
        return load_tokenizer(folder, num_threads=threads), f"loaded {folder}"
    say(f"tokenizer: training a BPE of {args.vocab} tokens on the first {args.tokenizer_chars:,} characters "
        f"of {src.name} (once; saved to {folder}) ...")
    t0 = time.perf_counter()
    texts = iter_batches("train", data=src.data(args.shards), epochs=1, config=cfg)
    try:
        tok, used = train_with_stats((t for batch in texts for t in batch.texts), vocab_size=args.vocab,
                                     max_chars=args.tokenizer_chars, num_threads=threads)
    finally:
        texts.close()
    tok.save(folder)
    return tok, f"trained on {used:,} chars in {time.perf_counter() - t0:.1f}s, saved to {folder}"


def token_bytes(tok: Tokenizer, device: torch.device) -> torch.Tensor:
    """UTF-8 bytes each token id stands for (0 for special tokens such as BOS)."""
    n = tok.vocab_size
    if isinstance(tok, ByteTokenizer):
        lengths = [1] * 256 + [0] * (n - 256)
    elif hasattr(tok, "ranks"):
        lengths = [0] * n
        for piece, rank in tok.ranks.items():
            lengths[rank] = len(piece)
    else:
        lengths = [0 if i == tok.bos_id else len(tok.decode([i]).encode("utf-8")) for i in range(n)]
    return torch.tensor(lengths, dtype=torch.int64, device=device)


def lr_scale(step: int, args: argparse.Namespace) -> float:
    """Fraction of the peak rates: linear warmup, flat, then linear decay to 10% over the last 40%."""
    if step < args.warmup:
        return (step + 1) / args.warmup
    decay_from = int(0.6 * args.steps)
    if step < decay_from:
        return 1.0
    return 1.0 - 0.9 * (step - decay_from) / max(1, args.steps - decay_from)


def dataset(split: str, args: argparse.Namespace, src: Source, tok: Tokenizer, cfg: Config,
            epochs: int | None) -> TokenDataset:
    return TokenDataset(split, tok, args.batch, args.seq_len, data=src.data(args.shards), epochs=epochs, config=cfg)


def generate(model: GPT, tok: Tokenizer, device: torch.device, n: int, seed: int, autocast) -> str:
    prompt = [tok.bos_id, *tok.encode_batch(["The "])[0]]
    gen = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    with autocast():
        out = model.generate(torch.tensor([prompt], device=device), n, generator=gen)[0, 1:].tolist()
    model.train()
    if tok.bos_id in out:  # stop at the end of the document
        out = out[: out.index(tok.bos_id)]
    return tok.decode(out)


@contextmanager
def device_batches(ds: TokenDataset, device: torch.device) -> Iterator:
    """``to_device`` over ``ds`` (CUDA: copies overlap compute); its reader threads are stopped on exit."""
    it = to_device(ds, device)
    try:
        yield it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def check_args(args: argparse.Namespace) -> torch.device:
    for name in ("steps", "depth", "batch", "seq_len", "shards", "eval_batches", "log_every", "tokenizer_chars"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.width, args.warmup, args.sample_tokens, args.threads) < 0 or min(args.lr, args.emb_lr) <= 0:
        raise ConfigError("--width, --warmup, --sample-tokens and --threads must be >= 0, --lr and --emb-lr > 0")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise ConfigError(f"DEVICE={args.device!r} is not a torch device: use cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("DEVICE=cuda but torch sees no CUDA device: run `make train-cpu`, or `make setup GPU=1` "
                          "on a machine with a GPU")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"DEVICE={args.device!r}: the demo runs on cpu or cuda")
    return device


def run_steps(model: GPT, opt: torch.optim.Optimizer, batches: Iterator, args: argparse.Namespace,
              autocast, say) -> tuple[list[float], float, float]:
    """The training loop: (losses, seconds blocked on the loader, seconds of whole steps)."""
    losses: list[float] = []
    wait_total = step_total = win_wait = win_time = 0.0
    for step in range(args.steps):
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_scale(step, args)
        with autocast():
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # also waits for the device, so step times are real
        dt = time.perf_counter() - t0
        wait_total, step_total = wait_total + (t1 - t0), step_total + dt
        win_wait, win_time = win_wait + (t1 - t0), win_time + dt
        if not math.isfinite(losses[-1]):
            raise NanostreamError(f"loss became {losses[-1]} at step {step + 1}: lower --lr / --emb-lr")
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            n = (step % args.log_every) + 1
            say(f"step {step + 1:5d}/{args.steps} | loss {losses[-1]:.4f} | "
                f"{n * args.batch * args.seq_len / win_time:8,.0f} tok/s | "
                f"data wait {100 * win_wait / win_time:5.2f}%")
            win_wait = win_time = 0.0
    return losses, wait_total, step_total


def train(args: argparse.Namespace, cfg: Config, out: TextIO | None = None) -> dict:
    """The whole run; returns its figures (losses, data wait, bpb, sample) for callers and tests."""
    def say(msg: str) -> None:
        print(msg, file=out or sys.stdout, flush=True)

    device = check_args(args)
    plan = threads_for(device, torch_threads=args.threads)
    plan.apply()  # torch's intra-op pool, and pyarrow's decode pool inside the loader's share
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext)
    torch.manual_seed(args.seed)
    if args.mix and args.dataset:
        raise ConfigError("--mix and --dataset exclude each other: name the dataset in the mix")
    sources = (nullcontext(mix_source(args.mix, cfg)) if args.mix else
               nullcontext(dataset_source(args.dataset, cfg)) if args.dataset else
               open_source(args.source, cfg, shards=args.shards, timeout=args.probe_timeout, say=say))
    with sources as src:
        if args.dataset or args.mix:
            say(src.notice)
        say(f"threads: {plan.cores} cores -> torch {plan.torch} intra-op, loader {plan.loader} "
            f"(reader + tokenizer); device {device}{' (bf16 autocast)' if device.type == 'cuda' else ''}")
        tok, how = get_tokenizer(args, src, cfg, plan.loader, say)
        say(f"tokenizer: vocab {tok.vocab_size}, {how}")
        width = args.width or 32 * args.depth
        mcfg = GPTConfig(vocab_size=tok.vocab_size, seq_len=args.seq_len, depth=args.depth, d_model=width,
                         head_dim=32 if width % 32 == 0 else width)
        model = GPT(mcfg).to(device)
        opt = model.optimizer(args.lr, args.emb_lr, device_type=device.type)
        say(f"model: {model.num_params() / 1e6:.2f}M params, depth {mcfg.depth}, width {mcfg.d_model}, "
            f"seq_len {mcfg.seq_len}, batch {args.batch}; data {args.mix or src.dataset or src.base_url} -> "
            f"{src.data_dir}")
        with device_batches(dataset("train", args, src, tok, cfg, epochs=None), device) as batches:
            losses, wait_total, step_total = run_steps(model, opt, batches, args, autocast, say)
        with device_batches(dataset("val", args, src, tok, cfg, epochs=1), device) as val:
            bpb, evaluated = bits_per_byte(model, val, args.eval_batches, token_bytes(tok, device), autocast)
        text = generate(model, tok, device, args.sample_tokens, args.seed, autocast) if args.sample_tokens else ""
    w = min(LOSS_WINDOW, len(losses))
    first, last = sum(losses[:w]) / w, sum(losses[-w:]) / w
    tokens_per_s = args.steps * args.batch * args.seq_len / step_total
    result = {"source": src.kind, "losses": losses, "first_loss": first, "last_loss": last,
              "loss_fall": 1 - last / first, "data_wait_s": wait_total, "step_time_s": step_total,
              "data_wait_pct": 100 * wait_total / step_total, "val_bpb": bpb, "val_batches": evaluated,
              "sample": text, "tokens_per_s": tokens_per_s}
    say(f"done: {args.steps} steps in {step_total:.1f}s ({tokens_per_s:,.0f} tok/s); loss "
        f"{first:.3f} -> {last:.3f} (mean of first/last {w} steps, -{100 * result['loss_fall']:.0f}%)")
    say(f"data wait: {wait_total:.2f}s total, {result['data_wait_pct']:.2f}% of step time")
    say(f"validation: {bpb:.4f} bits per byte ({evaluated} batches of {args.batch}x{args.seq_len} tokens)")
    if text:
        say(f"sample: {text!r}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (a `kill`, a CI timeout) unwinds like Ctrl-C, so the server child and loader threads are stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        train(args, Config.from_env())
    except ConfigError as exc:
        print(f"demo.train: error: {exc}", file=sys.stderr)
        return 2
    except NanostreamError as exc:
        print(f"demo.train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo.train: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
