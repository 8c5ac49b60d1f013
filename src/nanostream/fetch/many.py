"""``fetch_files`` and ``fetch_shards``: a list of files with one ``Fetcher``, one ``ShardResult`` each, in order."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ..concurrency import run_each
from ..errors import FetchError
from ..retry import RetryPolicy
from ..sources.catalog import DataFile
from .fetcher import DEFAULT_RETRY, Fetcher
from .outcomes import ShardResult
from .space import check_space as preflight


async def fetch_files(files: Iterable[DataFile | int], *, data_dir: Path, base_url: str | None = None,
                      workers: int = 8, token: str | None = None, retry: RetryPolicy = DEFAULT_RETRY,
                      verify: bool = False, on_shard: Callable[[ShardResult], None] | None = None,
                      progress=None, check_space: bool = False, **fetcher_kwargs) -> list[ShardResult]:
    """Fetch every file (a ``DataFile``, or a shard index under ``base_url``); one result each, in order,
    ``on_shard`` called as each lands or fails. Raises only for bad arguments (``ConfigError``), a disk
    too small for the files (``DiskFullError``, with ``check_space``) or cancellation."""
    items = list(dict.fromkeys(files))
    results: dict[int, ShardResult] = {}

    async def one(f: Fetcher, k: int, item: DataFile | int) -> None:
        key = f.data_file(item).path
        try:
            res = await f.fetch(item, index=k)
        except FetchError as exc:
            res = f.jobs.failed.get(key) or ShardResult(item if isinstance(item, int) else k, None, error=exc, file=key)
        results[k] = res
        if on_shard is not None:
            on_shard(res)

    async with Fetcher(Path(data_dir), base_url, workers=workers, token=token, retry=retry, verify=verify,
                       progress=progress, **fetcher_kwargs) as f:
        await f.credentials.prepare(f.data_file(i).url for i in items)  # a credential problem: one error, here
        if check_space:
            await preflight(f.data_dir, [f.data_file(i) for i in items], f.head)
        await run_each(one(f, k, item) for k, item in enumerate(items))
    return [results[k] for k in range(len(items))]


async def fetch_shards(indices: Iterable[int], *, data_dir: Path, base_url: str, **kwargs) -> list[ShardResult]:
    """Fetch ``base_url/shard_XXXXX.parquet`` for each index (see ``fetch_files``)."""
    return await fetch_files(list(indices), data_dir=data_dir, base_url=base_url, **kwargs)
