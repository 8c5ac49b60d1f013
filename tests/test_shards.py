"""Shard names, the train/val split of a numbered folder, worker folding and the deal's worked example."""

from __future__ import annotations

import pytest

from nanostream.config import Config
from nanostream.errors import ConfigError, MissingShardError
from nanostream.shards import list_shards, shard_index, shard_name
from nanostream.sources.catalog import numbered_catalog, write_catalog
from nanostream.sources.resolve import Source, split_indices
from nanostream.streaming.order import EpochDeal, SettledDeal
from nanostream.streaming.ranks import Ranks, worker_stride
from test_order import indices

from datagen import make_shards


def test_names_round_trip():
    assert shard_name(7) == "shard_00007.parquet"
    assert shard_index("shard_01822.parquet") == 1822
    for bad in ("shard_7.parquet", ".nanostream.shard_00001.parquet.part", "shard_00001.parquet.tmp", "x"):
        assert shard_index(bad) is None
    with pytest.raises(ConfigError):
        shard_name(-1)


def test_listing_ignores_bookkeeping(tmp_path):
    make_shards(tmp_path, 3)
    (tmp_path / ".nanostream.shard_00009.parquet.part").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert list_shards(tmp_path) == [0, 1, 2]
    assert list_shards(tmp_path / "missing") == []


def test_val_is_the_recorded_last_shard_whatever_is_on_disk(tmp_path):
    make_shards(tmp_path, 3, record=False)  # shards 0, 1, 2 on disk
    write_catalog(tmp_path, numbered_catalog("t", "", 11))
    _, cat = Source(tmp_path).resolve(Config(), "train")
    assert split_indices(cat, tmp_path, "val", None) == (10,)
    assert split_indices(cat, tmp_path, "train", None) == (0, 1, 2)
    assert split_indices(cat, tmp_path, "train", 5) == (0, 1, 2, 3, 4)
    assert split_indices(cat, tmp_path, "train", 50) == tuple(range(10))  # clamped below val


def test_without_record_the_last_file_is_val(tmp_path):
    make_shards(tmp_path, 4, record=False)
    _, cat = Source(tmp_path).resolve(Config(), "train")
    assert split_indices(cat, tmp_path, "val", None) == (3,)
    assert split_indices(cat, tmp_path, "train", None) == (0, 1, 2)
    with pytest.raises(MissingShardError, match="nanostream fetch"):
        Source(tmp_path / "empty").resolve(Config(), "train")


@pytest.mark.parametrize("world, workers", [(1, 1), (2, 2), (3, 4), (1, 0)])
def test_workers_fold_into_disjoint_ranks(world, workers):
    folded = {worker_stride(r, world, w, workers) for r in range(world) for w in range(max(workers, 1))}
    ranks = sorted(r for r, _ in folded)
    assert ranks == list(range(world * max(workers, 1)))
    assert {n for _, n in folded} == {world * max(workers, 1)}


@pytest.mark.parametrize("rank, world", [(-1, 2), (2, 2), (0, 0)])
def test_bad_rank_is_a_config_error(rank, world):
    with pytest.raises(ConfigError):
        Ranks(rank, world, 1).resolved()


def settled(counts: dict[int, int], world: int, local: int, drop_last: bool = True) -> SettledDeal:
    return SettledDeal(EpochDeal(tuple(counts), 0, Ranks(0, world, local, drop_last), shuffle=False, seed=0), counts)


def test_worked_example_two_nodes_two_ranks_two_workers():
    """docs/multi-node.md's example: shards A B C D (0..3) of 8 row groups, 2 nodes x 2 ranks x 2 workers."""
    plan = settled({s: 8 for s in range(4)}, 8, 4)  # readers r*2 + w of 8, 4 per node
    names = [[f"{'ABCD'[s]}{g}" for s, g in plan.sequence(r)] for r in range(8)]
    assert names[0] == ["A0", "A4", "B0", "B4"]  # rank 0 worker 0
    assert names[1] == ["A1", "A5", "B1", "B5"]  # rank 0 worker 1
    assert names[3] == ["A3", "A7", "B3", "B7"]  # rank 1 worker 1
    assert names[4] == ["C0", "C4", "D0", "D4"]  # rank 2 worker 0
    assert names[7] == ["C3", "C7", "D3", "D7"]  # rank 3 worker 1
    assert sorted(i for r in range(8) for i in indices(plan, r)) == list(range(32))
    for r in range(4):  # folding workers keeps a rank on its node: reader r*2+w is on node r // 2
        assert {s for w in range(2) for s, _ in plan.sequence(worker_stride(r, 4, w, 2)[0])} == \
            ({0, 1} if r < 2 else {2, 3})


def test_a_node_with_more_row_groups_hands_its_tail_to_the_node_with_fewer():
    """9 shards of 4 row groups on 2 nodes of 3 readers: pieces of 5 and 4 shards (20 and 16 row groups), 6 a
    reader: node 0 stops after 18 (shards 0-3 and half of 4), node 1 reads its 16 and the other half of 4;
    none left out, where dealing whole shards by position left out 12 (the issue's table: 9 x 52 on 2 x 3 left
    out 60 of 468)."""
    plan = settled({s: 4 for s in range(9)}, 6, 3)
    assert [len(plan.sequence(r)) for r in range(6)] == [6] * 6 and plan.dropped == 0
    node0 = [x for r in range(3) for x in plan.sequence(r)]
    node1 = [x for r in range(3, 6) for x in plan.sequence(r)]
    assert {s for s, _ in node0} == {0, 1, 2, 3, 4} and sorted(g for s, g in node0 if s == 4) == [0, 1]
    assert {s for s, _ in node1} == {4, 5, 6, 7, 8} and sorted(g for s, g in node1 if s == 4) == [2, 3]
    assert plan.sequence(0)[:3] == [(0, 0), (0, 3), (1, 2)]  # the count runs on across shards


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_one_node_deal_is_the_one_node_rule(world):
    """One node: the ``j``-th row group of the epoch's order goes to reader ``j % world``, across shards
    (a running count, not each shard's row-group index)."""
    plan = settled({0: 5, 1: 5, 2: 5}, world, world, drop_last=False)
    for r in range(world):
        mine = list(range(r, 15, world))
        assert indices(plan, r)[:len(mine)] == mine


def test_layout_checks():
    Ranks(3, 4, 2).resolved()
    with pytest.raises(ConfigError, match="does not divide"):
        Ranks(0, 6, 4).resolved()
    with pytest.raises(ConfigError):
        Ranks(4, 4, 2).resolved()
