"""The catalog: split rules, the built-in datasets, local folders, the text column."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanostream.errors import ConfigError, CorruptShardError, DatasetError
from nanostream.sources.catalog import (
    Catalog,
    DataFile,
    builtin_catalog,
    check_text_column,
    local_catalog,
    split_of,
)

from datagen import write_shard


def cat(*paths: str, val: str | None = None, name: str = "ds") -> Catalog:
    return Catalog(name, tuple(DataFile(p, 10) for p in paths), val=val)


def paths(files) -> list[str]:
    return [f.path for f in files]


@pytest.mark.parametrize("path, split", [
    ("data/train-00000-of-00002.parquet", "train"),
    ("training.parquet", "train"),
    ("data/validation-00000-of-00001.parquet", "validation"),
    ("valid_0.parquet", "validation"),
    ("val.parquet", "validation"),
    ("dev-3.parquet", "validation"),
    ("test.parquet", "test"),
    ("my eval 2.parquet", "test"),
    ("interval.parquet", None),
    ("trainer.parquet", None),
    ("data/CC-MAIN-2024-10/000_00000.parquet", None),
    ("shard_01822.parquet", None),
])
def test_split_words_in_file_names(path, split):
    assert split_of(path) == split


def test_named_files_give_the_splits():
    c = cat("data/test-0.parquet", "data/train-0.parquet", "data/train-1.parquet", "data/validation-0.parquet")
    sp = c.splits()
    assert paths(sp.train) == ["data/train-0.parquet", "data/train-1.parquet"]
    assert paths(sp.validation) == ["data/validation-0.parquet"]
    assert paths(sp.test) == ["data/test-0.parquet"] and not sp.guessed_val


def test_folder_names_count_only_when_no_file_name_carries_a_split():
    sp = cat("train/a.parquet", "train/b.parquet", "val/c.parquet").splits()
    assert paths(sp.train) == ["train/a.parquet", "train/b.parquet"] and paths(sp.validation) == ["val/c.parquet"]
    # a file name wins over folders: val/ is now just a folder, and its unnamed file is left out
    sp = cat("val/a.parquet", "x/train-0.parquet", "x/train-1.parquet").splits()
    assert paths(sp.validation) == ["x/train-1.parquet"] and sp.guessed_val
    assert paths(sp.unassigned) == ["val/a.parquet"]


def test_without_names_the_last_file_is_validation_said_once(caplog):
    c = cat("a.parquet", "b.parquet", "c.parquet", name="once-only")
    with caplog.at_level(logging.WARNING, logger="nanostream.sources.catalog"):
        sp = c.splits()
        c.splits()
    assert paths(sp.train) == ["a.parquet", "b.parquet"] and paths(sp.validation) == ["c.parquet"]
    assert sp.guessed_val
    assert [r.getMessage().count("c.parquet") for r in caplog.records] == [1]


def test_val_glob_overrides_names_and_order():
    c = cat("data/train-0.parquet", "data/train-1.parquet", "data/validation-0.parquet", val="*train-0*")
    sp = c.splits()
    assert paths(sp.validation) == ["data/train-0.parquet"] and paths(sp.train) == ["data/train-1.parquet"]
    sp = cat("a.parquet", "b.parquet", "c.parquet", val="a.*").splits()
    assert paths(sp.validation) == ["a.parquet"] and paths(sp.train) == ["b.parquet", "c.parquet"]
    assert not sp.guessed_val


def test_a_split_with_no_file_names_dataset_split_and_files():
    with pytest.raises(DatasetError, match=r"dataset ds: split 'validation'.*'nope\*' matches none.*a\.parquet"):
        cat("a.parquet", "b.parquet", val="nope*").splits()
    with pytest.raises(DatasetError, match=r"split 'train' resolves to no file.*files seen: only\.parquet"):
        cat("only.parquet").splits()
    with pytest.raises(DatasetError, match="split 'test'"):
        cat("a.parquet", "b.parquet").split("test")
    assert isinstance(DatasetError("x"), ConfigError)  # exit 2 at the CLI


def test_bad_files_are_refused():
    for bad in ("/abs.parquet", "a/../b.parquet", "a//b.parquet", ".nanostream.x.parquet", ""):
        with pytest.raises(DatasetError):
            cat(bad, "b.parquet")
    with pytest.raises(DatasetError, match="listed twice"):
        cat("a.parquet", "a.parquet")
    with pytest.raises(DatasetError, match="sha256"):
        Catalog("ds", (DataFile("a.parquet", 1, sha256="XYZ"),))
    with pytest.raises(DatasetError, match="no parquet files found in s3://b/p/"):
        Catalog("ds", (), source="s3://b/p/")


def test_builtin_datasets_are_plain_numbered_catalogs():
    c = builtin_catalog("fineweb-edu-100b", "https://hub.example")
    assert len(c.files) == 1823 and c.files[0].path == "shard_00000.parquet"
    assert c.files[0].url == "https://hub.example/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_00000.parquet"
    sp = c.splits()
    assert paths(sp.validation) == ["shard_01822.parquet"] and len(sp.train) == 1822 and not sp.guessed_val
    assert paths(c.pick(2)) == ["shard_00000.parquet", "shard_00001.parquet", "shard_01822.parquet"]
    assert paths(builtin_catalog("climbmix-400b", "http://h").split("val")) == ["shard_06542.parquet"]


def test_local_folders_any_names_sorted_bookkeeping_skipped(tmp_path):
    for rel in ("b/2.parquet", "b/10.parquet", "a.parquet", "c/d/e.parquet"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_shard(tmp_path / rel, 0, 1, 2)
    (tmp_path / ".nanostream.x.parquet.part").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    write_shard(tmp_path / ".hidden" / "h.parquet", 0, 1, 2)
    (tmp_path / "notes.txt").write_text("x")
    c = local_catalog(tmp_path)
    assert paths(c.files) == ["a.parquet", "b/10.parquet", "b/2.parquet", "c/d/e.parquet"]
    assert c.files[0].size == (tmp_path / "a.parquet").stat().st_size and c.files[0].url == ""
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no parquet files"):
        local_catalog(tmp_path / "empty")


def test_text_column_errors_list_the_columns(tmp_path):
    good = write_shard(tmp_path / "good.parquet", 0, 1, 2)
    check_text_column(good, "text")
    with pytest.raises(DatasetError, match=r"no column 'content'; its columns are: text"):
        check_text_column(good, "content")
    pq.write_table(pa.table({"id": [1, 2], "body": ["x", "y"]}), tmp_path / "ints.parquet")
    with pytest.raises(DatasetError, match="holds int64, not text"):
        check_text_column(tmp_path / "ints.parquet", "id")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CorruptShardError, match=r"junk\.parquet"):
        check_text_column(tmp_path / "junk.parquet", "text")


def test_a_file_changed_since_listing_is_named():
    f = DataFile("data/a.parquet", 100, "ab" * 32)
    assert f.mismatch(100, "AB" * 32) is None and f.mismatch(None, None) is None
    assert "is 99 bytes at the source but 100 in the catalog" in f.mismatch(99, "ab" * 32)
    assert "has sha256 cdcdcdcdcdcd… at the source" in f.mismatch(100, "cd" * 32)
    assert DataFile("b.parquet", None).mismatch(5, "cd" * 32) is None  # nothing listed: nothing to compare
