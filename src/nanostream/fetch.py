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
parquet magic and (when the server announces one) sha256 match; a per-shard
flock keeps two processes from downloading the same shard.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import aiohttp

from ._compat import TaskGroup
from .config import DEFAULT_TOKEN_HOSTS, check_url, token_allowed
from .disk import Disk
from .download import Meter, RangeDownloader
from .errors import ConfigError, FetchError, VerificationError
from .jobs import Job, Segment
from .outcomes import Ledger, ShardResult, open_job, try_lock
from .partial import check_file, finalize
from .retry import NoSpace, RetryPolicy, classify, describe, unreachable
from .shards import shard_name
from .space import check_space as preflight
from .tail import min_piece, split_tail

__all__ = ["Fetcher", "RetryPolicy", "ShardResult", "fetch_shards"]

log = logging.getLogger(__name__)
DEFAULT_RETRY = RetryPolicy()


class Fetcher(Ledger):
    """Download shards into ``data_dir`` from ``base_url/shard_XXXXX.parquet``.

    Use as ``async with Fetcher(dir, url) as f: result = await f.fetch(7)``; concurrent
    ``fetch`` calls share the workers. ``progress`` is an optional object with
    ``add_total(nbytes)``, ``advance(nbytes)`` and ``shard_done(result)``. ``token`` is
    sent only to ``token_hosts`` (and only over https unless the host is loopback).
    """

    def __init__(self, data_dir: Path, base_url: str, *, workers: int = 8, token: str | None = None,
                 token_hosts: Collection[str] = DEFAULT_TOKEN_HOSTS, retry: RetryPolicy = DEFAULT_RETRY,
                 verify: bool = False, progress=None, min_split: int | None = None,
                 poll_interval: float = 0.25) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if retry.attempts < 1:
            raise ConfigError(f"retry attempts must be >= 1, got {retry.attempts}")
        self.data_dir, self.base_url = Path(data_dir), check_url(base_url)
        self.workers, self.retry, self.verify, self.progress = workers, retry, verify, progress
        self.min_split, self.poll_interval = min_split, poll_interval
        self.token, self.token_hosts = token, frozenset(token_hosts)
        super().__init__()
        self._tasks: set[asyncio.Task] = set()
        self._event = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self.meter = Meter()
        self.disk = Disk(threads=max(4, min(16, workers // 2)))

    def headers_for(self, url: str) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        if self.token and token_allowed(url, self.token_hosts):
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def __aenter__(self) -> Fetcher:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.retry.connect_timeout,
                                        sock_read=self.retry.read_timeout)
        connector = aiohttp.TCPConnector(limit=self.workers, limit_per_host=self.workers)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                              auto_decompress=False, trust_env=True)
        self._ranges = RangeDownloader(self._session, self.disk, self.headers_for, self.progress,
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

    async def fetch(self, index: int) -> ShardResult:
        """Download shard ``index`` (or wait for it); the verified result, or raise FetchError."""
        if self._session is None:
            raise RuntimeError("use Fetcher as `async with Fetcher(...) as f`")
        job = self._jobs.get(index)
        if job is None:
            name = shard_name(index)
            job = self._jobs[index] = Job(index, self.data_dir / name, f"{self.base_url}/{name}",
                                          self.disk, self._spawn)
            self._pending.append(job)
            self._notify()
        return await asyncio.shield(job.future)

    async def head(self, index: int) -> int | None:
        """The size the server announces for shard ``index`` (HEAD), or None."""
        return (await self._ranges.head_info(f"{self.base_url}/{shard_name(index)}"))[1]

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
            status, job.lock, state, job.pfiles = await self.disk.run(open_job, job.final, job.url, self.verify)
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
                try:
                    await self._ranges.fetch_range(job, seg, gen)
                    self._down_since = None
                except Exception as exc:
                    if not job.live(gen):
                        return
                    if isinstance(exc, NoSpace):
                        return self._no_space(job, exc)
                    retryable, after = classify(exc)
                    job.attempts += 1
                    why = None if self._ranges.reached else unreachable(exc)
                    if why is not None and self._host_down(why, exc, now=job.attempts >= self.retry.attempts):
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
                problem = await self.disk.run_synced(finalize, job.final, job.size, job.sha256, job.digest())
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
        """--verify: compare a present shard with the server's sha256 (HEAD). False = re-fetch."""
        while True:
            try:
                sha, expected = await self._ranges.head_info(job.url)
                break
            except Exception as exc:
                retryable, after = classify(exc)
                job.attempts += 1
                if not retryable or job.attempts >= self.retry.attempts:
                    self._fail(job, exc)
                    return False
                await asyncio.sleep(self.retry.backoff(job.attempts, after))
        problem = await self.disk.run(check_file, job.final, expected, sha)
        if problem is None:
            return True
        log.warning("%s: present but %s; downloading it again", job.name, problem)
        job.final.unlink(missing_ok=True)
        return False



async def fetch_shards(indices: Iterable[int], *, data_dir: Path, base_url: str, workers: int = 8,
                       token: str | None = None, retry: RetryPolicy = DEFAULT_RETRY, verify: bool = False,
                       on_shard: Callable[[ShardResult], None] | None = None, progress=None,
                       check_space: bool = False, **fetcher_kwargs) -> list[ShardResult]:
    """Fetch every shard in ``indices``; one result per index (in order), failures in ``.error``.

    ``on_shard`` is called as each shard lands or fails. Raises only for bad arguments
    (``ConfigError``), a disk too small for the shards (``DiskFullError``, with
    ``check_space``) or cancellation; partial downloads are kept for resume.
    """
    indices = list(dict.fromkeys(indices))
    data_dir = Path(data_dir)
    results: dict[int, ShardResult] = {}

    async def one(f: Fetcher, i: int) -> None:
        try:
            res = await f.fetch(i)
        except FetchError as exc:
            res = f.failed.get(i) or ShardResult(i, None, error=exc)
        results[i] = res
        if on_shard is not None:
            on_shard(res)

    async with Fetcher(data_dir, base_url, workers=workers, token=token, retry=retry, verify=verify,
                       progress=progress, **fetcher_kwargs) as f:
        if check_space:
            await preflight(f, indices)
        async with TaskGroup() as tg:
            for i in indices:
                tg.create_task(one(f, i))
    return [results[i] for i in indices]
