"""STUB being written now: the async shard downloader. Signatures below are final."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import FetchError


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    base: float = 1.0
    cap: float = 60.0
    connect_timeout: float = 30.0
    read_timeout: float = 60.0


@dataclass
class ShardResult:
    index: int
    path: Path | None
    size: int = 0
    downloaded: int = 0
    attempts: int = 0
    skipped: bool = False
    error: FetchError | None = None


class Fetcher:
    def __init__(self, data_dir: Path, base_url: str, *, workers: int = 8, token: str | None = None,
                 retry: RetryPolicy = RetryPolicy(), verify: bool = False, progress=None) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Fetcher: ...
    async def __aexit__(self, *exc) -> None: ...
    async def fetch(self, index: int) -> ShardResult: ...


async def fetch_shards(indices: Iterable[int], *, data_dir: Path, base_url: str, workers: int = 8,
                       token: str | None = None, retry: RetryPolicy = RetryPolicy(), verify: bool = False,
                       on_shard: Callable[[ShardResult], None] | None = None, progress=None) -> list[ShardResult]:
    raise NotImplementedError
