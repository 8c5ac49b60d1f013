"""The catalog: split rules, the built-in datasets, local folders, the text column."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanostream.errors import ConfigError, CorruptShardError, DatasetError
from nanostream.sources.catalog import Catalog, DataFile, builtin_catalog, check_text_column, local_catalog
from nanostream.sources.splits import assign, infer

from datagen import write_shard


def cat(*paths: str, val: str | None = None, name: str = "ds") -> Catalog:
    return Catalog(name, tuple(DataFile(p, 10) for p in paths), val=val)


def held_out_last(c: Catalog) -> bool:
    """Whether validation is the last train file because nothing named one (``splits.assign``)."""
    return "holding out the last train file" in assign([f.path for f in c.files], c.val).note


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
    rule, found = infer([path])
    assert found[path] == ({split} if split else {"train"}) and (rule == 4) == (split is None)


def test_named_files_give_the_splits():
    c = cat("data/test-0.parquet", "data/train-0.parquet", "data/train-1.parquet", "data/validation-0.parquet")
    sp = c.splits()
    assert paths(sp.train) == ["data/train-0.parquet", "data/train-1.parquet"]
    assert paths(sp.validation) == ["data/validation-0.parquet"]
    assert paths(sp.test) == ["data/test-0.parquet"] and not held_out_last(c)
    assert assign([f.path for f in c.files]).rule == 3


def test_folder_names_win_over_file_names():
    sp = cat("train/a.parquet", "train/b.parquet", "val/c.parquet").splits()
    assert paths(sp.train) == ["train/a.parquet", "train/b.parquet"] and paths(sp.validation) == ["val/c.parquet"]
    # as in datasets: once a folder names a split, files in no split folder are left out, whatever their name
    with pytest.raises(DatasetError, match="split 'train' resolves to no file"):
        cat("val/a.parquet", "x/train-0.parquet", "x/train-1.parquet").splits()


def test_without_names_the_last_file_is_validation_said_once(caplog):
    c = cat("a.parquet", "b.parquet", "c.parquet", name="once-only")
    with caplog.at_level(logging.WARNING, logger="nanostream.sources.catalog"):
        sp = c.splits()
        c.splits()
    assert paths(sp.train) == ["a.parquet", "b.parquet"] and paths(sp.validation) == ["c.parquet"]
    assert held_out_last(c)
    assert [r.getMessage().count("c.parquet") for r in caplog.records] == [1]


def test_val_glob_overrides_names_and_order():
    c = cat("data/train-0.parquet", "data/train-1.parquet", "data/validation-0.parquet", val="*train-0*")
    sp = c.splits()
    assert paths(sp.validation) == ["data/train-0.parquet"] and paths(sp.train) == ["data/train-1.parquet"]
    c = cat("a.parquet", "b.parquet", "c.parquet", val="a.*")
    sp = c.splits()
    assert paths(sp.validation) == ["a.parquet"] and paths(sp.train) == ["b.parquet", "c.parquet"]
    assert not held_out_last(c)


def test_a_split_with_no_file_names_dataset_split_and_files():
    with pytest.raises(DatasetError, match=r"dataset ds: split 'validation'.*'nope\*' matches none.*a\.parquet"):
        cat("a.parquet", "b.parquet", val="nope*").splits()
    with pytest.raises(DatasetError, match=r"split 'validation' resolves to no file.*files seen: only\.parquet"
                                           r".*pass --val GLOB"):
        cat("only.parquet").split("val")
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
    assert paths(sp.validation) == ["shard_01822.parquet"] and len(sp.train) == 1822 and not held_out_last(c)
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


# -- split naming as Hugging Face datasets infers it (issue 16) ------------------------------------
# datasets' tests/test_data_files.py::test_get_data_files_patterns, case by case: {split: files}
DATASETS_CASES = [
    {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"},
    {"train": "data/train.txt", "validation": "data/valid.txt", "test": "data/test.txt"},
    {"train": "train/split.txt", "validation": "valid/split.txt", "test": "test/split.txt"},
    {"train": [f"data/train_{i}.txt" for i in range(3)], "validation": [f"data/validation_{i}.txt" for i in range(3)],
     "test": [f"data/test_{i}.txt" for i in range(3)]},
    {"train": [f"data/train-0000{i}-of-00003.txt" for i in range(3)],
     "validation": [f"data/validation-0000{i}-of-00003.txt" for i in range(3)],
     "test": [f"data/test-0000{i}-of-00003.txt" for i in range(3)],
     "random": [f"data/random-0000{i}-of-00003.txt" for i in range(3)]},
    {"train": "dataset.txt"}, {"train": "data/dataset.txt"}, {"train": ["data/image.jpg", "metadata.jsonl"]},
    {"train": "my_train_dir/dataset.txt"}, {"train": "data/my_train_file.txt"}, {"test": "my_test_dir/dataset.txt"},
    {"test": "data/my_test_file.txt"}, {"validation": "my_validation_dir/dataset.txt"},
    {"validation": "data/my_validation_file.txt"}, {"train": "train_dir/dataset.txt"}, {"train": "data/train_file.txt"},
    {"test": "test_dir/dataset.txt"}, {"test": "data/test_file.txt"}, {"validation": "validation_dir/dataset.txt"},
    {"validation": "data/validation_file.txt"}, {"train": "my_train/dataset.txt"}, {"train": "data/my_train.txt"},
    {"test": "my_test/dataset.txt"}, {"test": "data/my_test.txt"}, {"validation": "my_validation/dataset.txt"},
    {"validation": "data/my_validation.txt"},
    {"test": "eval.txt"}, {"test": "data/eval.txt"}, {"test": "eval/dataset.txt"},
    {"validation": "dev.txt"}, {"validation": "data/dev.txt"}, {"validation": "dev/dataset.txt"},
    {"validation": "val.txt"}, {"validation": "data/val.txt"},
    {"train": "train.parquet", "validation": "valid.parquet", "test": "test.parquet"},
    {"train": "developers_list.txt"}, {"train": "data/seqeval_results.txt"}, {"train": "contest.txt"},
    {"test": "my.test.file.txt"}, {"test": "my-test-file.txt"}, {"test": "my_test_file.txt"},
    {"test": "my test file.txt"}, {"test": "my-test_file.txt"}, {"test": "test00001.txt"},
    {"test": "test/train.txt"},
]


@pytest.mark.parametrize("case", DATASETS_CASES, ids=lambda c: ",".join(f"{k}" for k in c))
def test_datasets_own_layouts_name_the_same_splits(case):
    """Every layout of datasets' test_get_data_files_patterns: the same file in the same split, case-sensitive
    (as datasets) and not; a split of another name (``random``) is one nanostream leaves out."""
    expected = {p: split for split, ps in case.items() for p in ([ps] if isinstance(ps, str) else ps)}
    for fold in (False, True):
        _, found = infer(sorted(expected), fold=fold)
        assert found == {p: {s} if s != "random" else set() for p, s in expected.items()}
    assert ("(splits random)" in assign(sorted(expected)).left_out) == ("random" in case)


@pytest.mark.parametrize("layout, train, validation, test, note", [
    # a split word in one file name does not switch off the folders (datasets: train 2, validation 1, test 1)
    (["train/a.parquet", "train/b.parquet", "validation/a.parquet", "test/train.parquet"],
     ["train/a.parquet", "train/b.parquet"], ["validation/a.parquet"], ["test/train.parquet"], ""),
    # split folders plus a stray file in no split folder: left out, as datasets leaves it out
    (["train/a.parquet", "train/b.parquet", "validation/c.parquet", "data/dev_sample.parquet"],
     ["train/a.parquet", "train/b.parquet"], ["validation/c.parquet"], [], ""),
    # a train-named file in test/ is test: never trained on; eval/ is test too (datasets), used for validation
    (["test/train-shard-03.parquet", "train/x.parquet", "train/y.parquet"],
     ["train/x.parquet", "train/y.parquet"], ["test/train-shard-03.parquet"], ["test/train-shard-03.parquet"],
     "using its 1 test file(s) for validation"),
    (["eval/dev-00000.parquet", "train/x.parquet"],
     ["train/x.parquet"], ["eval/dev-00000.parquet"], ["eval/dev-00000.parquet"], "using its 1 test file(s)"),
    # the Hub's commonest layout, and its plain form: train on train, validate on test
    (["data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"],
     ["data/train-00000-of-00001.parquet"], ["data/test-00000-of-00001.parquet"],
     ["data/test-00000-of-00001.parquet"], "no validation split: using its 1 test file(s) for validation"),
    (["train.parquet", "test.parquet"], ["train.parquet"], ["test.parquet"], ["test.parquet"], "test file(s)"),
    # rule 1 counts only its own files: the others are left out
    (["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "data/extra.parquet",
      "data/validation-00000-of-00001.parquet"],
     ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"],
     ["data/validation-00000-of-00001.parquet"], [], ""),
    # a file in two split folders is held out; rule 1's names map by keyword, others are left out
    (["train/a.parquet", "train/b.parquet", "train/val/x.parquet"],
     ["train/a.parquet", "train/b.parquet"], ["train/val/x.parquet"], [], ""),
    (["data/train-00000-of-00001.parquet", "data/dev-00000-of-00001.parquet", "data/random-00000-of-00001.parquet",
      "data/my-split-00000-of-00001.parquet"],
     ["data/train-00000-of-00001.parquet"], ["data/dev-00000-of-00001.parquet"], [], ""),
    # no split anywhere: the last train file is held out
    (["a.parquet", "b.parquet"], ["a.parquet"], ["b.parquet"], [], "holding out the last train file, b.parquet"),
    # one file: trained on, no validation split
    (["only.parquet"], ["only.parquet"], [], [], "training on only.parquet; there is no validation split"),
    # case-insensitive keywords, but never train on what datasets (case-sensitive) holds out
    (["Train.parquet", "Validation.parquet"], ["Train.parquet"], ["Validation.parquet"], [], ""),
    (["TRAIN/x_test.parquet", "TRAIN/y.parquet", "TRAIN/z.parquet"],
     ["TRAIN/y.parquet", "TRAIN/z.parquet"], ["TRAIN/x_test.parquet"], ["TRAIN/x_test.parquet"], "test file(s)"),
])
def test_layouts_of_the_issue_and_of_the_hub(layout, train, validation, test, note, caplog):
    c = cat(*layout, name=f"layout-{'-'.join(layout)}")
    with caplog.at_level(logging.WARNING, logger="nanostream.sources.catalog"):
        sp = c.splits()
        c.splits()
    assert (paths(sp.train), paths(sp.validation), paths(sp.test)) == (train, validation, test)
    assert not set(paths(sp.train)) & (set(validation) | set(test))
    said = [r.getMessage() for r in caplog.records if "no validation" in r.getMessage()
            or "one train file" in r.getMessage()]
    assert (len(said) == 1 and note in said[0]) if note else not said, said
    if not validation:
        with pytest.raises(DatasetError, match=r"split 'validation' resolves to no file.*--val GLOB"):
            c.split("val")
    assert paths(c.pick()) == train + validation


def test_a_dataset_without_validation_still_fetches_and_streams_train(tmp_path):
    """One train file: fetch takes it (no validation), stream("train") reads it, stream("val") says --val."""
    from nanostream.sources.resolve import split_indices

    c = Catalog("one", (DataFile("corpus.parquet", 10),))
    (tmp_path / "corpus.parquet").write_bytes(b"x")
    assert paths(c.pick(None)) == ["corpus.parquet"] and split_indices(c, tmp_path, "train", None) == (0,)
    with pytest.raises(DatasetError, match="--val GLOB"):
        split_indices(c, tmp_path, "val", None)
