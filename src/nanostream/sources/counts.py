"""Row-group counts as a run learns them, cheapest first (the folder's counts file, local footers, other nodes,
remote footers): one ``CountBook`` per data folder in a process, saved in the counts file and shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import filelock

from ..errors import ConfigError
from ..retry import RetryPolicy
from ..shards import BOOKKEEPING_PREFIX, write_json
from .catalog import DataFile
from .credentials import Credentials
from .footers import local_count, read_footers

log = logging.getLogger(__name__)
COUNTS_FILE = f"{BOOKKEEPING_PREFIX}.rowgroups.json"  # {file path in the folder: row groups}
LOCK_NAME = f"{BOOKKEEPING_PREFIX}.rowgroups.lock"
SAVE_EVERY = 1.0  # seconds between writes of the counts file
FETCH_EVERY = 0.05  # seconds between reads of the counts file and the sharers (at most)


def read_counts_file(data_dir: Path) -> dict[str, int]:
    """The folder's counts file ({} when absent or unreadable)."""
    try:
        raw = json.loads((data_dir / COUNTS_FILE).read_text())
        return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


@contextlib.asynccontextmanager
async def counts_lock(data_dir: Path) -> AsyncIterator[None]:
    """Hold the folder's counts lock (no lock where the folder cannot hold one: read-only)."""
    lock: filelock.BaseFileLock | None = filelock.FileLock(data_dir / LOCK_NAME)
    try:
        os.makedirs(data_dir, exist_ok=True)
        while True:  # another process holds it: nothing in this process can wake us, so poll (cancellable)
            with contextlib.suppress(filelock.Timeout):
                lock.acquire(blocking=False)
                break
            await asyncio.sleep(0.02)
    except OSError as exc:
        log.debug("no counts lock in %s (%s)", data_dir, exc)
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


class CountSharer(Protocol):
    """How the nodes of a run tell each other the counts (``{file path: row groups}``) of the dataset ``scope``
    names. Both calls may block briefly, on any thread, and may raise (the sharer is then dropped)."""

    def publish(self, scope: str, counts: dict[str, int]) -> None: ...

    def fetch(self, scope: str) -> dict[str, int]: ...


class CountBook:
    """What this process knows of the counts of ``files`` in ``data_dir``; thread-safe."""

    def __init__(self, data_dir: Path, files: tuple[DataFile, ...], scope: str = "") -> None:
        self.data_dir, self.files, self.scope = data_dir, files, scope
        self._index = {f.path: i for i, f in enumerate(files)}
        self._known: dict[int, int] = {}
        self._origin: dict[int, str] = {}  # where each count came from, for errors
        self.log: list[int] = []  # shards in the order they became known (for running totals)
        self._unsaved: dict[str, int] = {}
        self._unshared: dict[str, int] = {}
        self._lock = threading.Lock()
        self._reading: set[int] = set()  # remote footers being read by this process
        self._readers_done: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []  # who waits for them
        self._saved_at = self._fetched_at = 0.0
        self._file_stamp: tuple[int, int] | None = None
        self.sharers: list[CountSharer] = []
        self._take(read_counts_file(data_dir), "the counts file")

    def get(self, shard: int) -> int | None:
        return self._known.get(shard)

    def snapshot(self) -> dict[int, int]:
        with self._lock:
            return dict(self._known)

    def _take(self, counts: dict[str, int], origin: str, *, save: bool = False, share: bool = True) -> None:
        with self._lock:
            for path, n in counts.items():
                shard = self._index.get(path)
                if shard is None or shard in self._known:
                    continue
                self._known[shard], self._origin[shard] = int(n), origin
                self.log.append(shard)
                if save:
                    self._unsaved[path] = int(n)
                if save and share:
                    self._unshared[path] = int(n)

    async def _ask_sharers(self, call: str, *args: Any) -> list[Any]:
        """Each sharer's answer to ``<call>(*args)``, asked on a thread; one that fails is dropped, said once."""
        answers = []
        for sharer in list(self.sharers):
            try:
                answers.append(await asyncio.to_thread(getattr(sharer, call), *args))
            except Exception as exc:  # noqa: BLE001  (any failure of a foreign channel: stop using it, say so once)
                with self._lock:
                    if sharer in self.sharers:
                        self.sharers.remove(sharer)
                        log.warning("row-group counts of %s: not sharing them with other nodes any more (%s: %s)",
                                    self.scope or self.data_dir, type(exc).__name__, exc)
        return answers

    def learn(self, shard: int, n: int, origin: str = "its footer") -> None:
        """A count read from a footer; ``ConfigError`` if it contradicts one learned elsewhere."""
        known = self._known.get(shard)
        if known is not None and known != n:
            raise ConfigError(f"{self.data_dir / self.files[shard].path} has {n} row groups, but "
                              f"{self._origin.get(shard)} says {known}: the folder's shards changed; delete "
                              f"{self.data_dir / COUNTS_FILE} and start again")
        self._take({self.files[shard].path: n}, origin, save=True)

    async def look(self, shards: list[int]) -> None:
        """Learn what the counts file, the sharers and the local files tell of ``shards``."""
        await self.sync(fetch=True)
        paths = {s: self.data_dir / self.files[s].path for s in shards if s not in self._known}
        found = await asyncio.to_thread(lambda: {s: local_count(path, True) for s, path in paths.items()})
        found = {s: n for s, n in found.items() if n is not None}  # an unreadable one is left to its reader
        for s, n in found.items():
            self.learn(s, n, f"the footer of {paths[s]}")
        if found:
            await self.sync()

    async def sync(self, *, fetch: bool = False, force: bool = False, save: bool = True) -> None:
        """Publish what was learned to the sharers and save it (at most every ``SAVE_EVERY`` s unless ``force``;
        never with ``save=False``, for a caller holding the counts lock); with ``fetch``, read theirs and the file."""
        now = time.monotonic()
        if self._unshared and self.sharers:
            with self._lock:
                unshared, self._unshared = self._unshared, {}
            await self._ask_sharers("publish", self.scope, unshared)
        if save and self._unsaved and (force or now - self._saved_at >= SAVE_EVERY):
            self._saved_at = now
            async with counts_lock(self.data_dir):
                await asyncio.to_thread(self._save)
        if fetch and (force or now - self._fetched_at >= FETCH_EVERY):
            self._fetched_at = now
            await asyncio.to_thread(self._reread_counts_file)
            for counts in await self._ask_sharers("fetch", self.scope):
                self._take(counts, "another node", save=True, share=False)

    def _reread_counts_file(self) -> None:
        """Take what the counts file says if it changed since it was last read (blocking)."""
        with contextlib.suppress(OSError):
            st = (self.data_dir / COUNTS_FILE).stat()
            if (st.st_mtime_ns, st.st_size) != self._file_stamp:
                self._file_stamp = (st.st_mtime_ns, st.st_size)
                self._take(read_counts_file(self.data_dir), "the counts file")

    def _save(self) -> None:
        """Merge what was learned into the counts file (blocking; the caller holds the counts lock)."""
        with self._lock:
            unsaved, self._unsaved = self._unsaved, {}
        old = read_counts_file(self.data_dir) if unsaved else {}
        merged, path = {**old, **unsaved}, self.data_dir / COUNTS_FILE
        if merged != old:
            try:
                write_json(path, merged, sort_keys=True)
            except OSError as exc:
                log.warning("could not save row-group counts in %s (%s); continuing", path, exc)

    async def read_remote(self, shards: list[int], credentials: Credentials | None,
                          retry: RetryPolicy | None) -> None:
        """Read the remote footers of those of ``shards`` nobody knows yet, one process of the folder at a time."""
        await self.look([s for s in shards if s not in self._known])
        if any(s not in self._known and s not in self._reading for s in shards):
            async with counts_lock(self.data_dir):
                await self.sync(fetch=True, force=True, save=False)
                with self._lock:
                    todo = [s for s in shards if s not in self._known and s not in self._reading]
                    self._reading.update(todo)
                try:
                    got = await read_footers(self.data_dir, self.files, todo, credentials, retry or RetryPolicy())
                    for s, n in got.items():
                        self.learn(s, n, f"the footer of {self.files[s].url}")
                    await asyncio.to_thread(self._save)
                finally:
                    with self._lock:
                        self._reading.difference_update(todo)
                        waiting, self._readers_done = self._readers_done, []
                    for loop, read in waiting:
                        with contextlib.suppress(RuntimeError):  # that waiter's loop is gone
                            loop.call_soon_threadsafe(read.set)
        while True:  # another task of this process (on any thread or loop) may be reading some of them
            with self._lock:
                if not any(s in self._reading for s in shards):
                    return
                read = asyncio.Event()
                self._readers_done.append((asyncio.get_running_loop(), read))
            await read.wait()

    async def require(self, shards: list[int], credentials: Credentials | None = None,
                      retry: RetryPolicy | None = None) -> dict[int, int]:
        """Every count of ``shards``: known, else local, shared or read remotely."""
        missing = [s for s in shards if s not in self._known]
        if missing:
            await self.read_remote(missing, credentials, retry)
            await self.sync(force=True)
        with self._lock:
            return {s: self._known[s] for s in shards}


_books: dict[tuple[str, tuple[str, ...]], CountBook] = {}
_books_lock = threading.Lock()


def book_for(data_dir: Path, files: tuple[DataFile, ...], sharer: CountSharer | None = None,
             scope: str = "") -> CountBook:
    """This process's book of ``files`` in ``data_dir``; ``scope`` names the dataset for the sharers."""
    key = (str(Path(data_dir).resolve()), tuple(f.path for f in files))
    with _books_lock:
        book = _books.get(key)
        if book is None:
            book = _books[key] = CountBook(Path(data_dir), files, scope)
    with book._lock:
        if sharer is not None and all(s is not sharer for s in book.sharers):  # publish to it what is known
            book.sharers.append(sharer)
            book._unshared.update({files[s].path: n for s, n in book._known.items()})
    return book

