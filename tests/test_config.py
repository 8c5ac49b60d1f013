"""Config from the environment, the built-in datasets and URL checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanostream.config import DATASETS, Config, check_url, get_dataset
from nanostream.errors import ConfigError, NanostreamError


def test_defaults():
    cfg = Config.from_env({})
    assert cfg.base_dir == Path("~/.cache/nanostream").expanduser()
    assert cfg.hf_endpoint == "https://huggingface.co" and cfg.hf_token is None and cfg.loop == "asyncio"
    assert cfg.data_dir() == cfg.base_dir / "data" / "fineweb-edu-100b"


def test_env_overrides_and_token_is_never_in_repr(tmp_path):
    cfg = Config.from_env({"NANOSTREAM_BASE_DIR": str(tmp_path), "HF_TOKEN": "hf_secret",
                           "HF_ENDPOINT": "http://127.0.0.1:9/", "NANOSTREAM_LOOP": "uvloop"})
    assert cfg.base_dir == tmp_path and cfg.hf_token == "hf_secret" and cfg.loop == "uvloop"
    assert "hf_secret" not in repr(cfg)
    url = get_dataset("fineweb-edu-100b").base_url(cfg.hf_endpoint)
    assert url == "http://127.0.0.1:9/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"


def test_builtin_datasets():
    assert DATASETS["fineweb-edu-100b"].max_shard == 1822
    assert DATASETS["climbmix-400b"].max_shard == 6542
    assert DATASETS["climbmix-400b"].repo == "karpathy/climbmix-400b-shuffle"
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        get_dataset("nope")


@pytest.mark.parametrize("bad", [{"NANOSTREAM_LOOP": "trio"}, {"HF_ENDPOINT": "ftp://x"}])
def test_bad_env_is_a_config_error(bad):
    with pytest.raises(ConfigError) as info:
        Config.from_env(bad)
    assert isinstance(info.value, NanostreamError)


@pytest.mark.parametrize("url", ["ftp://x", "x", "http://", "/tmp/x"])
def test_check_url_rejects_non_http(url):
    with pytest.raises(ConfigError):
        check_url(url)
    assert check_url("https://h/x/") == "https://h/x"
