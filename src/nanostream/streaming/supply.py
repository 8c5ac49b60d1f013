"""Held local files for the file indices a stream reads, fetching missing ones in the background.

``ShardSource`` owns the stream's ``Fetcher`` (opened lazily, only when a shard is
missing) and its download tasks: shards are fetched in consumption order, at
most ``ahead`` beyond the one being read, and a corrupt local shard can be
deleted and fetched once more. ``get`` hands the file over held (``holders.ReadHold``:
no process evicts it until the reader releases it). Under a ``cache_limit`` every
download first waits for room in the folder's budget (``budget.FolderBudget``): a file
a reader waits for (a demand) until it fits, a prefetch only while it fits, so it may
wait as long as it is not needed yet (``admission.py``); a demand's reservation lasts
until its reader holds the file. Everything it started is cancelled and awaited on ``aclose``, and the
stream's place in the budget goes with it. The downloader itself (verification, atomic
rename, one download per shard across processes via file locks) is
``nanostream.fetch.fetcher``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CorruptShardError, FetchError, MissingShardError
from ..sources.catalog import Catalog, DataFile, check_text_column
from ..sources.credentials import Credentials
from ..sources.record import read_catalog, write_catalog
from .cache.admission import Admission
from .cache.budget import FolderBudget
from .cache.holders import Needs, ReadHold

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

    def __init__(self, data_dir: Path, catalog: Catalog, *, access: Credentials | None = None,
                 text_column: str = "text", workers: int = 4, ahead: int = 2, retry: Any = None,
                 budget: FolderBudget | None = None) -> None:
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
        self.budget = budget
        self._admission = Admission(budget) if budget is not None else None

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

    async def get(self, index: int, upcoming: Iterable[int] = ()) -> ReadHold:
        """The local file of ``index``, held; then starts fetching the first ``ahead`` of ``upcoming``.

        The file needed now is requested alone, so it has every connection to itself
        (the fetcher splits one file over its workers): the first batch comes after
        about one file's download. The ones after it start as soon as it has landed.
        A file without the text column is a DatasetError listing the columns it has.
        The caller releases the hold once it has closed the file.
        """
        hold = None
        rel, adm = self.files[index].path, self._admission
        if adm is not None:
            adm.wanted(rel)
        try:
            for _ in range(3):  # a file present but unreserved may be evicted before it is held: fetch it
                if adm is not None and rel in adm.parked:  # a prefetch waiting for room: start over as a demand
                    adm.parked.discard(rel)
                    parked = self._tasks.pop(index, None)
                    if parked is not None:
                        await _cancel(parked)
                self.want([index])
                task = self._tasks.pop(index, None)
                if task is not None:
                    try:
                        await task
                    finally:
                        if not task.done():  # we were cancelled: do not leave the download behind
                            await _cancel(task)
                hold = await self._hold(self.path(index))
                if hold is not None:
                    break
            if hold is None:
                raise FetchError(f"{self.path(index)} was evicted again each time it was fetched: another "
                                 f"process on {self.data_dir} keeps evicting it", shard=self.files[index].path)
        finally:
            if adm is not None:
                adm.done(rel)
        try:
            self.want(list(upcoming)[: self.ahead])
            if index not in self._checked:
                await asyncio.to_thread(_check_column, hold.path, self.text_column)
                self._checked.add(index)
        except BaseException:
            hold.release()
            raise
        return hold

    async def replace(self, index: int, seen: tuple[int, int, int, int] | None) -> ReadHold:
        """Delete a corrupt file (if it is still the file we read) and download it again (the caller has
        released its hold)."""
        path = self.path(index)
        if seen is not None and file_id(path) == seen:
            log.warning("%s is unreadable: deleting it and fetching it again from %s", path, self.files[index].url)
            path.unlink(missing_ok=True)
        return await self.get(index)

    async def publish(self, needs: Needs) -> None:
        """Tell the folder's budget when this reader needs which file next (``horizon.Horizon.future``)."""
        if self._admission is not None:
            await self._admission.publish(needs)

    async def _hold(self, path: Path) -> ReadHold | None:
        """``ReadHold.take`` off the loop (a hold taken while we were cancelled is released)."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, ReadHold.take, path, self.budget is not None)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(lambda f: f.cancelled() or f.exception() or (f.result() and f.result().release()))
            raise
        except OSError as exc:
            if self.budget is None:  # no flock here: nothing under a limit shares the folder
                log.debug("cannot hold %s (%s); reading it unheld", path, exc)
                return ReadHold(path, -1)
            raise ConfigError(f"cannot lock {path} for reading ({exc.strerror or exc}): a cache_limit needs "
                              "flock on the data folder") from exc

    async def learn_sizes(self, indices: tuple[int, ...], sizes: list[int | None], probe: int = 16
                          ) -> list[int | None]:
        """``sizes`` with up to ``probe`` of the unknown ones asked with HEAD (failures stay unknown: the
        download reports them)."""
        todo = [k for k, size in enumerate(sizes) if size is None and self.remote_known(indices[k])][:probe]
        if not todo:
            return sizes
        fetcher = await self._open_fetcher()
        got = await asyncio.gather(*(fetcher.head(self.files[indices[k]]) for k in todo), return_exceptions=True)
        out = list(sizes)
        for k, size in zip(todo, got, strict=True):
            if isinstance(size, int):
                out[k] = size
            elif isinstance(size, BaseException) and not isinstance(size, Exception):
                raise size
            else:
                log.debug("size of %s unknown: %s", self.files[indices[k]].path, size)
        return out

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

                kwargs: dict[str, Any] = {"workers": self.workers, "credentials": self.access}
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
        file, adm = self.files[index], self._admission
        if adm is None:
            result = await fetcher.fetch(file)
        else:
            size = file.size if file.size is not None else await self._size(fetcher, file)
            if size is None:
                raise FetchError(f"{file.url} does not say how large {file.path} is, so its download cannot be "
                                 f"admitted under cache_limit; stream without cache_limit", shard=file.path,
                                 url=file.url)
            await adm.admit(file.path, size)
            try:
                result = await fetcher.fetch(file)
            finally:
                if not adm.is_demand(file.path):  # a prefetch: on disk now (or failed), no longer reserved
                    adm.release(file.path)
        self.fetched += 1
        return Path(result.path) if result.path is not None else self.path(index)

    async def _size(self, fetcher: Any, file: DataFile) -> int | None:
        """The size the server announces for ``file`` (HEAD, retried as a download would be)."""
        try:
            return await fetcher.head(file)
        except FetchError as exc:
            raise FetchError(f"cannot learn the size of {file.path} for cache_limit: {exc}", shard=file.path,
                             url=file.url) from exc

    async def aclose(self) -> None:
        """Cancel every download in flight, wait for them, close the fetcher, and leave the budget."""
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
            try:
                await self._stack.aclose()
            finally:
                if self._admission is not None:
                    await self._admission.close()


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()


def _check_column(path: Path, column: str) -> None:
    """``check_text_column``, leaving unreadable files to the reader (which may fetch them again)."""
    try:
        check_text_column(path, column)
    except CorruptShardError:
        pass
