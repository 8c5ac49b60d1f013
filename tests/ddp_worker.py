"""torchrun script for tests/test_loader.py: 2 ranks (gloo, CPU), 2 DataLoader workers each.

Usage: torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py DATA_DIR OUT_JSON
Each rank reads one epoch through a DataLoader, decodes the document ids it saw,
and rank 0 writes every rank's ids, its batch count and ``len(loader)`` (and whether each
rank's states differ) to OUT_JSON. Then the ranks' states after two batches are gathered
and rank 0 resumes them alone (world size 1): ``elastic`` says how that went.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
from torch.utils.data import DataLoader

from nanostream import ByteTokenizer, Ranks, TokenDataset

sys.path.insert(0, str(Path(__file__).parent))
from test_loader import ids_of, segments


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo")
    try:
        ds = TokenDataset("train", ByteTokenizer(), 4, 96, data=data, epochs=1, buffer_docs=16)
        assert (ds.ranks.rank, ds.ranks.world_size) == (dist.get_rank(), dist.get_world_size())
        loader = DataLoader(ds, batch_size=None, num_workers=2)
        batches = list(loader)
        it = iter(ds)  # in-process: each rank has its own resume state
        next(it)
        next(it)
        state = ds.state_dict()
        it.close()
        mine = {"rank": ds.ranks.rank, "world_size": ds.ranks.world_size, "ids": ids_of(segments(batches)),
                "stride": state["layout"][:2], "position": state["position"], "batches": len(batches),
                "len": len(loader)}
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        states: list = [None] * dist.get_world_size()
        dist.all_gather_object(states, state)
        if dist.get_rank() == 0:
            strides = {tuple(g["stride"]) for g in gathered}
            for g in gathered:
                g["states_distinct"] = len(strides) == len(gathered)
            alone = TokenDataset("train", ByteTokenizer(), 4, 96, data=data, epochs=1, buffer_docs=16,
                                 ranks=Ranks(0, 1))
            alone.load_state_dict(states)
            rest = list(alone)
            elastic = {"len": len(alone), "batches": len(rest), "ids": ids_of(segments(rest))}
            out.write_text(json.dumps({"ranks": gathered, "elastic": elastic}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
