"""Local paths for the files a stream reads, fetching missing ones in the background.

``ShardSource`` owns the stream's ``Fetcher`` (opened lazily, only when a shard is
missing) and its download tasks: shards are fetched in consumption order, at
most ``ahead`` beyond the one being read, and a corrupt local shard can be
deleted and fetched once more. Everything it started is cancelled and awaited
on ``aclose``. The downloader itself (verification, atomic rename, one download
per shard across processes via file locks) is ``nanostream.fetch.fetcher``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CorruptShardError, MissingShardError
from ..sources.access import Access
from ..sources.catalog import Catalog, DataFile, check_text_column
from ..sources.record import read_catalog, write_catalog

log = logging.getLogger(__name__)


def file_id(path: Path) -> tuple[int, int, int, int] | None:
    """Identity of the file at ``path`` (device, inode, size, mtime), None if absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ShardSource:
    """Resolves file indices (into the catalog's ``files``) to verified local files, downloading what is missing."""

    def __init__(self, data_dir: Path, catalog: Catalog, *, access: Access | None = None,
                 text_column: str = "text", workers: int = 4, ahead: int = 2, retry: Any = None) -> None:
        self.data_dir, self.catalog, self.access, self.text_column = data_dir, catalog, access, text_column
        self.files: tuple[DataFile, ...] = catalog.files
        self.workers = max(1, workers)
        self.ahead = max(0, ahead)
        self.retry = retry
        self.fetched = 0  # files this source downloaded (or waited for another process to download)
        self._tasks: dict[int, asyncio.Task[Path]] = {}
        self._checked: set[int] = set()
        self._stack = AsyncExitStack()
        self._fetcher: Any = None
        self._fetcher_lock = asyncio.Lock()

    def remote_known(self, index: int) -> bool:
        return self.access is not None and bool(self.files[index].url)

    def path(self, index: int) -> Path:
        return self.data_dir / self.files[index].path

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
        """The local file of ``index``; then starts fetching the first ``ahead`` of ``upcoming``.

        The file needed now is requested alone, so it has every connection to itself
        (the fetcher splits one file over its workers): the first batch comes after
        about one file's download. The ones after it start as soon as it has landed.
        A file without the text column is a DatasetError listing the columns it has.
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
        if index not in self._checked:
            await asyncio.to_thread(_check_column, path, self.text_column)
            self._checked.add(index)
        return path

    async def replace(self, index: int, seen: tuple[int, int, int, int] | None) -> Path:
        """Delete a corrupt file (if it is still the file we read) and download it again."""
        path = self.path(index)
        if seen is not None and file_id(path) == seen:
            log.warning("%s is unreadable: deleting it and fetching it again from %s", path, self.files[index].url)
            path.unlink(missing_ok=True)
        return await self.get(index)

    def _missing_check(self, index: int) -> None:
        if not self.remote_known(index):
            raise MissingShardError(
                f"{self.path(index)} is missing and no remote is known for {self.data_dir}: "
                "run `nanostream fetch` first, or pass dataset= (or base_url=) to stream()",
                path=self.path(index),
            )

    async def _open_fetcher(self) -> Any:
        async with self._fetcher_lock:
            if self._fetcher is None:
                from ..fetch.fetcher import Fetcher

                kwargs: dict[str, Any] = {"workers": self.workers, "access": self.access}
                if self.retry is not None:
                    kwargs["retry"] = self.retry
                try:
                    self.data_dir.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ConfigError(f"cannot create data folder {self.data_dir}: {exc}") from exc
                fetcher = Fetcher(self.data_dir, **kwargs)
                self._fetcher = await self._stack.enter_async_context(fetcher)
                self._record_folder()
            return self._fetcher

    def _record_folder(self) -> None:
        """Write the folder's record if it has none, so later readers know its files and validation."""
        try:
            if read_catalog(self.data_dir) is None:
                write_catalog(self.data_dir, self.catalog)
        except OSError as exc:
            log.warning("could not write %s/.nanostream.json (%s); continuing", self.data_dir, exc)

    async def _fetch(self, index: int) -> Path:
        fetcher = await self._open_fetcher()
        result = await fetcher.fetch(self.files[index])
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


def _check_column(path: Path, column: str) -> None:
    """``check_text_column``, leaving unreadable files to the reader (which may fetch them again)."""
    try:
        check_text_column(path, column)
    except CorruptShardError:
        pass
