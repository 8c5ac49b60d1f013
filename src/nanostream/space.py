"""Free-space preflight for a fetch: fail at once when the shards cannot fit on the disk.

When the folder's filesystem has less free space than a generous bound per missing
shard (``ROOMY``), the sizes of the missing shards are asked with HEAD (at most
``probe`` of them; the rest are estimated from their mean) and compared with
``statvfs``. Shards that already have a part file hold their space (it was
reserved with ``posix_fallocate``). Past the preflight, ``Fetcher`` still starts
only the shards whose space it can reserve, so a disk that fills later never ends
full of partials.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DiskFullError
from .partial import part_path
from .shards import shard_name

if TYPE_CHECKING:
    from .fetch import Fetcher

log = logging.getLogger(__name__)
ROOMY = 1 << 30  # free space above this per missing shard skips the probes


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


async def check_space(fetcher: Fetcher, indices: list[int], *, probe: int = 32) -> None:
    """Raise DiskFullError if the missing shards of ``indices`` cannot fit in the data folder."""
    folder = fetcher.data_dir
    missing = [i for i in indices if not (folder / shard_name(i)).exists()
               and not part_path(folder / shard_name(i)).exists()]
    free = await asyncio.to_thread(free_bytes, folder)
    if not missing or free >= len(missing) * ROOMY:
        return
    sample = missing[:probe]
    sizes: list[int] = []

    async def one(i: int) -> None:
        try:
            size = await fetcher.head(i)
        except Exception as exc:  # the download itself will report this shard's problem
            log.debug("size probe of %s failed: %s", shard_name(i), exc)
            return
        if size is not None:
            sizes.append(size)

    await asyncio.gather(*(one(i) for i in sample))
    if not sizes:
        return
    need = sum(sizes) + (len(missing) - len(sizes)) * (sum(sizes) // len(sizes))
    if need > free:
        how = "" if len(sizes) == len(missing) else f" (estimated from {len(sizes)} sizes)"
        raise DiskFullError(
            f"not enough free space in {folder}: the {len(missing)} shards to fetch need "
            f"{need / 1e6:.1f} MB{how}, {free / 1e6:.1f} MB free; free some space, fetch fewer shards (-n) "
            "or choose another --data-dir")
