"""torchrun script for tests/test_nanochat.py: scripts/base_train.py's loop over ``nanostream.nanochat``.

Usage: torchrun --standalone --nproc_per_node=N tests/nanochat_worker.py TOKENIZER_DIR OUT_DIR STEPS
[--save STEP] [--resume META_JSON] [--process-group]

As base_train.py does it: the tokenizer is nanochat's object read from its folder (``tokenizer.pkl``:
a pickled tiktoken ``Encoding``), the data nanochat's folder (``NANOCHAT_BASE_DIR``, set by the test),
the first batch is fetched before the loop, each step checkpoints (at ``--save``, rank 0 only, with
``json.dump``) *before* training on the prefetched batch, and each micro-step prefetches the next. With
``--resume`` the run starts at the checkpoint's step from its ``dataloader_state_dict``.
``--process-group`` initializes gloo first (as base_train.py does nccl on CUDA); without it the ranks
share states through torchrun's own store, as nanochat on CPU runs. Each rank writes
OUT_DIR/rank<R>.json: a digest of every micro-batch trained on, by step, and (rank 0) the state of
each step as JSON text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from nanostream.nanochat import tokenizing_distributed_data_loader_with_state_bos_bestfit

from nanochat_like import NanochatLikeTokenizer

B, T, ACCUM, BUFFER = 4, 64, 2, 32


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("tokenizer", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("steps", type=int)
    p.add_argument("--save", type=int, default=-1)
    p.add_argument("--resume", type=Path, default=None)
    p.add_argument("--process-group", action="store_true")
    args = p.parse_args()
    if args.process_group:
        dist.init_process_group("gloo")
    rank = int(os.environ["RANK"])
    with open(args.tokenizer / "tokenizer.pkl", "rb") as f:  # nanochat's RustBPETokenizer.from_directory
        tokenizer = NanochatLikeTokenizer(pickle.load(f), "<|bos|>")
    meta = json.loads(args.resume.read_text()) if args.resume else None
    step = meta["step"] if meta else 0
    loader = tokenizing_distributed_data_loader_with_state_bos_bestfit(
        tokenizer, B, T, split="train", device="cpu", buffer_size=BUFFER,
        resume_state_dict=meta["dataloader_state_dict"] if meta else None)
    x, y, dataloader_state_dict = next(loader)  # kick off load of the very first batch of data
    trained: list = []
    states: dict[int, str] = {}
    while True:
        last_step = step == args.steps
        states[step] = json.dumps(dataloader_state_dict)
        if step == args.save and rank == 0:  # save_checkpoint: meta_{step}.json, rank 0 only
            with open(args.out / "meta.json", "w", encoding="utf-8") as f:
                json.dump({"step": step, "dataloader_state_dict": dataloader_state_dict}, f, indent=2)
        if last_step:
            break
        for _ in range(ACCUM):
            trained.append([step, hashlib.sha1(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()])
            x, y, dataloader_state_dict = next(loader)  # prefetch the next batch
        epoch = (f"{dataloader_state_dict['epoch']} pq: {dataloader_state_dict['pq_idx']} "
                 f"rg: {dataloader_state_dict['rg_idx']}")  # base_train.py's log line reads these
        assert epoch
        step += 1
    loader.close()
    (args.out / f"rank{rank}.json").write_text(json.dumps({"trained": trained, "states": states if rank == 0 else {}}))
    if args.process_group:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
