"""Free-space preflight for a fetch: fail at once when the missing files cannot fit on the disk."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..concurrency import run_each
from ..errors import DiskFullError
from ..sources.catalog import DataFile
from .partial import part_path

log = logging.getLogger(__name__)
ROOMY = 1 << 30  # free space above this per missing shard skips the probes


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


async def check_space(folder: Path, files: list[DataFile], head: Callable[[DataFile], Awaitable[int | None]], *,
                      probe: int = 32) -> None:
    """Raise DiskFullError if the missing ones of ``files`` cannot fit in ``folder``: the sizes the catalog
    lists, the others asked with ``head`` (``Fetcher.head``)."""
    missing = [f for f in files if not (folder / f.path).exists() and not part_path(folder / f.path).exists()]
    free = await asyncio.to_thread(free_bytes, folder)
    if not missing or free >= len(missing) * ROOMY:
        return
    listed = [f.size for f in missing if f.size is not None]
    sample = [f for f in missing if f.size is None][: max(probe - len(listed), 1)]
    sizes: list[int] = list(listed)

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
