"""One node of tests/test_scale.py (and of bench/scale_bench.py): a TokenDataset of the Hub double's numbered
ClimbMix shards, as a torchrun rank would read it.

Usage: python tests/scale_worker.py OUT_JSON DATA_DIR NUM_SHARDS [--dist]
With ``--dist`` it joins a gloo process group from torchrun's variables (MASTER_ADDR, MASTER_PORT, RANK,
WORLD_SIZE), so the nodes share row-group counts through its store, and steps in lockstep (an all_reduce
a batch, as DDP does) until every node's stream has passed into its second epoch. OUT_JSON gets the time
to the first batch, the Hub double's request log in short right after it, the steps and the peak RSS.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path


def hub_stats(endpoint: str) -> dict:
    with urllib.request.urlopen(f"{endpoint}/_hub/stats", timeout=30) as resp:
        return json.loads(resp.read())


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    import os

    import torch
    import torch.distributed as dist

    from nanostream import ByteTokenizer, TokenDataset

    out, folder, shards = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    lockstep = "--dist" in sys.argv
    if lockstep:
        dist.init_process_group("gloo")
    t0 = time.monotonic()
    ds = TokenDataset("train", ByteTokenizer(), 4, 64, dataset="climbmix-400b", num_shards=shards, data_dir=folder,
                      local_world_size=1, fetch_workers=4)
    it = iter(ds)
    next(it)
    first = time.monotonic() - t0
    report = {"first_batch_s": first, "hub_after_first": hub_stats(os.environ["HF_ENDPOINT"]),
              "rss_mb": peak_rss_mb(), "steps": 1}
    if lockstep:
        while True:  # DDP's pace: no node runs more than a batch ahead of the others
            epoch = it.snapshot().mark.parts[0].position
            flag = torch.tensor([1 if epoch is not None and epoch.epoch >= 1 else 0])
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if flag.item():
                break
            next(it)
            report["steps"] += 1
    it.close()
    out.write_text(json.dumps(report))
    if lockstep:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
