"""The file provider the producer reads through: a local file for a file index, read-locked, downloaded if
missing. ``FolderFiles`` is the unbounded data folder; ``cached.CachedFiles`` the same under a ``cache_limit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._compat import TaskGroup
from ..concurrency import hand_off, task_group
from ..errors import ConfigError, CorruptShardError, FetchError, MissingShardError
from ..sources.catalog import check_text_column, read_catalog, write_catalog
from .cache.claims import ReadLock
from .plan import Plan
from .reader import file_id

log = logging.getLogger(__name__)
FileId = tuple[int, int, int, int]


class FolderFiles:
    """The data folder of ``plan``, unbounded. Use it as an async context: leaving it cancels the downloads."""

    touch = False  # set a file's access time as it is read (a cache's LRU order)
    evicted = 0  # files evicted for this stream (only a cache evicts)

    def __init__(self, plan: Plan) -> None:
        self.plan, self.folder, self.files = plan, plan.folder, plan.files
        self.fetched = 0  # files downloaded for this stream (or waited for while another process did)
        self._downloads: dict[int, asyncio.Task[Path | BaseException]] = {}
        self._checked: set[int] = set()
        self._scope = task_group()
        self._group: TaskGroup | None = None
        self._closing = contextlib.AsyncExitStack()  # the fetcher, closed once every download task has ended
        self._fetcher: Any = None
        self._fetcher_lock = asyncio.Lock()

    async def __aenter__(self) -> FolderFiles:
        self._group = await self._scope.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            for task in self._downloads.values():
                task.cancel()
            await self._scope.__aexit__(*exc)
        finally:
            await self._closing.aclose()

    def remote(self, index: int) -> bool:
        """Can file ``index`` be downloaded (again)?"""
        return self.plan.credentials is not None and bool(self.files[index].url)

    def path(self, index: int) -> Path:
        return self.folder / self.files[index].path

    async def prepare(self) -> None:
        """Before the first download: nothing to check for an unbounded folder."""

    async def reader_at(self, epoch: int, taken: int, deal: Any, settled: Any = None) -> None:
        """The reader is at row group ``taken`` of ``epoch`` (of ``deal``, settled or not): what a cache
        evicts by. The unbounded folder evicts nothing."""

    async def hold(self, index: int, upcoming: Iterable[int] = ()) -> ReadLock:
        """The local file of ``index``, read-locked; then starts downloading the first ``files`` of ``upcoming``.
        A file without the text column is a DatasetError listing the columns it has."""
        lock = await self._local(index)
        try:
            self.prefetch(list(upcoming)[: self.plan.options.read_ahead.files])
            if index not in self._checked:  # an unreadable file is left to the reader (which may fetch it again)
                with contextlib.suppress(CorruptShardError):
                    await asyncio.to_thread(check_text_column, lock.path, self.plan.catalog.text_column)
                self._checked.add(index)
        except BaseException:
            lock.release()
            raise
        return lock

    async def refetch(self, index: int, seen: FileId | None) -> ReadLock:
        """Delete a corrupt file (if it is still the one read: ``seen``) and download it again (the caller
        has released its lock)."""
        path = self.path(index)
        if seen is not None and file_id(path) == seen:
            log.warning("%s is unreadable: deleting it and fetching it again from %s", path, self.files[index].url)
            path.unlink(missing_ok=True)
        return await self.hold(index)

    def prefetch(self, indices: Iterable[int]) -> None:
        """Start downloading those of ``indices`` that are missing (call in reading order)."""
        for index in indices:
            if index in self._downloads or self.path(index).exists():
                continue
            if not self.remote(index):
                raise MissingShardError(f"{self.path(index)} is missing and no remote is known for {self.folder}: "
                                        "run `nanostream fetch` first, or stream from the dataset's name or URL",
                                        path=self.path(index))
            assert self._group is not None, "use FolderFiles as an async context"
            self._downloads[index] = self._group.create_task(self._outcome(index), name=f"nanostream-fetch-{index}")

    async def _local(self, index: int) -> ReadLock:
        """Download the file if it is missing, then lock it; again if it was evicted in between."""
        for _ in range(3):
            self.prefetch([index])
            task = self._downloads.pop(index, None)
            if task is not None:
                got = await task  # alone, unless it was a prefetch: every connection is its
                if isinstance(got, BaseException):
                    raise got
            lock = await self._lock(self.path(index))
            if lock is not None:
                return lock
        raise FetchError(f"{self.path(index)} was evicted again each time it was fetched: another process on "
                         f"{self.folder} keeps evicting it", shard=self.files[index].path)

    async def _outcome(self, index: int) -> Path | BaseException:
        """A download task's body: its path, or the error it failed with (raised to the reader that waits for
        it, so a failed prefetch nobody reads fails nothing)."""
        try:
            return await self._download(index)
        except Exception as exc:  # noqa: BLE001  (handed to the reader, raised there)
            return exc

    async def _download(self, index: int) -> Path:
        result = await (await self.fetcher()).fetch(self.files[index])
        self.fetched += 1
        return Path(result.path) if result.path is not None else self.path(index)

    async def _lock(self, path: Path) -> ReadLock | None:
        """``ReadLock.take`` off the loop (a lock taken while we were cancelled is released)."""
        fut = asyncio.get_running_loop().run_in_executor(None, ReadLock.take, path, self.touch)
        try:
            return await hand_off(fut, lambda lock: lock and lock.release())
        except OSError as exc:
            return self.unlockable(path, exc)

    def unlockable(self, path: Path, exc: OSError) -> ReadLock:
        """What to do with a file that cannot be locked: without flock nothing under a limit shares the
        folder, so read it unlocked."""
        log.debug("cannot lock %s (%s); reading it unlocked", path, exc)
        return ReadLock(path, -1)

    async def split_sizes(self) -> list[int | None]:
        """``Plan.split_sizes`` with up to 16 unknown ones asked with HEAD (failures stay unknown: the download
        reports them)."""
        sizes, shards = self.plan.split_sizes(), self.plan.shards
        todo = [k for k, size in enumerate(sizes) if size is None and self.remote(shards[k])][:16]
        got = await asyncio.gather(*(self.size(shards[k]) for k in todo), return_exceptions=True)
        for k, size in zip(todo, got, strict=True):
            if isinstance(size, int):
                sizes[k] = size
            elif not isinstance(size, Exception):
                raise size
            else:
                log.debug("size of %s unknown: %s", self.files[shards[k]].path, size)
        return sizes

    async def size(self, index: int) -> int:
        """The size the server announces for file ``index`` (HEAD)."""
        file = self.files[index]
        fetcher = await self.fetcher()
        try:
            size = await fetcher.head(file)  # retried as a download would be
        except FetchError as exc:
            raise FetchError(f"cannot learn the size of {file.path} for cache_limit: {exc}", shard=file.path,
                             url=file.url) from exc
        if size is None:
            raise FetchError(f"{file.url} does not say how large {file.path} is, so its download cannot be "
                             "given room under cache_limit; stream without cache_limit", shard=file.path, url=file.url)
        return size

    async def fetcher(self) -> Any:
        """The stream's ``Fetcher``, opened at the first download (the folder's record written then)."""
        async with self._fetcher_lock:
            if self._fetcher is None:
                from ..fetch.fetcher import DEFAULT_RETRY, Fetcher

                o = self.plan.options
                try:
                    self.folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ConfigError(f"cannot create data folder {self.folder}: {exc}") from exc
                fetcher = Fetcher(self.folder, workers=o.read_ahead.connections, credentials=self.plan.credentials,
                                  retry=o.retry or DEFAULT_RETRY)
                self._fetcher = await self._closing.enter_async_context(fetcher)
                try:  # the folder's record, if it has none: later readers know its files and validation
                    if read_catalog(self.folder) is None:
                        write_catalog(self.folder, self.plan.catalog)
                except OSError as exc:
                    log.warning("could not write %s/.nanostream.json (%s); continuing", self.folder, exc)
            return self._fetcher
