"""The offline sample corpus: determinism, exact shard layout, English text, folder handling, CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import demo.sample as sample
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from demo.tokenizer import train_tokenizer

from nanostream.errors import ConfigError
from nanostream.shards import list_shards, shard_name
from nanostream.sources.catalog import read_catalog

from datagen import make_shards

STOPWORDS = set("the a an of to is and in that for it as with be by on not this are or from at".split())


def _cli(args: list[str], base: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NANOSTREAM_BASE_DIR": str(base)}
    return subprocess.run([sys.executable, "-m", "demo.sample", *args], env=env, capture_output=True, text=True,
                          timeout=110, check=False, cwd=Path(__file__).parents[1])


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard_*.parquet"))}


def _texts(path: Path) -> list[str]:
    return pq.read_table(path, columns=["text"]).column("text").to_pylist()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("sample")
    return folder, sample.write_sample(folder, shards=3)


@pytest.mark.slow
def test_cli_writes_byte_identical_shards(corpus: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """A second run, in another process via the CLI, gives exactly the same bytes."""
    folder, _ = corpus
    other = tmp_path / "again"
    res = _cli([str(other), "--shards", "3"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines() == [f"wrote 3 sample shards to {other} (validation: shard_00002.parquet)"]
    assert _digests(other) == _digests(folder)
    assert len(_digests(folder)) == 3


def test_layout(corpus: tuple[Path, list[Path]]) -> None:
    folder, paths = corpus
    assert [p.name for p in paths] == [shard_name(i) for i in range(3)]
    assert sorted(os.listdir(folder)) == [".nanostream.json", *(shard_name(i) for i in range(3))]
    record = read_catalog(folder)
    assert record is not None
    assert (len(record.files), record.name, record.text_column) == (3, "sample", "text")
    assert [f.url for f in record.files] == ["", "", ""]  # no remote
    assert [f.path for f in record.split("train")] == [shard_name(0), shard_name(1)]
    assert [f.path for f in record.split("val")] == [shard_name(2)]
    sizes = []
    for path in paths:
        with pq.ParquetFile(path) as pf:
            assert pf.schema_arrow == pa.schema([("text", pa.string())])
            meta = pf.metadata
            rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            assert all(n == 1024 for n in rows[:-1]) and 0 < rows[-1] <= 1024
            assert all(meta.row_group(i).column(0).compression == "ZSTD" for i in range(meta.num_row_groups))
            sizes.append(meta.num_rows)
        assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert sizes[0] == sizes[1] and sizes[0] % 1024 == 0
    assert 0 < sizes[2] <= sizes[0]  # the validation shard is the smaller remainder
    assert sum(sizes) > 5000


def test_text_is_english_and_deduplicated(corpus: tuple[Path, list[Path]]) -> None:
    _, paths = corpus
    shards = [_texts(p) for p in paths]
    docs = [d for s in shards for d in s]
    assert len(set(docs)) == len(docs)  # no duplicates, so train and validation are disjoint
    assert all(len(d) >= sample.MIN_CHARS for d in docs)
    assert not any(line.lstrip().startswith(">>>") for d in docs for line in d.splitlines())
    chars = sum(map(len, docs))
    assert 3_000_000 < chars < 60_000_000
    words = " ".join(docs).split()
    alpha = sum(w.strip(".,;:()'\"`").isalpha() for w in words) / len(words)
    common = sum(w.lower() in STOPWORDS for w in words) / len(words)
    assert alpha > 0.7 and common > 0.12, (alpha, common)
    assert sum("the" in d.split() for d in docs) > 0.8 * len(docs)
    # every shard is a mix, not one source each: a BPE trained on shard 0 encodes the val shard well
    tok = train_tokenizer(shards[0], vocab_size=2048, max_chars=2_000_000)
    val = "\n".join(shards[2][:300])
    assert len(val.encode()) / len(tok.encode(val)) > 3.0


@pytest.mark.slow
def test_cli_rejects_one_shard(tmp_path: Path) -> None:
    res = _cli([str(tmp_path / "s"), "--shards", "1"], tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--shards" in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("n", "shards", "dpg"), [(14613, 4, 1024), (14613, 2, 1024), (11000, 10, 1024),
                                                  (11000, 11, 1024), (5000, 7, 1024), (100, 3, 10),
                                                  (20, 20, 1024), (4096, 4, 1024)])
def test_split_counts(n: int, shards: int, dpg: int) -> None:
    counts = sample.split_counts(n, shards, dpg)
    assert len(counts) == shards and sum(counts) == n and min(counts) > 0
    train = counts[:-1]
    assert len(set(train)) == 1
    if n >= shards * dpg:
        assert train[0] % dpg == 0  # train shards hold whole row groups


@pytest.mark.parametrize(("n", "shards", "dpg"), [(5, 6, 1024), (100, 1, 10), (100, 3, 0)])
def test_split_counts_rejects(n: int, shards: int, dpg: int) -> None:
    with pytest.raises(ConfigError):
        sample.split_counts(n, shards, dpg)


def test_clean_drops_examples_and_code() -> None:
    prose = ("Return the number of items in the container. This is the value that is used by the "
             "len builtin, and it is also used when the object is tested for truth in an if statement.")
    doc = f"{prose}\n\nExamples:\n\n>>> len([1, 2])\n2\n>>> x = 3\n\nThat is all there is to it."
    cleaned = sample.clean(doc)
    assert cleaned is not None and ">>>" not in cleaned and "\n2\n" not in cleaned
    assert cleaned.startswith(prose) and cleaned.endswith("That is all there is to it.")
    assert sample.clean("Too short.") is None
    code = "x = foo(bar, baz)\n" * 30 + "y = {k: v for k, v in d.items()}\n" * 10
    assert sample.clean(code) is None


@pytest.fixture()
def small_docs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Folder-handling tests write a 50-document corpus instead of extracting the real one."""
    docs = [f"document {i}: the text of a small sample document, and it is in English." for i in range(50)]
    monkeypatch.setattr(sample, "documents", lambda: list(docs))
    return docs


def test_rerun_with_fewer_shards_replaces_the_old_ones(small_docs: list[str], tmp_path: Path) -> None:
    folder = tmp_path / "s"
    sample.write_sample(folder, shards=4, docs_per_group=8)
    old, fresh = folder / f"{sample.TMP_PREFIX}killed.tmp", folder / f"{sample.TMP_PREFIX}running.tmp"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(old, (0, 0))
    paths = sample.write_sample(folder, shards=2, docs_per_group=8)
    assert list_shards(folder) == [0, 1]
    assert sorted(os.listdir(folder)) == [".nanostream.json", fresh.name, shard_name(0), shard_name(1)]
    assert len(read_catalog(folder).files) == 2  # type: ignore[union-attr]
    assert [d for p in paths for d in _texts(p)] == small_docs
    groups = []
    for path in paths:
        with pq.ParquetFile(path) as pf:
            groups.append([pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)])
    assert groups == [[8, 8, 8, 8], [8, 8, 2]]  # 32 train docs in whole groups, the rest validation


def test_refuses_a_folder_holding_other_data(small_docs: list[str], tmp_path: Path) -> None:
    folder = tmp_path / "real"
    make_shards(folder, 2)
    before = _digests(folder)
    with pytest.raises(ConfigError, match="pick an empty folder"):
        sample.write_sample(folder, shards=2)
    bare = tmp_path / "bare"
    make_shards(bare, 2, record=False)
    with pytest.raises(ConfigError, match=str(bare)):
        sample.write_sample(bare, shards=2)
    assert _digests(folder) == before
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match=str(afile)):
        sample.write_sample(afile, shards=2)
