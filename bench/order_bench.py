"""Row groups left out of an epoch by equal work, measured through ``stream()`` (issue 15's table).

For each row: ``S`` train shards of ``G`` row groups (one tiny document each, plus a
validation shard), ``W`` ranks on ``N`` nodes; every rank streams one epoch with
``stream("train", ranks=Ranks(r, W, W // N), epochs=1)``, and the
distinct row groups all ranks read together are counted, with ``drop_last=True`` (left
out) and ``drop_last=False`` (read twice). The bound: at most ``W - 1`` either way.
``python -m bench.order_bench``; part ``order`` of ``make bench``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import table, verdict
from nanostream import Ranks, stream
from nanostream.shards import shard_name
from nanostream.sources.catalog import numbered_catalog, write_catalog

ROWS = [(8, 52, 8, 1), (8, 52, 16, 1), (9, 52, 16, 2), (9, 52, 6, 2), (6, 8, 3, 1), (6, 8, 5, 1),
        (7, 50, 24, 3), (13, 47, 8, 2)]  # (shards, row groups each, ranks, nodes); the last two: extra cases


def write(folder: Path, shards: int, groups: int) -> None:
    folder.mkdir(parents=True)
    for s in range(shards + 1):
        texts = [f"doc {s} {g}" for g in range(groups)]
        pq.write_table(pa.table({"text": texts}), folder / shard_name(s), row_group_size=1)
    write_catalog(folder, numbered_catalog(str(folder), "", shards + 1))


async def read_all(folder: Path, world: int, local: int, drop_last: bool) -> Counter[tuple[int, int]]:
    seen: Counter[tuple[int, int]] = Counter()
    for r in range(world):
        async for b in stream("train", data=folder, ranks=Ranks(r, world, local, drop_last), epochs=1):
            seen[(b.shard, b.row_group)] += 1
    return seen


def main(quick: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix="nanostream-order-bench-"))
    rows, ok = [], True
    try:
        for k, (shards, groups, world, nodes) in enumerate(ROWS):
            folder = work / str(k)
            write(folder, shards, groups)
            total = shards * groups
            dropped = asyncio.run(read_all(folder, world, world // nodes, True))
            padded = asyncio.run(read_all(folder, world, world // nodes, False))
            left_out = total - len(dropped)
            twice = sum(padded.values()) - total
            good = left_out <= world - 1 and twice <= world - 1 and max(dropped.values()) == 1 \
                and len(padded) == total
            ok &= good
            rows.append([f"{shards} x {groups}", world, f"{nodes} ({world // nodes} per node)",
                         f"{left_out} of {total} ({100 * left_out / total:.1f}%)", twice, world - 1, verdict(good)])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("row groups of one epoch left out (drop_last=True) and read twice (drop_last=False), all ranks together")
    print(table(["shards x row groups", "ranks", "nodes", "left out", "read twice", "bound (ranks - 1)", ""], rows))
    print(f"  {verdict(ok)}  every row within the bound, nothing read twice with drop_last")
    return {"rows": rows, "targets": {"within the bound": ok}}


if __name__ == "__main__":
    main()
