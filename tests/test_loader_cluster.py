"""TokenDataset on a simulated cluster: ranks as separate processes with torchrun's environment set by hand
(as in test_stream_cluster.py), each node its own data folder, one loopback server. 2 nodes x 2 ranks take a
few batches and save their states; 2 nodes x 1 rank load all four states and finish the epoch.

Run as a script, this file is one rank: ``python test_loader_cluster.py OUT --data-dir D --base-url U
[--take K] [--states DIR]`` writes OUT/rank<R>.json and OUT/state<R>.pt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

SHARDS, GROUPS, ROWS = 8, 4, 24  # train shards 0..7 (8 is val)
KW = {"shuffle": True, "seed": 11, "epochs": 1, "buffer_docs": 16}


def worker() -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from nanostream import ByteTokenizer, Source, TokenDataset
    from test_loader import ids_of, segments

    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--take", type=int, default=None)
    p.add_argument("--states", type=Path, default=None)
    args = p.parse_args()
    ds = TokenDataset("train", ByteTokenizer(), 4, 96, data=Source(args.base_url, folder=args.data_dir, num_shards=SHARDS,
                                                                    max_shard=SHARDS), **KW)
    if args.states is not None:
        ds.load_state_dict([torch.load(f, weights_only=True) for f in sorted(args.states.glob("state*.pt"))])
    n = len(ds)
    got = []
    it = iter(ds)
    for b in it:
        got.append(b)
        if len(got) == args.take:
            break
    state = ds.state_dict()
    it.close()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out / f"state{ds.ranks.rank}.pt")
    (args.out / f"rank{ds.ranks.rank}.json").write_text(json.dumps({
        "rank": ds.ranks.rank, "layout": [ds.ranks.rank, ds.ranks.world_size, ds.ranks.local_world_size], "len": n,
        "batches": len(got), "ids": ids_of(segments(got)), "position": state["position"]}))


if __name__ == "__main__":
    worker()
else:
    import pytest
    import torch

    from nanostream import Ranks, Source, stream
    from nanostream.loader.docrefs import unpack
    from nanostream.shards import list_shards
    from nanostream.streaming.order import Cursor
    from test_stream_cluster import worker_env

    from datagen import make_shards
    from servers import FaultServer

    pytestmark = pytest.mark.slow

    async def run_nodes(tmp: Path, url: str, nodes: int, per_node: int, out: Path, *extra: str) -> list[dict]:
        procs = []
        for rank in range(nodes * per_node):
            node = rank // per_node
            cmd = [sys.executable, __file__, str(out), "--data-dir", str(tmp / f"node{node}"), "--base-url", url,
                   *extra]
            procs.append(await asyncio.create_subprocess_exec(
                *cmd, stderr=subprocess.PIPE, env=worker_env(rank, nodes * per_node, per_node, f"node{node}", url)))
        errs = [(await p.communicate())[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(errs)[-4000:]
        return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nodes * per_node)]

    async def test_two_nodes_resume_at_half_the_ranks(tmp_path: Path) -> None:
        remote = tmp_path / "remote"
        make_shards(remote, SHARDS + 1, row_groups=GROUPS, rows=ROWS, record=False)
        async with FaultServer(remote) as srv:
            first = await run_nodes(tmp_path, srv.url, 2, 2, tmp_path / "a", "--take", "3")
            second = await run_nodes(tmp_path, srv.url, 2, 1, tmp_path / "b", "--states", str(tmp_path / "a"))
        assert [r["layout"] for r in first] == [[r, 4, 2] for r in range(4)]
        assert len({r["len"] for r in first}) == 1 and all(r["batches"] == 3 for r in first)
        assert [r["layout"] for r in second] == [[0, 2, 1], [1, 2, 1]]
        assert second[0]["len"] == second[1]["len"] == second[0]["batches"] == second[1]["batches"] > 0
        # each node downloaded only the shards its readers read in either run (as dealt by the plans),
        # plus the first of epoch 0's order (rows_per_row_group), and holds every shard it read first
        kw = {"shuffle": True, "seed": 11}

        def data(node: int) -> Source:
            return Source(tmp_path / f"node{node}", num_shards=SHARDS, max_shard=SHARDS)

        order = stream("train", data=data(0), ranks=Ranks(0, 1), **kw).epoch_deal(0).order
        old = [torch.load(f, weights_only=True) for f in sorted((tmp_path / "a").glob("state*.pt"))]
        smallest = min((Cursor.from_list(st["cursor"]) for st in old), key=lambda c: c.consumed)
        for node in range(2):
            dealt = {s for r in (2 * node, 2 * node + 1) for s, _ in
                     stream("train", data=data(node), ranks=Ranks(r, 4, 2), **kw).settled_deal(0).sequence(r)}
            at = {"ranks": [node, 2, 1, True], "position": None, "cursor": smallest.to_list()}  # a state at a cursor
            dealt |= {s for s, _ in stream("train", data=data(node), ranks=Ranks(node, 2, 1), resume=at,
                                           **kw).settled_deal().sequence(node)}
            # the second run's reader `node` also reads again the row groups of the documents it carries
            # over from the old readers i with i % 2 == node (their buffers, named by reference)
            carried = {r.tag[1] for st in old if st["layout"][0] % 2 == node for r in unpack(st["docs"])}
            read = {i[0] for r in first[2 * node: 2 * node + 2] for i in r["ids"]}
            held = set(list_shards(tmp_path / f"node{node}")) - {SHARDS}
            assert read <= held <= dealt | {order[0]} | carried
        # nothing is lost: the second run reads on from the smallest cursor of the first
        before = {tuple(i) for r in first for i in r["ids"]}
        after = {tuple(i) for r in second for i in r["ids"]}
        assert len(before | after) > 0.7 * SHARDS * GROUPS * ROWS
