"""``fetch_files`` and ``fetch_shards``: a list of files with one ``Fetcher``, one ``ShardResult`` each, in order;
and the free-space preflight, which fails at once when the missing files cannot fit on the disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Iterable
from pathlib import Path

from ..concurrency import run_each
from ..config import DEFAULT_TOKEN_HOSTS, check_url
from ..errors import DiskFullError
from ..retry import RetryPolicy
from ..shards import shard_name
from ..sources.catalog import DataFile
from ..sources.credentials import Credentials
from .fetcher import DEFAULT_RETRY, Fetcher
from .outcomes import ShardResult
from .partial import part_path

log = logging.getLogger(__name__)


async def fetch_files(files: Iterable[DataFile], *, data_dir: Path, workers: int = 8,
                      retry: RetryPolicy = DEFAULT_RETRY, verify: bool = False,
                      on_shard: Callable[[ShardResult], None] | None = None, progress=None,
                      check_space: bool = False, token: str | None = None,
                      token_hosts: Collection[str] = DEFAULT_TOKEN_HOSTS, s3_endpoint: str | None = None,
                      min_split: int | None = None) -> list[ShardResult]:
    """Fetch every file; one result each, in order (``index``: its place in the list), ``on_shard`` called as
    each lands or fails. Raises only for bad arguments (``ConfigError``), a disk too small for the files
    (``DiskFullError``, with ``check_space``) or cancellation."""
    items = list(dict.fromkeys(files))
    results: dict[int, ShardResult] = {}

    async def one(f: Fetcher, k: int, file: DataFile) -> None:
        results[k] = await f.fetch_result(file, index=k)
        if on_shard is not None:
            on_shard(results[k])

    async with Fetcher(Path(data_dir), workers=workers, retry=retry, verify=verify, progress=progress,
                       min_split=min_split, credentials=Credentials(token, token_hosts, s3_endpoint)) as f:
        await f.credentials.prepare(file.url for file in items)  # a credential problem: one error, here
        if check_space:
            await check_free_space(f.data_dir, items, f.head)
        await run_each(one(f, k, file) for k, file in enumerate(items))
    return [results[k] for k in range(len(items))]


async def fetch_shards(indices: Iterable[int], *, data_dir: Path, base_url: str, **kwargs) -> list[ShardResult]:
    """Fetch ``base_url/shard_XXXXX.parquet`` for each index (see ``fetch_files``)."""
    base_url = check_url(base_url)
    files = [DataFile(shard_name(i), None, url=f"{base_url}/{shard_name(i)}") for i in indices]
    return await fetch_files(files, data_dir=data_dir, **kwargs)


async def check_free_space(folder: Path, files: list[DataFile],
                           head: Callable[[DataFile], Awaitable[int | None]]) -> None:
    """Raise DiskFullError if the missing ones of ``files`` cannot fit in ``folder``: the sizes the catalog
    lists, the others asked with ``head`` (``Fetcher.head``)."""
    missing = [f for f in files if not (folder / f.path).exists() and not part_path(folder / f.path).exists()]
    disk = await asyncio.to_thread(os.statvfs, folder)
    free = disk.f_bavail * disk.f_frsize
    if not missing or free >= len(missing) << 30:  # 1 GB a missing file: room enough without asking sizes
        return
    sizes = [f.size for f in missing if f.size is not None]
    sample = [f for f in missing if f.size is None][: max(32 - len(sizes), 1)]

    async def one(f: DataFile) -> None:
        try:
            size = await head(f)
        except Exception as exc:  # noqa: BLE001  (the download itself reports this file's problem)
            log.debug("size probe of %s failed: %s", f.path, exc)
            return
        if size is not None:
            sizes.append(size)

    await run_each(one(f) for f in sample)
    if not sizes:
        return
    need = sum(sizes) + (len(missing) - len(sizes)) * (sum(sizes) // len(sizes))
    if need > free:
        how = "" if len(sizes) == len(missing) else f" (estimated from {len(sizes)} sizes)"
        raise DiskFullError(
            f"not enough free space in {folder}: the {len(missing)} shards to fetch need "
            f"{need / 1e6:.1f} MB{how}, {free / 1e6:.1f} MB free; free some space, fetch fewer files (-n), "
            "choose another --data-dir, or stream them instead with a cache_limit= below the free space")
