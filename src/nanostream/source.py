"""Local paths for the shards a stream reads, fetching missing ones in the background.

``ShardSource`` owns the stream's ``Fetcher`` (opened lazily, only when a shard is
missing) and its download tasks: shards are fetched in consumption order, at
most ``ahead`` beyond the one being read, and a corrupt local shard can be
deleted and fetched once more. Everything it started is cancelled and awaited
on ``aclose``. The downloader itself (verification, atomic rename, one download
per shard across processes via file locks) is ``nanostream.fetch``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from .config import host_of
from .errors import ConfigError, MissingShardError
from .shards import FolderRecord, read_record, shard_name, write_record

log = logging.getLogger(__name__)


def usable_remote(url: str | None) -> bool:
    """True if ``url`` names a remote to download from (a record's empty base_url means none)."""
    return bool(url)


def file_id(path: Path) -> tuple[int, int, int, int] | None:
    """Identity of the file at ``path`` (device, inode, size, mtime), None if absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ShardSource:
    """Resolves shard indices to verified local files, downloading what is missing."""

    def __init__(self, data_dir: Path, base_url: str | None, *, max_shard: int, token: str | None = None,
                 workers: int = 4, ahead: int = 2, retry: Any = None) -> None:
        self.data_dir = data_dir
        self.base_url = base_url if usable_remote(base_url) else None
        self.max_shard = max_shard
        self.token = token
        self.workers = max(1, workers)
        self.ahead = max(0, ahead)
        self.retry = retry
        self.fetched = 0  # shards this source downloaded (or waited for another process to download)
        self._tasks: dict[int, asyncio.Task[Path]] = {}
        self._stack = AsyncExitStack()
        self._fetcher: Any = None
        self._fetcher_lock = asyncio.Lock()

    @property
    def remote_known(self) -> bool:
        return self.base_url is not None

    def path(self, index: int) -> Path:
        return self.data_dir / shard_name(index)

    async def __aenter__(self) -> ShardSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def want(self, indices: Iterable[int]) -> None:
        """Start downloading those of ``indices`` that are missing (call in consumption order)."""
        for index in indices:
            if index in self._tasks or self.path(index).exists():
                continue
            self._missing_check(index)
            self._tasks[index] = asyncio.create_task(self._fetch(index), name=f"nanostream-fetch-{index}")

    async def get(self, index: int, upcoming: Iterable[int] = ()) -> Path:
        """The local file of shard ``index``; then starts fetching the first ``ahead`` of ``upcoming``.

        The shard needed now is requested alone, so it has every connection to itself
        (the fetcher splits one shard over its workers): the first batch comes after
        about one shard's download. The ones after it start as soon as it has landed.
        """
        self.want([index])
        task = self._tasks.pop(index, None)
        if task is None:
            path = self.path(index)
        else:
            try:
                path = await task
            finally:
                if not task.done():  # we were cancelled: do not leave the download behind
                    task.cancel()
                    await asyncio.wait([task])
        self.want(list(upcoming)[: self.ahead])
        return path

    async def replace(self, index: int, seen: tuple[int, int, int, int] | None) -> Path:
        """Delete a corrupt shard (if it is still the file we read) and download it again."""
        path = self.path(index)
        if seen is not None and file_id(path) == seen:
            log.warning("%s is unreadable: deleting it and fetching it again from %s", path, self.base_url)
            path.unlink(missing_ok=True)
        return await self.get(index)

    def _missing_check(self, index: int) -> None:
        if self.base_url is None:
            raise MissingShardError(
                f"{self.path(index)} is missing and no remote is known for {self.data_dir}: "
                "run `nanostream fetch` first, or pass base_url= (or dataset=) to stream()",
                path=self.path(index),
            )

    async def _open_fetcher(self) -> Any:
        async with self._fetcher_lock:
            if self._fetcher is None:
                from .fetch import Fetcher

                # the caller decided the token may go to base_url's host (stream() checks Config.token_hosts)
                kwargs: dict[str, Any] = {"workers": self.workers, "token": self.token,
                                          "token_hosts": {host_of(self.base_url or "")}}
                if self.retry is not None:
                    kwargs["retry"] = self.retry
                assert self.base_url is not None
                try:
                    self.data_dir.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ConfigError(f"cannot create data folder {self.data_dir}: {exc}") from exc
                fetcher = Fetcher(self.data_dir, self.base_url, **kwargs)
                self._fetcher = await self._stack.enter_async_context(fetcher)
                self._record_folder()
            return self._fetcher

    def _record_folder(self) -> None:
        """Write the folder's record if it has none, so later readers know the validation shard."""
        try:
            if read_record(self.data_dir) is None:
                assert self.base_url is not None
                write_record(self.data_dir, FolderRecord(base_url=self.base_url, max_shard=self.max_shard))
        except OSError as exc:
            log.warning("could not write %s/.nanostream.json (%s); continuing", self.data_dir, exc)

    async def _fetch(self, index: int) -> Path:
        fetcher = await self._open_fetcher()
        result = await fetcher.fetch(index)
        self.fetched += 1
        return Path(result.path) if result.path is not None else self.path(index)

    async def aclose(self) -> None:
        """Cancel every download in flight, wait for them, and close the fetcher."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        try:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            for task in tasks:  # retrieve outcomes so nothing is reported as never retrieved
                if not task.cancelled():
                    task.exception()
        finally:
            await self._stack.aclose()
