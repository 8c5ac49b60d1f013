"""Shard names, the folder record, the train/val split and the striding math."""

from __future__ import annotations

import itertools

import pytest

from nanostream.errors import ConfigError, MissingShardError
from nanostream.shards import (
    FolderRecord,
    list_shards,
    owns,
    read_record,
    resolve_split,
    shard_index,
    shard_name,
    strided,
    worker_stride,
    write_record,
)

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


def test_record_round_trip_and_corrupt_record(tmp_path):
    rec = FolderRecord(base_url="http://h/x", max_shard=1822, dataset="fineweb-edu-100b")
    write_record(tmp_path, rec)
    assert read_record(tmp_path) == rec
    assert read_record(tmp_path / "none") is None
    (tmp_path / ".nanostream.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a valid nanostream record"):
        read_record(tmp_path)


def test_val_is_the_recorded_last_shard_whatever_is_on_disk(tmp_path):
    make_shards(tmp_path, 3, record=False)  # shards 0, 1, 2 on disk
    write_record(tmp_path, FolderRecord(base_url="", max_shard=10))
    split = resolve_split(tmp_path)
    assert split.val == 10 and split.train == (0, 1, 2) and not split.guessed_val
    assert resolve_split(tmp_path, num_shards=5).train == (0, 1, 2, 3, 4)
    assert resolve_split(tmp_path, num_shards=50).train == tuple(range(10))  # clamped below val


def test_without_record_the_last_file_is_val(tmp_path):
    make_shards(tmp_path, 4, record=False)
    split = resolve_split(tmp_path)
    assert split.val == 3 and split.train == (0, 1, 2) and split.guessed_val
    with pytest.raises(MissingShardError, match="nanostream fetch"):
        resolve_split(tmp_path / "empty")


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("groups", [1, 3, 4, 17])
def test_striding_covers_every_row_group_exactly_once(world, groups):
    seen = list(itertools.chain.from_iterable(strided(groups, r, world) for r in range(world)))
    assert sorted(seen) == list(range(groups))
    assert all(owns(g, r, world) for r in range(world) for g in strided(groups, r, world))


@pytest.mark.parametrize("world, workers", [(1, 1), (2, 2), (3, 4), (1, 0)])
def test_workers_fold_into_disjoint_ranks(world, workers):
    folded = {worker_stride(r, world, w, workers) for r in range(world) for w in range(max(workers, 1))}
    ranks = sorted(r for r, _ in folded)
    assert ranks == list(range(world * max(workers, 1)))
    assert {n for _, n in folded} == {world * max(workers, 1)}


@pytest.mark.parametrize("rank, world", [(-1, 2), (2, 2), (0, 0)])
def test_bad_rank_is_a_config_error(rank, world):
    with pytest.raises(ConfigError):
        strided(4, rank, world)
