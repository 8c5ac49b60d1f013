"""Config from the environment, the built-in datasets and URL checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanostream.config import DATASETS, Config, check_url, get_dataset, token_allowed
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


@pytest.mark.parametrize(("url", "hosts", "ok"), [
    ("https://huggingface.co/datasets/x/resolve/main/a", {"huggingface.co"}, True),
    ("http://huggingface.co/datasets/x", {"huggingface.co"}, False),  # cleartext to a remote host
    ("http://node0:8000/shard_00000.parquet", {"huggingface.co"}, False),
    ("http://node0:8000/shard_00000.parquet", {"node0:8000"}, False),  # opted in, but not over https
    ("https://node0:8443/x", {"node0:8443"}, True),
    ("https://node0:8443/x", {"node0"}, True),
    ("http://127.0.0.1:9/x", {"127.0.0.1:9"}, True),  # loopback may be plain http
    ("http://localhost:9/x", {"localhost"}, True),
    ("http://[::1]:9/x", {"[::1]:9"}, True),
    ("https://user:pw@evil.example/x", {"huggingface.co"}, False),
])
def test_token_goes_only_to_allowed_hosts_over_https_or_loopback(url, hosts, ok):
    assert token_allowed(url, hosts) is ok


def test_token_hosts_are_the_endpoint_plus_opt_ins():
    cfg = Config.from_env({"HF_ENDPOINT": "https://hub.example:8443", "NANOSTREAM_TOKEN_HOSTS": "a, B:1 ,"})
    assert cfg.token_hosts == {"hub.example:8443", "a", "b:1"}
    assert Config.from_env({}).token_hosts == {"huggingface.co"}
