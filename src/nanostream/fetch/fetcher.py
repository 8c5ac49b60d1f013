"""The async shard downloader: one event loop, one aiohttp session, at most W connections.

``Fetcher`` runs W worker tasks; each holds at most one connection, so W bounds the
connections (the session's connector is capped at W as well). A worker takes, in
order: an idle byte range of a shard already started (a resumed or retried one),
the next queued shard, or -- once the queue is empty -- a slice of the tail
(``tail.py``). A shard's finalize (fsync, checks, rename) runs in its own task so
its worker moves on at once. How each shard is settled lives in ``outcomes.py``.

Guarantees (see ``partial.py`` and ``jobs.py`` for the files): bytes land in a
hidden part file at their offsets, reserved up front (a disk too small for the
next shard makes it wait for the running ones instead of filling the disk with
partials); the remaining ranges are saved right after each write, never ahead of
the fsynced data, so a crash or Ctrl-C resumes with ``Range`` + ``If-Range``; a
shard gets its final name only when every byte was written and its length,
parquet magic and (when the catalog lists or the server announces one) sha256
match, or the MD5 an S3 ETag listed; a per-shard flock keeps two processes from
downloading the same shard. A file the catalog lists (size, sha256, ETag) that the
source answers differently for is a ``VerificationError``, never a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from pathlib import Path

import aiohttp

from ..config import DEFAULT_TOKEN_HOSTS, check_url
from ..errors import ConfigError, FetchError, RetriesExhausted, VerificationError
from ..quota import MIDDLEWARES
from ..retry import NoSpace, RateGate, Retries, RetryPolicy, Transient, classify, describe, unreachable
from ..shards import shard_name
from ..sources.access import Access, is_s3
from ..sources.catalog import DataFile
from .disk import Disk
from .jobs import Job, Segment
from .outcomes import Ledger, ShardResult, open_job, release_job, try_lock
from .partial import check_file, finalize
from .ranges import Meter, RangeDownloader
from .tail import min_piece, split_tail

__all__ = ["Fetcher", "RetryPolicy", "ShardResult"]

log = logging.getLogger(__name__)
DEFAULT_RETRY = RetryPolicy()


class Fetcher(Ledger):
    """Download catalog files (``DataFile``) into ``data_dir / file.path``.

    Use as ``async with Fetcher(dir) as f: result = await f.fetch(file)``; concurrent
    ``fetch`` calls share the workers. With a ``base_url``, ``fetch(7)`` fetches
    ``base_url/shard_00007.parquet``. ``progress`` is an optional object with
    ``add_total(nbytes)``, ``advance(nbytes)`` and ``shard_done(result)``. ``token`` is
    sent only to ``token_hosts`` (and only over https unless the host is loopback);
    ``s3://`` files are signed with the AWS chain's credentials (``access.py``).
    """

    def __init__(self, data_dir: Path, base_url: str | None = None, *, workers: int = 8,
                 token: str | None = None, token_hosts: Collection[str] = DEFAULT_TOKEN_HOSTS,
                 retry: RetryPolicy = DEFAULT_RETRY, verify: bool = False, progress=None,
                 min_split: int | None = None, poll_interval: float = 0.25, s3_endpoint: str | None = None,
                 access: Access | None = None) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if retry.attempts < 1:
            raise ConfigError(f"retry attempts must be >= 1, got {retry.attempts}")
        self.data_dir, self.base_url = Path(data_dir), check_url(base_url) if base_url else None
        self.workers, self.retry, self.verify, self.progress = workers, retry, verify, progress
        self.min_split, self.poll_interval = min_split, poll_interval
        self.access = access or Access(token, token_hosts, s3_endpoint)
        super().__init__()
        self._tasks: set[asyncio.Task] = set()
        self._event = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self.meter = Meter()
        self.disk = Disk(threads=max(4, min(16, workers // 2)))
        self.gate = RateGate(retry, "fetch")  # a 429's wait: every worker waits it out, one log line

    def headers_for(self, url: str) -> dict[str, str]:
        """Headers of a plain GET of an http(s) ``url`` (the token only where it may go)."""
        return self.access.plain(url)

    async def __aenter__(self) -> Fetcher:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.retry.connect_timeout,
                                        sock_read=self.retry.read_timeout)
        connector = aiohttp.TCPConnector(limit=self.workers, limit_per_host=self.workers)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                              trust_env=True, middlewares=MIDDLEWARES)
        self._ranges = RangeDownloader(self._session, self.disk, self.access, self.progress,
                                       self._notify, self.meter)
        for _ in range(self.workers):
            self._spawn(self._worker())
        return self

    async def __aexit__(self, *exc_info) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.disk.close()  # every write has finished: the final saves see all of them
            for job in list(self._jobs.values()):
                job.save_now()
                job.close_files()
                self._release(job)
                if not job.future.done():
                    job.future.cancel()
            if self._session is not None:
                await self._session.close()

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
        if self._session is None:
            raise RuntimeError("use Fetcher as `async with Fetcher(...) as f`")
        file = self.data_file(item)
        job = self._jobs.get(file.path)
        if job is None:
            if not file.url:
                raise ConfigError(f"{file.path} has no source URL: it can only be read where it is")
            await self.access.prepare([file.url])
            signed = is_s3(file.url)
            job = self._jobs[file.path] = Job(file.path, self.data_dir / file.path, self.access.http_url(file.url),
                                              self.disk, self._spawn, file=file, signed=signed,
                                              index=item if isinstance(item, int) else index)
            self._pending.append(job)
            self._notify()
        return await asyncio.shield(job.future)

    async def head(self, item: int | DataFile) -> int | None:
        """The size of a file: the catalog's, else what the server announces (HEAD), or None."""
        file = self.data_file(item)
        if file.size is not None:
            return file.size
        await self.access.prepare([file.url])
        return (await self._ranges.head_info(self.access.http_url(file.url), is_s3(file.url)))[1]

    # -- scheduling -------------------------------------------------------------------------
    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def _worker(self) -> None:
        while True:
            job, seg = await self._next_work()
            await self._run_segment(job, seg)

    async def _next_work(self) -> tuple[Job, Segment]:
        while True:
            event = self._event
            for job in self._active:
                if job.finalizing:
                    continue
                for seg in job.segments:
                    if not seg.active and not seg.done():
                        seg.active = True
                        return job, seg
            if self._pending:
                await self._prepare(self._pending.popleft())
                continue
            stolen = self._steal()
            if stolen is not None:
                return stolen
            await event.wait()

    def min_piece(self) -> int:
        return self.min_split if self.min_split is not None else min_piece(self.meter)

    def _steal(self) -> tuple[Job, Segment] | None:
        return split_tail(self._active, self.min_piece())

    async def _prepare(self, job: Job) -> None:
        """Skip, defer (another process has it), resume or start ``job``."""
        try:
            status, job.lock, state, job.pfiles = await self.disk.acquire(release_job, open_job, job.final, job.url,
                                                                           self.verify)
        except OSError as exc:
            return self._fail(job, FetchError(f"{job.name}: cannot lock {job.final.parent}: {exc}",
                                              shard=job.name, url=job.url))
        if status == "present":
            return self._resolve(job, skipped=True)
        if status == "busy":
            log.debug("%s is being downloaded by another process; waiting for it", job.name)
            self._spawn(self._wait_for_other(job))
            return None
        if status == "verify" and await self._verify_existing(job):
            return self._resolve(job, skipped=True)
        if job.future.done():
            return None
        if state is not None:
            job.size, job.validator, job.sha256 = state.size, state.validator, state.sha256
            job.segments = [Segment(s, e) for s, e in state.ranges() if s < e]
            todo = sum(e - s for s, e in state.ranges())
            log.info("%s: resuming, %d of %d bytes to go", job.name, todo, state.size)
            if self.progress is not None:
                self.progress.add_total(todo)
        else:
            job.segments = [Segment(0, None)]
        self._active.append(job)
        if all(s.done() for s in job.segments):
            job.finalizing = True
            self._spawn(self._finalize(job))
        self._notify()
        return None

    async def _wait_for_other(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            if job.final.exists() and not self.verify:
                return self._resolve(job, skipped=True)
            probe = try_lock(job.final)
            if probe is None:
                continue
            probe.release()  # the other process is gone without the file (or we verify): take over
            self._pending.appendleft(job)
            self._notify()
            return None

    # -- downloading ------------------------------------------------------------------------
    async def _run_segment(self, job: Job, seg: Segment) -> None:
        gen = job.gen
        try:
            while job.live(gen) and not seg.done():
                await self.gate.wait()
                if not job.live(gen):
                    return
                try:
                    await self._ranges.fetch_range(job, seg, gen)
                    self._down_since = None
                except Exception as exc:  # noqa: BLE001  (sorted by classify(): retried, or the shard fails)
                    if not job.live(gen):
                        return
                    if isinstance(exc, NoSpace):
                        return self._no_space(job, exc)
                    if isinstance(exc, Transient) and exc.rate_limited:  # not a failure: the server's schedule
                        if self.gate.hit(exc):
                            continue
                        err = RetriesExhausted(f"{describe(exc)}: {self.gate.exhausted()} ({job.url})", url=job.url)
                        err.__cause__ = exc
                        return self._fail_all(err)
                    retryable, after = classify(exc)
                    job.attempts += 1
                    why = None if self._ranges.reached else unreachable(exc)
                    if why is not None and self._host_down(why, exc, now=job.attempts >= self.retry.attempts,
                                                           url=job.url):
                        return None
                    if not retryable or job.attempts >= self.retry.attempts:
                        return self._fail(job, exc)
                    delay = self.retry.backoff(job.attempts, after)
                    if why is not None:  # never reached the host yet: retry often, fail in bounded time
                        delay = min(delay, 1.0)
                        log.debug("%s: %s; retrying in %.1fs", job.name, why, delay)
                    else:
                        log.info("%s: %s; retry %d/%d in %.1fs", job.name, describe(exc),
                                 job.attempts, self.retry.attempts - 1, delay)
                    await asyncio.sleep(delay)
        finally:
            seg.active = False
            self._notify()
        if job.live(gen) and not job.finalizing and all(s.done() and not s.active for s in job.segments):
            job.finalizing = True
            self._spawn(self._finalize(job))

    async def _finalize(self, job: Job) -> None:
        gen = job.gen
        assert job.size is not None
        async with job.files:
            job.close_files()
            try:
                md5 = job.file.md5 if job.file is not None else None
                problem = await self.disk.run_synced(finalize, job.final, job.size, job.sha256, job.digest(), md5)
            except OSError as exc:
                job.finalizing = False
                return self._fail(job, FetchError(f"{job.name}: cannot publish {job.final}: {exc}",
                                                  shard=job.name, url=job.url))
        if not job.live(gen):
            return None
        if problem is None:
            job.finalizing = False
            return self._resolve(job, skipped=False)
        job.attempts += 1
        err = VerificationError(f"{job.name}: downloaded bytes failed verification: {problem} ({job.url})",
                                shard=job.name, url=job.url)
        if job.attempts >= self.retry.attempts:
            job.finalizing = False
            return self._fail(job, err)
        delay = self.retry.backoff(job.attempts)
        log.warning("%s: %s; downloading it again in %.1fs (attempt %d/%d)", job.name, problem, delay,
                    job.attempts, self.retry.attempts - 1)
        await asyncio.sleep(delay)
        job.reset(f"{problem}; discarded the bytes")
        job.finalizing = False
        self._notify()
        return None

    async def _verify_existing(self, job: Job) -> bool:
        """--verify: compare a present file with the catalog, else the server's sha256 (HEAD). False = re-fetch."""
        listed = job.file
        sha, expected, md5 = listed.sha256, listed.size, listed.md5
        retries = Retries(self.retry, self.gate)
        while not job.known:
            await self.gate.wait()
            try:
                sha, expected = await self._ranges.head_info(job.url, job.signed)
                break
            except Exception as exc:  # noqa: BLE001  (sorted by the retry policy, else the shard fails)
                if not await retries.again(exc):
                    self._fail(job, exc)
                    return False
                job.attempts = retries.failures
        problem = await self.disk.run(check_file, job.final, expected, sha, md5)
        if problem is None:
            return True
        log.warning("%s: present but %s; downloading it again", job.name, problem)
        job.final.unlink(missing_ok=True)
        return False

