"""Configuration: the built-in datasets, and the one frozen ``Config``, read from the environment here and
nowhere else (``Config.from_env``; the table is in docs/configuration.md)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_TOKEN_HOSTS = frozenset({"huggingface.co"})
LOOPS = ("asyncio", "uvloop")
CACHE_POLICIES = ("belady", "lru")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 10**3, "m": 10**6,
          "g": 10**9, "t": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*|%)\s*$")


@dataclass(frozen=True)
class CacheLimit:
    """A data folder's disk budget: ``fraction`` of its filesystem's size if given, else ``nbytes`` exactly."""

    nbytes: int = 0
    fraction: float | None = None

    def resolve(self, filesystem_bytes: int) -> int:
        """The budget in bytes for a folder on a filesystem of ``filesystem_bytes``."""
        return self.nbytes if self.fraction is None else int(self.fraction * filesystem_bytes)


def parse_cache_limit(value: object, what: str = "cache_limit") -> CacheLimit | None:
    """``cache_limit`` as given: None (unbounded), bytes (an int), or a string: ``"40GB"``, ``"500MiB"``
    (units B, KB/MB/GB/TB = 1000^n, KiB/MiB/GiB/TiB = 1024^n) or ``"75%"`` of the data folder's
    filesystem. ConfigError naming ``what`` for anything else."""
    if value is None or isinstance(value, CacheLimit):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{what} must be bytes (an int) or a string like '40GB', '500MiB' or '75%', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{what} must be >= 0 bytes, got {value}")
        return CacheLimit(nbytes=value)
    m = _SIZE_RE.match(value.lower())
    if m is not None and m.group(2) == "%":
        if not 0 < float(m.group(1)) <= 100:
            raise ConfigError(f"{what}={value!r}: a percentage must be in (0, 100]%, e.g. '75%'")
        return CacheLimit(fraction=float(m.group(1)) / 100)
    if m is None or m.group(2) not in _UNITS:
        raise ConfigError(f"{what}={value!r} is not a size: use bytes, '40GB', '500MiB' (B, KB, MB, GB, TB, "
                          "KiB, MiB, GiB, TiB) or a percentage of the data folder's filesystem, '75%'")
    return CacheLimit(nbytes=int(float(m.group(1)) * _UNITS[m.group(2)]))


@dataclass(frozen=True)
class Dataset:
    """A built-in dataset: a Hub repo of ``shard_XXXXX.parquet`` files, the last one validation."""

    name: str
    repo: str
    max_shard: int
    text_column: str = "text"

    def base_url(self, endpoint: str = DEFAULT_ENDPOINT) -> str:
        return f"{endpoint.rstrip('/')}/datasets/{self.repo}/resolve/main"


DATASETS: dict[str, Dataset] = {
    "fineweb-edu-100b": Dataset("fineweb-edu-100b", "karpathy/fineweb-edu-100b-shuffle", 1822),
    "climbmix-400b": Dataset("climbmix-400b", "karpathy/climbmix-400b-shuffle", 6542),
}
DEFAULT_DATASET = "fineweb-edu-100b"


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}: choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def check_url(url: str) -> str:
    """Return ``url`` without a trailing slash, or raise ConfigError if it is not http(s)."""
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise ConfigError(f"base URL {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


def host_of(url: str) -> str:
    """``host[:port]`` of an http(s) URL, lower-cased (no userinfo)."""
    return url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1].lower()


def token_allowed(url: str, hosts: Collection[str]) -> bool:
    """May a bearer token go to ``url``? Only to ``hosts`` (``host`` or ``host:port``), and only
    over https unless that host is loopback (a test server or a local mirror)."""
    host = host_of(url)
    bare = host.rsplit(":", 1)[0] if ":" in host and not host.endswith("]") else host
    if host not in hosts and bare not in hosts:
        return False
    name = bare.strip("[]")
    try:
        return url.startswith("https://") or name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:  # a name, not an address
        return False


@dataclass(frozen=True)
class Config:
    """Settings from the environment. Build with ``Config.from_env()``."""

    base_dir: Path = field(default_factory=lambda: Path("~/.cache/nanostream").expanduser())
    hf_endpoint: str = DEFAULT_ENDPOINT
    hf_token: str | None = field(default=None, repr=False)
    loop: str = "asyncio"
    token_hosts: frozenset[str] = DEFAULT_TOKEN_HOSTS  # where HF_TOKEN may be sent
    s3_endpoint: str | None = None
    cache_limit: CacheLimit | None = None  # the default ``cache_limit`` of stream()/TokenDataset
    cache_policy: str = "belady"  # eviction order under a limit (``lru``: for the ablation bench)
    nanochat_base_dir: Path = field(default_factory=lambda: Path("~/.cache/nanochat").expanduser())
    nanochat_dataset: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        base = env.get("NANOSTREAM_BASE_DIR") or "~/.cache/nanostream"
        endpoint = check_url(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
        loop, policy = env.get("NANOSTREAM_LOOP") or "asyncio", env.get("NANOSTREAM_CACHE_POLICY") or "belady"
        for name, value, choices in (("NANOSTREAM_LOOP", loop, LOOPS),
                                     ("NANOSTREAM_CACHE_POLICY", policy, CACHE_POLICIES)):
            if value not in choices:
                raise ConfigError(f"{name}={value!r}: choose {' or '.join(choices)}")
        extra = {h.strip().lower() for h in (env.get("NANOSTREAM_TOKEN_HOSTS") or "").split(",") if h.strip()}
        s3 = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        if s3 and not s3.startswith(("http://", "https://")):
            raise ConfigError(f"AWS_ENDPOINT_URL(_S3)={s3!r} is not an http:// or https:// URL")
        return cls(
            base_dir=Path(base).expanduser(),
            hf_endpoint=endpoint,
            hf_token=env.get("HF_TOKEN") or None,
            loop=loop,
            token_hosts=frozenset({host_of(endpoint), *extra}),
            s3_endpoint=check_url(s3) if s3 else None,
            cache_limit=parse_cache_limit(env.get("NANOSTREAM_CACHE_LIMIT") or None, "NANOSTREAM_CACHE_LIMIT"),
            cache_policy=policy,
            nanochat_base_dir=Path(env.get("NANOCHAT_BASE_DIR") or "~/.cache/nanochat").expanduser(),
            nanochat_dataset=env.get("NANOCHAT_DATASET") or None,
        )

    def data_dir(self, dataset: str = DEFAULT_DATASET) -> Path:
        """Default folder for a dataset's shards: ``BASE_DIR/data/NAME``."""
        return self.base_dir / "data" / dataset

    def tokenizer_dir(self) -> Path:
        return self.base_dir / "tokenizer"

    def nanochat_data_dir(self, *, reading: bool = True) -> Path:
        """nanochat's data folder, as nanochat finds it: ``NANOCHAT_BASE_DIR/datasets/NANOCHAT_DATASET``, else
        ``base_data_climbmix``, else (``reading``, when only it exists) the older ``base_data``."""
        base = self.nanochat_base_dir
        if self.nanochat_dataset:
            return base / "datasets" / self.nanochat_dataset
        climbmix, legacy = base / "base_data_climbmix", base / "base_data"
        return legacy if reading and not climbmix.exists() and legacy.exists() else climbmix
