"""open_catalog: every form of --dataset, and a folder's record pinning what later calls get."""

from __future__ import annotations

import pytest

from nanostream.config import Config
from nanostream.errors import ConfigError, DatasetError
from nanostream.sources.catalog import write_catalog
from nanostream.sources.resolve import folder_name, open_catalog

from datagen import write_shard
from hubserver import HubServer


def files_at(folder, *names):
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_shard(folder / name, i, 1, 2)


async def test_a_recorded_folder_keeps_its_commit_without_asking_the_hub(tmp_path):
    files_at(tmp_path / "v1", "a.parquet", "b.parquet")
    files_at(tmp_path / "v2", "a.parquet", "b.parquet", "c.parquet")
    async with HubServer() as hub:
        old = hub.add_repo("org/name", tmp_path / "v1")
        cfg = Config(base_dir=tmp_path, hf_endpoint=hub.url)
        first = await open_catalog("hf://datasets/org/name", config=cfg, data_dir=tmp_path / "data")
        write_catalog(tmp_path / "data", first)
        hub.commit("org/name", tmp_path / "v2")
        asked = len(hub.requests)
        again = await open_catalog("hf://datasets/org/name", config=cfg, data_dir=tmp_path / "data")
        assert len(hub.requests) == asked  # no network: the record is the pin
        fresh = await open_catalog("hf://datasets/org/name", config=cfg, data_dir=tmp_path / "other")
    assert again == first and again.revision == old and len(again.files) == 2
    assert fresh.revision != old and len(fresh.files) == 3
    same = await open_catalog(None, config=cfg, data_dir=tmp_path / "data", text_column="body", val="a.*")
    assert same.revision == old and same.text_column == "body" and [f.path for f in same.split("val")] == ["a.parquet"]
    with pytest.raises(DatasetError, match=r"holds dataset hf://datasets/org/name, not s3://b0b/x/"):
        await open_catalog("s3://b0b/x/", config=cfg, data_dir=tmp_path / "data")
    with pytest.raises(DatasetError, match=r"fetched with --include None, not '\*\.parquet'"):
        await open_catalog(None, config=cfg, data_dir=tmp_path / "data", include="*.parquet")


async def test_built_in_names_local_folders_and_bad_forms(tmp_path):
    cfg = Config(base_dir=tmp_path, hf_endpoint="http://hub.test")
    cat = await open_catalog("climbmix-400b", config=cfg, text_column="content")
    assert cat.files[0].url.startswith("http://hub.test/datasets/karpathy/climbmix-400b-shuffle/resolve/main/")
    assert cat.text_column == "content" and len(cat.files) == 6543
    files_at(tmp_path / "mine", "x/1.parquet", "x/2.parquet")
    local = await open_catalog(None, config=cfg, data_dir=tmp_path / "mine")
    assert [f.path for f in local.files] == ["x/1.parquet", "x/2.parquet"] and local.files[0].url == ""
    with pytest.raises(DatasetError, match=r"unknown scheme 'gs'; use hf://datasets/ORG/NAME, s3://BUCKET/PREFIX/"):
        await open_catalog("gs://bucket/x/", config=cfg)
    with pytest.raises(ConfigError, match="unknown dataset 'fineweb'"):
        await open_catalog("fineweb", config=cfg)
    with pytest.raises(DatasetError, match="--include applies to hf:// and s3://"):
        await open_catalog("fineweb-edu-100b", config=cfg, include="x*")
    with pytest.raises(DatasetError, match="pass --dataset or --data-dir"):
        await open_catalog(None, config=cfg)


@pytest.mark.parametrize("dataset, folder", [
    ("fineweb-edu-100b", "fineweb-edu-100b"),
    ("hf://datasets/HuggingFaceFW/fineweb/data/CC-MAIN-2024-10", "hf/HuggingFaceFW/fineweb/data/CC-MAIN-2024-10"),
    ("hf://datasets/org/name@refs/pr/3", "hf/org/name@refs%2Fpr%2F3"),
    ("s3://my-bucket/corpus/v2/", "s3/my-bucket/corpus/v2"),
    ("s3://my-bucket", "s3/my-bucket"),
])
def test_default_folders_keep_sources_and_revisions_apart(dataset, folder):
    assert folder_name(dataset) == folder
