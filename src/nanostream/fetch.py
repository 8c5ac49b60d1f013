"""The async shard downloader: one event loop, one aiohttp session, at most W connections.

``Fetcher`` runs W worker tasks; each holds at most one connection, so W bounds the
connections (the session's connector is capped at W as well). A worker takes, in
order: an idle byte range of a shard already started (a resumed or retried one),
the next queued shard, or -- when fewer shards remain than workers -- the back half
of the largest range still downloading (work stealing, as aria2 and hf_transfer
split the tail), so every connection stays busy to the last byte.

Guarantees (see ``partial.py`` for the files): bytes land in a hidden part file at
their offsets; the remaining ranges are saved so a crash or Ctrl-C resumes with
``Range`` + ``If-Range``; a shard gets its final name only after fsync, length,
parquet magic and sha256 checks; a per-shard flock keeps two processes from
downloading the same shard (the second waits for the verified file).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import filelock

from ._compat import TaskGroup
from .config import check_url
from .download import RangeDownloader
from .errors import ConfigError, FetchError, HTTPStatusError, RetriesExhausted, VerificationError
from .jobs import Job, Segment
from .partial import PartState, check_file, discard, finalize, lock_path
from .retry import Fatal, RetryPolicy, classify, describe
from .shards import shard_name

__all__ = ["Fetcher", "RetryPolicy", "ShardResult", "fetch_shards"]

log = logging.getLogger(__name__)
DEFAULT_RETRY = RetryPolicy()


@dataclass
class ShardResult:
    """Outcome of one shard: ``path`` is the verified final file, or ``error`` says why not."""

    index: int
    path: Path | None
    size: int = 0  # bytes of the final file
    downloaded: int = 0  # bytes transferred by this process
    attempts: int = 0  # failed requests (retries) along the way
    skipped: bool = False  # already present (or finished by another process): no download
    error: FetchError | None = None

    @property
    def name(self) -> str:
        return shard_name(self.index)


def _try_lock(final: Path) -> filelock.BaseFileLock | None:
    """The shard's flock if no other process (or Fetcher) holds it, else None."""
    lock = filelock.FileLock(lock_path(final))
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        return None
    return lock


class Fetcher:
    """Download shards into ``data_dir`` from ``base_url/shard_XXXXX.parquet``.

    Use as ``async with Fetcher(dir, url) as f: result = await f.fetch(7)``; concurrent
    ``fetch`` calls share the workers. ``progress`` is an optional object with
    ``add_total(nbytes)``, ``advance(nbytes)`` and ``shard_done(result)``.
    """

    def __init__(self, data_dir: Path, base_url: str, *, workers: int = 8, token: str | None = None,
                 retry: RetryPolicy = DEFAULT_RETRY, verify: bool = False, progress=None,
                 min_split: int = 512 << 10, poll_interval: float = 0.25) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if retry.attempts < 1:
            raise ConfigError(f"retry attempts must be >= 1, got {retry.attempts}")
        self.data_dir, self.base_url = Path(data_dir), check_url(base_url)
        self.workers, self.retry, self.verify, self.progress = workers, retry, verify, progress
        self.min_split, self.poll_interval = min_split, poll_interval
        self._headers = {"Accept-Encoding": "identity"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._jobs: dict[int, Job] = {}
        self._pending: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []
        self._tasks: set[asyncio.Task] = set()
        self._event = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="nanostream-write")

    async def __aenter__(self) -> Fetcher:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.retry.connect_timeout,
                                        sock_read=self.retry.read_timeout)
        connector = aiohttp.TCPConnector(limit=self.workers, limit_per_host=self.workers)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                              auto_decompress=False, trust_env=True)
        self._ranges = RangeDownloader(self._session, self._pool, self._headers, self.progress, self._notify)
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
            for job in list(self._jobs.values()):
                job.save(force=True)
                self._release(job)
                if not job.future.done():
                    job.future.cancel()
            if self._session is not None:
                await self._session.close()
            self._pool.shutdown(wait=True)  # no writer thread outlives the Fetcher

    async def fetch(self, index: int) -> ShardResult:
        """Download shard ``index`` (or wait for it); the verified result, or raise FetchError."""
        if self._session is None:
            raise RuntimeError("use Fetcher as `async with Fetcher(...) as f`")
        job = self._jobs.get(index)
        if job is None:
            name = shard_name(index)
            job = self._jobs[index] = Job(index, self.data_dir / name, f"{self.base_url}/{name}")
            self._pending.append(job)
            self._notify()
        return await asyncio.shield(job.future)

    # -- scheduling -------------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
                for seg in job.segments:
                    if not seg.active and not seg.done() and not job.finalizing:
                        seg.active = True
                        return job, seg
            if self._pending:
                await self._prepare(self._pending.popleft())
                continue
            stolen = self._steal()
            if stolen is not None:
                return stolen
            await event.wait()

    def _steal(self) -> tuple[Job, Segment] | None:
        best: tuple[int, Job, Segment] | None = None
        for job in self._active:
            for seg in job.segments:
                if seg.active and seg.end is not None and not job.finalizing:
                    left = seg.end - seg.pos
                    if left >= 2 * self.min_split and (best is None or left > best[0]):
                        best = (left, job, seg)
        if best is None:
            return None
        left, job, seg = best
        new = Segment(seg.pos + left // 2, seg.end)
        seg.end = new.pos
        new.active = True
        job.segments.append(new)
        return job, new

    async def _prepare(self, job: Job) -> None:
        """Skip, defer (another process has it), resume or start ``job``."""
        if job.final.exists() and not self.verify:
            return self._resolve(job, skipped=True)
        try:
            job.lock = _try_lock(job.final)
        except OSError as exc:
            return self._fail(job, Fatal(f"cannot create lock file {lock_path(job.final)}: {exc}"))
        if job.lock is None:
            log.debug("%s is being downloaded by another process; waiting for it", job.name)
            return self._spawn(self._wait_for_other(job))
        if job.final.exists():
            if not self.verify or await self._verify_existing(job):
                return self._resolve(job, skipped=True)
            if job.future.done():
                return None
        state = PartState.load(job.final, job.url)
        if state is not None:
            job.size, job.validator, job.sha256 = state.size, state.validator, state.sha256
            job.segments = [Segment(s, e) for s, e in state.missing]
            log.info("%s: resuming, %d of %d bytes to go", job.name,
                     sum(e - s for s, e in state.missing), state.size)
            if self.progress is not None:
                self.progress.add_total(sum(e - s for s, e in state.missing))
        else:
            job.segments = [Segment(0, None)]
        self._active.append(job)
        if all(s.done() for s in job.segments):
            self._spawn(self._finalize(job))
        self._notify()
        return None

    async def _wait_for_other(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            if job.final.exists() and not self.verify:
                return self._resolve(job, skipped=True)
            probe = _try_lock(job.final)
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
                except Exception as exc:
                    if not job.live(gen):
                        return
                    retryable, after = classify(exc)
                    job.attempts += 1
                    if not retryable or job.attempts >= self.retry.attempts:
                        return self._fail(job, exc)
                    delay = self.retry.backoff(job.attempts, after)
                    log.info("%s: %s; retry %d/%d in %.1fs", job.name, describe(exc),
                             job.attempts, self.retry.attempts - 1, delay)
                    await asyncio.sleep(delay)
        finally:
            seg.active = False
            self._notify()
        if job.live(gen) and not job.finalizing and all(s.done() and not s.active for s in job.segments):
            await self._finalize(job)

    async def _finalize(self, job: Job) -> None:
        job.finalizing = True
        gen = job.gen
        try:
            problem = await asyncio.to_thread(finalize, job.final, job.size, job.sha256, job.digest())
        except OSError as exc:
            return self._fail(job, Fatal(f"cannot publish {job.final}: {exc}"))
        finally:
            job.finalizing = False
        if not job.live(gen):
            return None
        if problem is None:
            return self._resolve(job, skipped=False)
        job.attempts += 1
        err = VerificationError(f"{job.name}: downloaded bytes failed verification: {problem} ({job.url})",
                                shard=job.name, url=job.url)
        if job.attempts >= self.retry.attempts:
            return self._fail(job, err)
        job.reset(f"{problem}; discarded the bytes (attempt {job.attempts}/{self.retry.attempts - 1})")
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
        problem = await asyncio.to_thread(check_file, job.final, expected, sha)
        if problem is None:
            return True
        log.warning("%s: present but %s; downloading it again", job.name, problem)
        job.final.unlink(missing_ok=True)
        return False

    # -- outcomes ---------------------------------------------------------------------------
    def _done(self, job: Job) -> None:
        self._release(job)
        self._jobs.pop(job.index, None)
        if job in self._active:
            self._active.remove(job)
        self._notify()

    def _release(self, job: Job) -> None:
        if job.lock is not None:
            job.lock.release()
            job.lock = None

    def _resolve(self, job: Job, *, skipped: bool) -> None:
        size = job.final.stat().st_size
        result = ShardResult(job.index, job.final, size, job.downloaded, job.attempts, skipped)
        self._done(job)
        job.future.set_result(result)
        if self.progress is not None:
            self.progress.shard_done(result)

    def _fail(self, job: Job, exc: BaseException) -> None:
        if job.future.done():
            return
        if isinstance(exc, FetchError):
            err = exc
        elif isinstance(exc, Fatal) and exc.status is not None:
            err = HTTPStatusError(f"{job.name}: {exc} from {job.url}", status=exc.status,
                                  shard=job.name, url=job.url)
            discard(job.final)
        elif isinstance(exc, Fatal):
            err = FetchError(f"{job.name}: {exc}", shard=job.name, url=job.url)
        elif not classify(exc)[0]:
            err = FetchError(f"{job.name}: unexpected {type(exc).__name__}: {exc} ({job.url})",
                             shard=job.name, url=job.url)
        else:
            err = RetriesExhausted(
                f"{job.name}: gave up after {job.attempts} failed attempts; last: {describe(exc)} "
                f"({job.url}); rerun to resume", attempts=job.attempts, shard=job.name, url=job.url)
        if err is not exc:
            err.__cause__ = exc
        if isinstance(err, RetriesExhausted):
            job.save(force=True)  # keep the partial download for the next run
        self._done(job)
        job.future.set_exception(err)
        if self.progress is not None:
            self.progress.shard_done(ShardResult(job.index, None, 0, job.downloaded, job.attempts, error=err))


async def fetch_shards(indices: Iterable[int], *, data_dir: Path, base_url: str, workers: int = 8,
                       token: str | None = None, retry: RetryPolicy = DEFAULT_RETRY, verify: bool = False,
                       on_shard: Callable[[ShardResult], None] | None = None, progress=None,
                       **fetcher_kwargs) -> list[ShardResult]:
    """Fetch every shard in ``indices``; one result per index (in order), failures in ``.error``.

    ``on_shard`` is called as each shard lands or fails. Raises only for bad arguments
    (``ConfigError``) or cancellation; partial downloads are kept for resume.
    """
    indices = list(dict.fromkeys(indices))
    data_dir = Path(data_dir)
    results: dict[int, ShardResult] = {}

    async def one(f: Fetcher, i: int) -> None:
        try:
            res = await f.fetch(i)
        except FetchError as exc:
            res = ShardResult(i, None, error=exc)
        results[i] = res
        if on_shard is not None:
            on_shard(res)

    async with Fetcher(data_dir, base_url, workers=workers, token=token, retry=retry, verify=verify,
                       progress=progress, **fetcher_kwargs) as f:
        async with TaskGroup() as tg:
            for i in indices:
                tg.create_task(one(f, i))
    return [results[i] for i in indices]
