"""The folder record of a catalog: JSON round trip, atomic write, and bad records."""

from __future__ import annotations

import json

import pytest

from nanostream.errors import DatasetError
from nanostream.sources.catalog import (
    Catalog,
    DataFile,
    builtin_catalog,
    catalog_from_json,
    catalog_to_json,
    read_catalog,
    write_catalog,
)

SHA = "ab" * 32


def test_record_round_trip_keeps_everything_and_stays_compact(tmp_path):
    base = "http://h/datasets/o/n/resolve/" + "c" * 40
    files = (DataFile("data/a b.parquet", 5, SHA, None, base + "/data/a%20b.parquet"),
             DataFile("data/b.parquet", 6, None, "cd" * 16, base + "/data/b.parquet"),
             DataFile("other.parquet", 7, None, None, "s3://bucket/key/other.parquet"))
    c = Catalog("hf://datasets/o/n", files, "content", "data/b*", "hf://datasets/o/n", "c" * 40, "*.parquet")
    raw = catalog_to_json(c)
    assert raw["base_url"] == base and "url" not in raw["files"][0] and raw["files"][2]["url"].startswith("s3:")
    write_catalog(tmp_path, c)
    assert read_catalog(tmp_path) == c
    assert read_catalog(tmp_path / "missing") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".nanostream.json"]
    big = builtin_catalog("climbmix-400b", "https://huggingface.co")
    assert len(json.dumps(catalog_to_json(big))) < 400_000
    assert catalog_from_json(json.loads(json.dumps(catalog_to_json(big)))) == big


def test_bad_records_are_config_errors(tmp_path):
    (tmp_path / ".nanostream.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not a valid nanostream record"):
        read_catalog(tmp_path)
    (tmp_path / ".nanostream.json").write_text(json.dumps({"format": "nanostream-catalog", "version": 9}))
    with pytest.raises(DatasetError, match="upgrade nanostream"):
        read_catalog(tmp_path)
