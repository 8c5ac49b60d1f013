"""One rank of a (simulated or torchrun) cluster for tests/test_stream_cluster.py and bench/cluster_bench.py.

Usage: python tests/cluster_worker.py OUT_DIR --data-dir DIR --base-url URL --num-shards N --max-shard M
           [--take K] [--resume STATE_JSON] [--shuffle] [--pad] [--dist]
           [--epochs E] [--cache-limit LIMIT] [--delay S [--drift N]] [--fetch-ahead F] [--queue-size Q] [--sync]

The rank, world size and node come from torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK: set by hand in the simulation, by torchrun
for real; ``--dist`` also joins a gloo process group first). It reads one epoch of
``stream()`` -- or its first K batches -- and writes OUT_DIR/rank<RANK>.json: the
layout it saw, the epoch length it was told beforehand, every document id it read,
its ``state_dict()`` and the global cursor after its last batch; with ``--delay`` it sleeps S seconds after each
batch (a training step) and reports the seconds it waited for batches (``wait_s``); ``--drift N``
makes the step 0.5 S and 1.5 S by turns, N batches each, even ranks starting fast and odd ranks
slow (the same mean speed, drifting apart and back without a barrier); ``--sync``
joins a gloo group (MASTER_ADDR/MASTER_PORT from the environment) and all-reduces one number
after each batch, as DDP's gradient all-reduce keeps ranks in step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from nanostream import Ranks, ReadAhead, Source, iter_batches, stream

from datagen import doc_id


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--num-shards", type=int, required=True)
    p.add_argument("--max-shard", type=int, required=True)
    p.add_argument("--take", type=int, default=None)
    p.add_argument("--resume", default=None, help="a stream's state_dict() as JSON")
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--pad", action="store_true", help="drop_last=False: even out by repeating")
    p.add_argument("--dist", action="store_true")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--cache-limit", default=None)
    p.add_argument("--delay", type=float, default=0.0, help="seconds of 'training' after each batch")
    p.add_argument("--drift", type=int, default=0, help="steps of 0.5 and 1.5 x --delay by turns, N each")
    p.add_argument("--fetch-ahead", type=int, default=2)
    p.add_argument("--queue-size", type=int, default=8)
    p.add_argument("--sync", action="store_true", help="all-reduce after every batch (ranks in step, as DDP)")
    args = p.parse_args()
    dist = None
    if args.dist or args.sync:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    try:
        kw = dict(data=Source(args.base_url, folder=args.data_dir, num_shards=args.num_shards,
                              max_shard=args.max_shard), shuffle=args.shuffle, seed=11, epochs=args.epochs,
                  ranks=Ranks(drop_last=not args.pad), resume=json.loads(args.resume) if args.resume else None,
                  read_ahead=ReadAhead(files=args.fetch_ahead, row_groups=args.queue_size))
        if args.cache_limit is not None:
            kw["cache_limit"] = int(args.cache_limit) if args.cache_limit.isdigit() else args.cache_limit
        s = stream("train", **kw)  # rank, world_size, local_world_size: from the environment
        ranks = s.plan.ranks
        length = s.epoch_length()
        step = None
        if args.sync:
            import torch

            step = torch.zeros(1)
        batches = []
        last = None
        wait = 0.0
        t0 = time.perf_counter()
        it = iter_batches("train", **kw)
        while True:
            w0 = time.perf_counter()
            b = next(it, None)
            wait += time.perf_counter() - w0
            if b is None:
                break
            batches.append([b.shard, b.row_group, [list(doc_id(t)) for t in b.texts], b.epoch])
            last = b.position
            if args.take is not None and len(batches) == args.take:
                break
            if args.delay:
                pause = args.delay
                if args.drift:  # fast and slow by turns, odd ranks starting slow
                    pause *= 0.5 if ((len(batches) - 1) // args.drift + ranks.rank) % 2 == 0 else 1.5
                time.sleep(pause)
            if args.sync:
                dist.all_reduce(step)
        wall = time.perf_counter() - t0
        state = it.state_dict()
        it.close()
        cursor = s.cursor(last) if last is not None else s.cursor()  # internal: the same on every rank
        if dist is not None:
            assert (dist.get_rank(), dist.get_world_size()) == (ranks.rank, ranks.world_size)
            dist.barrier()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"rank{ranks.rank}.json").write_text(json.dumps({
            "rank": ranks.rank, "world_size": ranks.world_size, "local_world_size": ranks.local_world_size,
            "data_dir": str(s.plan.folder), "epoch_length": length, "batches": batches, "state": state,
            "cursor": cursor.to_list(), "wait_s": wait, "wall_s": wall}))
    finally:
        if dist is not None:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
