"""The async downloader: ``Fetcher``, one aiohttp session, W worker tasks (at most W connections) and the
files it knows of, by state (queued, running, waiting for disk space), each settled once: published or failed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from .._compat import TaskGroup
from ..concurrency import cancel_and_wait
from ..config import host_of
from ..errors import ConfigError, FetchError
from ..retry import NoSpace, RetryPolicy, client_session
from ..sources.catalog import DataFile
from ..sources.credentials import Credentials
from .jobs import Job, Segment
from .outcomes import ShardResult, translate
from .partial import Disk
from .ranges import RangeDownloader, split_tail

log = logging.getLogger(__name__)
DEFAULT_RETRY = RetryPolicy()


class Fetcher:
    """Download catalog files into ``data_dir / file.path``: ``async with Fetcher(dir) as f: await
    f.fetch(file)``. ``progress``: an object with ``add_total(nbytes)``, ``advance(nbytes)`` and
    ``shard_done(result)``."""

    def __init__(self, data_dir: Path, *, workers: int = 8,
                 retry: RetryPolicy = DEFAULT_RETRY, verify: bool = False, progress: Any = None,
                 min_split: int | None = None, credentials: Credentials | None = None) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if retry.attempts < 1:
            raise ConfigError(f"retry attempts must be >= 1, got {retry.attempts}")
        self.data_dir = Path(data_dir)
        self.workers, self.retry, self.verify, self.progress = workers, retry, verify, progress
        self.min_split = min_split
        self.credentials = credentials or Credentials()
        self.by_key: dict[str, Job] = {}  # file path -> its job, until it is settled
        self.queued: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []
        self.waiting_for_space: list[Job] = []
        self.disk = Disk(threads=max(4, min(16, workers // 2)))
        self._work = asyncio.Event()  # set (and replaced) whenever there may be new work
        self._tasks = TaskGroup()  # entered by the runner task, before any task of it spawns another
        self._runner: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(limit=self.workers, limit_per_host=self.workers)
        self._session = client_session(self.retry, connector=connector, auto_decompress=False)
        self._ranges = RangeDownloader(self._session, self.disk, self.credentials, self.progress, self._wake)
        self._runner = asyncio.create_task(self._run(), name="nanostream-fetcher")
        return self

    async def _run(self) -> None:
        try:
            async with self._tasks:
                for _ in range(self.workers):
                    self._tasks.create_task(self._worker())
        except Exception as exc:  # a bug ended the TaskGroup: no ``fetch`` waits forever, each fails with it
            err = FetchError(f"the downloader stopped: {exc!r}")
            err.__cause__ = exc
            for job in self.by_key.values():  # unsettled: each future is pending
                job.future.set_result(ShardResult(job.index, None, error=err, name=job.name))
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        try:
            await cancel_and_wait(self._runner)
        finally:
            self.disk.close()  # every write has finished: the final saves see all of them
            for job in list(self.by_key.values()):
                job.save_now()
                job.release()
                job.future.cancel()  # no-op when the runner's failure settled it
            await self._session.close()
        if not self._runner.cancelled() and self._runner.exception() is not None:
            raise self._runner.exception()  # type: ignore[misc]

    async def fetch(self, file: DataFile, index: int | None = None) -> ShardResult:
        """Download one file (or wait for it); the verified result, or raise its FetchError."""
        result = await self.fetch_result(file, index)
        if result.error is not None:
            raise result.error
        return result

    async def fetch_result(self, file: DataFile, index: int | None = None) -> ShardResult:
        """Like ``fetch``, with a failure in ``ShardResult.error`` instead of raised."""
        if self._runner is None:
            raise RuntimeError("use Fetcher as `async with Fetcher(...) as f`")
        job = self.by_key.get(file.path)
        if job is None:
            if not file.url:
                raise ConfigError(f"{file.path} has no source URL: it can only be read where it is")
            await self.credentials.prepare([file.url])
            job = self.by_key[file.path] = Job(
                file, self.data_dir / file.path, self.credentials.http_url(file.url), self.disk, self.retry,
                self._spawn, index=index)
            self.queued.append(job)
            self._wake()
        return await asyncio.shield(job.future)

    async def head(self, file: DataFile) -> int | None:
        """The size of a file: the catalog's, else what the server announces (HEAD, retried), or None."""
        return await self._ranges.size_of(file, self.retry)

    # -- scheduling -------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        """Run ``coro`` as a child of the Fetcher's TaskGroup; once it is closing, ``coro`` never runs
        (``__aexit__`` saves what is left)."""
        if not self._closing:
            with contextlib.suppress(RuntimeError):  # the TaskGroup is shutting down after an error
                return self._tasks.create_task(coro)
        coro.close()
        return None

    def _wake(self) -> None:
        work, self._work = self._work, asyncio.Event()
        work.set()

    async def _worker(self) -> None:
        while True:
            job, seg = await self._next_work()
            await self._run_segment(job, seg)

    async def _next_work(self) -> tuple[Job, Segment]:
        """An idle range of a started file, else the next queued file's first, else a slice of the tail."""
        while True:
            work = self._work
            for job in self.running:
                for seg in [] if job.finalizing else job.segments:
                    if not seg.active and not seg.done():
                        seg.active = True
                        return job, seg
            if self.queued:
                await self._start(self.queued.popleft())
                continue
            piece = self.min_split if self.min_split is not None else self._ranges.min_piece()
            stolen = split_tail(self.running, piece)
            if stolen is not None:
                return stolen
            await work.wait()

    async def _start(self, job: Job) -> None:
        """Skip ``job`` (present), wait for the process that has it, resume it or start it."""
        try:
            status = await job.open(self.verify, lambda: self._ranges.head_info(job.url, job.signed))
        except Exception as exc:  # noqa: BLE001  (a FetchError, or what --verify's HEAD raised: the file fails)
            return self._fail(job, exc)
        if status == "present":
            return self._settle(job, skipped=True)
        if status == "busy":
            log.debug("%s is being downloaded by another process; waiting for it", job.name)
            self._spawn(self._wait_for_other(job))
            return None
        if status == "resume" and self.progress is not None:
            self.progress.add_total(sum(s.end - s.pos for s in job.segments))
        self.running.append(job)
        self._finish_if_done(job)
        self._wake()

    async def _wait_for_other(self, job: Job) -> None:
        if await job.other_finished(self.verify):
            return self._settle(job, skipped=True)
        self.queued.appendleft(job)  # the other process is gone without it: take over
        self._wake()

    # -- downloading ------------------------------------------------------------------------
    async def _run_segment(self, job: Job, seg: Segment) -> None:
        gen = job.gen
        try:
            while job.live(gen) and not seg.done():
                try:
                    await self._ranges.fetch_range(job, seg, gen)
                except Exception as exc:  # noqa: BLE001  (sorted by Retries: retried, or the file fails)
                    if not job.live(gen) or not await self._again(job, exc):
                        return
        finally:
            seg.active = False
            self._wake()
        if job.live(gen):
            self._finish_if_done(job)

    async def _again(self, job: Job, exc: Exception) -> bool:
        """After a failed range request: wait and return True to retry it; else the file (or every file)
        has failed. A host never reached fails every file after ``unreachable_after`` seconds."""
        if isinstance(exc, NoSpace):
            self._no_space(job, exc)
            return False
        down = self._ranges.host_down(job, exc, self.retry)
        if down is not None:
            self._fail_all(down)
            return False
        if await job.retries.again(exc):
            return True
        self._fail(job, exc)
        return False

    def _finish_if_done(self, job: Job) -> None:
        if not job.finalizing and all(s.done() and not s.active for s in job.segments):
            job.finalizing = True
            self._spawn(self._finalize(job))

    async def _finalize(self, job: Job) -> None:
        gen = job.gen
        try:
            if await job.publish() and job.live(gen):
                self._settle(job)
        except FetchError as exc:
            self._fail(job, exc)
        finally:
            job.finalizing = False
            self._wake()  # after a reset, its range is there to take

    # -- settling: each file once, published or failed ----------------------------------------
    def _fail_all(self, err: FetchError, host: str | None = None) -> None:
        """Fail every queued, running and waiting file (of ``host``, when given) with the one ``err``."""
        hit = {j: None for j in (*self.queued, *self.running, *self.waiting_for_space)
               if host is None or host_of(j.url) == host}  # in order; jobs hash by identity
        self.queued = collections.deque(j for j in self.queued if j not in hit)
        self.waiting_for_space = [j for j in self.waiting_for_space if j not in hit]
        for job in hit:
            self._fail(job, err)

    def _no_space(self, job: Job, exc: NoSpace) -> None:
        """The disk cannot hold this file now: wait for the running ones to finish, or fail if none runs."""
        others = [j for j in self.running if j is not job and j.size is not None]
        if not others:
            return self._fail(job, exc)
        log.info("%s: %.1f MB do not fit on the disk now; waiting for %d running shard(s) to finish",
                 job.name, exc.needed / 1e6, len(others))
        self.running.remove(job)
        job.segments = []
        job.release()  # it holds nothing on disk; locked again when it is retried
        self.waiting_for_space.append(job)

    def _fail(self, job: Job, exc: BaseException) -> None:
        if job.future.done():
            return
        err, scope = translate(job, exc)
        if scope is not None:  # this job too, when queued or running
            self._fail_all(err, host_of(job.url) if scope == "host" else None)
        if not job.future.done():
            self._settle(job, err)

    def _settle(self, job: Job, error: FetchError | None = None, *, skipped: bool = False) -> None:
        """Settle ``job`` once: its result is its published file, or ``error``; waiting files try again."""
        job.release()
        self.by_key.pop(job.name, None)
        if job in self.running:  # a queued or waiting file settles only through _fail_all, which takes it out
            self.running.remove(job)
        while self.waiting_for_space:  # space was freed: the waiting files try again
            self.queued.appendleft(self.waiting_for_space.pop())
        self._wake()
        path = job.final if error is None else None
        result = ShardResult(job.index, path, path.stat().st_size if path else 0, job.downloaded,
                             job.retries.failures, skipped, error, job.name)
        job.future.set_result(result)
        if self.progress is not None:
            self.progress.shard_done(result)
