"""One node of tests/test_scale.py (and of bench/scale_bench.py): a TokenDataset of the Hub double's numbered
ClimbMix shards, as a torchrun rank would read it.

Usage: python tests/scale_worker.py OUT_JSON DATA_DIR NUM_SHARDS [--dist] [--next-epoch | --epoch]
With ``--dist`` it joins a gloo process group from torchrun's variables (MASTER_ADDR, MASTER_PORT, RANK,
WORLD_SIZE), so the nodes share row-group counts through its store. It takes the first batch of a
``TokenDataset``; with ``--next-epoch`` it then steps in lockstep (an all_reduce a batch, as DDP does)
until every node's stream has passed into its second epoch. With ``--epoch`` it reads one epoch of row
groups with ``iter_batches`` instead (in lockstep with ``--dist``). OUT_JSON gets
the time to the first batch, the Hub double's request log in short right after it and at the end, the
steps and the peak RSS after the first batch. It runs the code on PYTHONPATH (a bench runs an older one too).
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

    out, folder, shards = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    lockstep = "--dist" in sys.argv
    if lockstep:
        dist.init_process_group("gloo")
    endpoint = os.environ["HF_ENDPOINT"]
    report = read_epoch(folder, shards, lockstep, endpoint) if "--epoch" in sys.argv else \
        read_batches(folder, shards, lockstep and "--next-epoch" in sys.argv, endpoint)
    out.write_text(json.dumps({**report, "hub_at_end": hub_stats(endpoint)}))
    if lockstep:
        torch.distributed.barrier()
        dist.destroy_process_group()


def in_step(done: bool) -> bool:
    """Every node done? (One all_reduce: what DDP's gradient sync does to the nodes' pace.)"""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if done else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def read_batches(folder: str, shards: int, lockstep: bool, endpoint: str) -> dict:
    t0 = time.monotonic()
    it = iter(dataset(folder, shards))
    next(it)
    report = {"first_batch_s": time.monotonic() - t0, "hub_after_first": hub_stats(endpoint),
              "rss_mb": peak_rss_mb(), "steps": 1}
    while lockstep:  # no node runs more than a batch ahead of the others, as under DDP
        position = it.snapshot().parts[0].position
        if in_step(position is not None and position.epoch >= 1):
            break
        next(it)
        report["steps"] += 1
    it.close()
    return report


def dataset(folder: str, shards: int):
    """The TokenDataset of a node; an older library's own form when the bench runs one."""
    from nanostream import ByteTokenizer, TokenDataset

    try:
        from nanostream import Ranks, ReadAhead, Source
    except ImportError:
        return TokenDataset("train", ByteTokenizer(), 4, 64, dataset="climbmix-400b", num_shards=shards,
                            data_dir=folder, local_world_size=1, fetch_workers=4)
    return TokenDataset("train", ByteTokenizer(), 4, 64, data=Source("climbmix-400b", folder=folder, num_shards=shards),
                        ranks=Ranks(local_world_size=1), read_ahead=ReadAhead(connections=4))


def read_epoch(folder: str, shards: int, lockstep: bool, endpoint: str) -> dict:
    t0 = time.monotonic()
    it = one_epoch(folder, shards)
    batch = next(it, None)
    report = {"first_batch_s": time.monotonic() - t0, "hub_after_first": hub_stats(endpoint),
              "rss_mb": peak_rss_mb(), "steps": 0}
    while batch is not None:
        report["steps"] += 1
        batch = next(it, None)
        if lockstep:
            in_step(False)
    it.close()
    report["epoch_s"] = time.monotonic() - t0
    return report


def one_epoch(folder: str, shards: int):
    """``iter_batches`` of one epoch with the count sharer ``TokenDataset`` passes (internal: ``open_stream``); an
    older library's own form when the bench runs one."""
    try:
        from nanostream import Ranks, ReadAhead, Source
        from nanostream.config import Config
        from nanostream.loader.sharer import default_sharer
        from nanostream.streaming.plan import Options
        from nanostream.streaming.single import open_stream
        from nanostream.streaming.streams import BatchIterator
    except ImportError:
        from nanostream import iter_batches

        kw = {}
        try:  # the code of df8d4ea has no count sharer
            from nanostream.loader.sharer import default_sharer

            kw["count_sharer"] = default_sharer()
        except ImportError:
            pass
        return iter_batches("train", dataset="climbmix-400b", num_shards=shards, data_dir=folder, local_world_size=1,
                            epochs=1, fetch_workers=4, **kw)
    options = Options("train", Ranks(local_world_size=1).resolved(), 1, read_ahead=ReadAhead(connections=4),
                      sharer=default_sharer())
    data = Source("climbmix-400b", folder=folder, num_shards=shards)
    return BatchIterator(open_stream(data, options.check(), Config.from_env()))


if __name__ == "__main__":
    main()
