"""The async downloader: ``Fetcher``, one aiohttp session and W worker tasks (at most W connections), every
task a child of its TaskGroup. A worker takes an idle range of a started file, else the next queued file,
else a slice of the tail (``ranges.split_tail``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from .._compat import TaskGroup
from ..concurrency import cancel_and_wait
from ..config import DEFAULT_TOKEN_HOSTS, check_url
from ..errors import ConfigError, FetchError, HTTPStatusError, VerificationError
from ..retry import Fatal, NoSpace, Retries, RetryPolicy, Transient, client_session, unreachable, with_retries
from ..shards import shard_name
from ..sources.catalog import DataFile
from ..sources.credentials import Credentials, is_s3
from .disk import Disk
from .jobs import Job, Segment
from .outcomes import Jobs, ShardResult
from .partial import finalize
from .ranges import RangeDownloader, split_tail

log = logging.getLogger(__name__)
DEFAULT_RETRY = RetryPolicy()


class Fetcher:
    """Download catalog files into ``data_dir / file.path``: ``async with Fetcher(dir) as f: await f.fetch(file)``
    (with a ``base_url``, ``fetch(7)`` fetches ``base_url/shard_00007.parquet``). ``progress``: an object with
    ``add_total(nbytes)``, ``advance(nbytes)`` and ``shard_done(result)``."""

    def __init__(self, data_dir: Path, base_url: str | None = None, *, workers: int = 8,
                 token: str | None = None, token_hosts: Collection[str] = DEFAULT_TOKEN_HOSTS,
                 retry: RetryPolicy = DEFAULT_RETRY, verify: bool = False, progress: Any = None,
                 min_split: int | None = None, s3_endpoint: str | None = None,
                 credentials: Credentials | None = None) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if retry.attempts < 1:
            raise ConfigError(f"retry attempts must be >= 1, got {retry.attempts}")
        self.data_dir, self.base_url = Path(data_dir), check_url(base_url) if base_url else None
        self.workers, self.retry, self.verify, self.progress = workers, retry, verify, progress
        self.min_split = min_split
        self.credentials = credentials or Credentials(token, token_hosts, s3_endpoint)
        self.jobs = Jobs(retry, progress, self._wake)
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
        self._runner.add_done_callback(self._stopped)
        return self

    async def _run(self) -> None:
        async with self._tasks:
            for _ in range(self.workers):
                self._tasks.create_task(self._worker())

    def _stopped(self, runner: asyncio.Task[None]) -> None:
        """The TaskGroup ended on an error (a bug): no ``fetch`` waits forever, each fails with it."""
        if runner.cancelled() or runner.exception() is None:
            return
        err = FetchError(f"the downloader stopped: {runner.exception()!r}")
        err.__cause__ = runner.exception()
        for job in list(self.jobs.by_key.values()):
            if not job.future.done():
                job.future.set_exception(err)

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        assert self._runner is not None
        try:
            await cancel_and_wait(self._runner)
        finally:
            self.disk.close()  # every write has finished: the final saves see all of them
            for job in list(self.jobs.by_key.values()):
                job.save_now()
                job.close_files()
                job.unlock()
                if not job.future.done():
                    job.future.cancel()
            await self._session.close()
        if not self._runner.cancelled() and self._runner.exception() is not None:
            raise self._runner.exception()  # type: ignore[misc]

    def data_file(self, item: int | DataFile) -> DataFile:
        """``item`` as a DataFile: a shard index names ``base_url/shard_XXXXX.parquet``."""
        if isinstance(item, DataFile):
            return item
        if self.base_url is None:
            raise ConfigError(f"shard {item}: this Fetcher has no base_url; pass a DataFile")
        name = shard_name(item)
        return DataFile(name, None, url=f"{self.base_url}/{name}")

    async def fetch(self, item: int | DataFile, index: int | None = None) -> ShardResult:
        """Download one file (or wait for it); the verified result, or raise FetchError."""
        if self._runner is None:
            raise RuntimeError("use Fetcher as `async with Fetcher(...) as f`")
        file = self.data_file(item)
        job = self.jobs.by_key.get(file.path)
        if job is None:
            if not file.url:
                raise ConfigError(f"{file.path} has no source URL: it can only be read where it is")
            await self.credentials.prepare([file.url])
            job = self.jobs.by_key[file.path] = Job(
                file, self.data_dir / file.path, self.credentials.http_url(file.url), self.disk, self.retry,
                self._spawn, index=item if isinstance(item, int) else index)
            self.jobs.queued.append(job)
            self._wake()
        return await asyncio.shield(job.future)

    async def head(self, item: int | DataFile) -> int | None:
        """The size of a file: the catalog's, else what the server announces (HEAD, retried), or None."""
        file = self.data_file(item)
        if file.size is not None:
            return file.size
        await self.credentials.prepare([file.url])
        url, signed = self.credentials.http_url(file.url), is_s3(file.url)
        retries = Retries(self.retry, f"HEAD {file.path}", url=url, shard=file.path)
        try:
            return (await with_retries(retries, lambda: self._ranges.head_info(url, signed)))[1]
        except Fatal as exc:
            raise HTTPStatusError(f"HEAD {url}: {exc}", status=exc.status or 0, shard=file.path, url=url) from exc

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
        while True:
            work = self._work
            for job in self.jobs.running:
                if job.finalizing:
                    continue
                for seg in job.segments:
                    if not seg.active and not seg.done():
                        seg.active = True
                        return job, seg
            if self.jobs.queued:
                await self._start(self.jobs.queued.popleft())
                continue
            piece = self.min_split if self.min_split is not None else self._ranges.min_piece()
            stolen = split_tail(self.jobs.running, piece)
            if stolen is not None:
                return stolen
            await work.wait()

    async def _start(self, job: Job) -> None:
        """Skip ``job`` (present), wait for the process that has it, resume it or start it."""
        try:
            status = await job.open(self.verify, lambda: self._ranges.head_info(job.url, job.signed))
        except Exception as exc:  # noqa: BLE001  (a FetchError, or what --verify's HEAD raised: the file fails)
            return self.jobs.fail(job, exc)
        if status == "present":
            return self.jobs.resolve(job, skipped=True)
        if status == "busy":
            log.debug("%s is being downloaded by another process; waiting for it", job.name)
            self._spawn(self._wait_for_other(job))
            return None
        if status == "resume" and self.progress is not None:
            self.progress.add_total(sum(s.end - s.pos for s in job.segments))
        self.jobs.running.append(job)
        if all(s.done() for s in job.segments):
            job.finalizing = True
            self._spawn(self._finalize(job))
        self._wake()
        return None

    async def _wait_for_other(self, job: Job) -> None:
        if await job.other_finished(self.verify):
            return self.jobs.resolve(job, skipped=True)
        self.jobs.queued.appendleft(job)  # the other process is gone without it: take over
        self._wake()
        return None

    # -- downloading ------------------------------------------------------------------------
    async def _run_segment(self, job: Job, seg: Segment) -> None:
        gen = job.gen
        try:
            while job.live(gen) and not seg.done():
                try:
                    await self._ranges.fetch_range(job, seg, gen)
                    self.jobs.down_since = None
                except Exception as exc:  # noqa: BLE001  (sorted by Retries: retried, or the file fails)
                    if not job.live(gen) or not await self._again(job, exc):
                        return
        finally:
            seg.active = False
            self._wake()
        if job.live(gen) and not job.finalizing and all(s.done() and not s.active for s in job.segments):
            job.finalizing = True
            self._spawn(self._finalize(job))

    async def _again(self, job: Job, exc: Exception) -> bool:
        """After a failed range request: wait and return True to retry it; else the file (or every file)
        has failed."""
        if isinstance(exc, NoSpace):
            self.jobs.no_space(job, exc)
            return False
        why = None if self._ranges.reached else unreachable(exc)
        where = self.base_url or job.url.rsplit("/", 1)[0]
        if why is not None and self.jobs.host_down(why, exc, now=job.attempts + 1 >= self.retry.attempts,
                                                   where=where):
            return False
        if await job.retries.again(exc):
            return True
        self.jobs.fail(job, exc)
        return False

    async def _finalize(self, job: Job) -> None:
        gen = job.gen
        assert job.size is not None
        try:
            async with job.files:
                job.close_files()
                try:
                    problem = await self.disk.run_synced(finalize, job.final, job.size, job.sha256, job.digest(),
                                                         job.file.md5)
                except OSError as exc:
                    return self.jobs.fail(job, FetchError(f"{job.name}: cannot publish {job.final}: {exc}",
                                                          shard=job.name, url=job.url))
            if not job.live(gen):
                return None
            if problem is None:
                return self.jobs.resolve(job, skipped=False)
            err = VerificationError(f"{job.name}: downloaded bytes failed verification: {problem} ({job.url})",
                                    shard=job.name, url=job.url)
            log.warning("%s", err)
            if not await job.retries.again(Transient(problem)):
                return self.jobs.fail(job, err)
            job.reset(f"{problem}; discarded the bytes")
            self._wake()
            return None
        finally:
            job.finalizing = False
