"""What a shard's download comes to: taking its lock, its ``ShardResult``, and its error.

``open_job`` is the blocking first look at a shard (present? someone else's?
resumable?), run in the Fetcher's disk pool. ``translate`` is the one boundary
where whatever ended a shard (an HTTP status, exhausted retries, a full disk)
becomes the ``FetchError`` the caller sees, with a message that says what to do.
``Ledger`` (the Fetcher's base) keeps the shards' queues and settles each one:
resolved, failed, parked until disk space frees up, or failed all at once, with one
error, when the host was never reached, when it refuses access (401/403: a gated
repo's download is refused for every file, ``refused``) or when its rate-limit waits
outlast ``RetryPolicy.rate_limit_budget``.
"""

from __future__ import annotations

import collections
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

from ..config import host_of
from ..errors import AccessDenied, DiskFullError, FetchError, HTTPStatusError, RetriesExhausted
from ..retry import Fatal, NoSpace, RetryPolicy, classify, describe
from ..shards import shard_name
from .partial import PartFiles, PartState, discard, lock_path, part_path

if TYPE_CHECKING:
    from .jobs import Job

log = logging.getLogger(__name__)
_HUB_FILE = re.compile(r"^(?P<page>https?://[^?#]*?/datasets/(?P<repo>[^/]+/[^/]+))/resolve/")


@dataclass
class ShardResult:
    """Outcome of one file: ``path`` is the verified final file, or ``error`` says why not.

    ``file`` is its path relative to the data folder; ``index`` the caller's number for it
    (the shard index for ``fetch_shards``, its place in the list for ``fetch_files``).
    """

    index: int | None
    path: Path | None
    size: int = 0  # bytes of the final file
    downloaded: int = 0  # bytes transferred by this process
    attempts: int = 0  # failed requests (retries) along the way
    skipped: bool = False  # already present (or finished by another process): no download
    error: FetchError | None = None
    file: str = ""

    @property
    def name(self) -> str:
        return self.file or shard_name(self.index or 0)


def try_lock(final: Path) -> filelock.BaseFileLock | None:
    """The shard's flock if no other process (or Fetcher) holds it, else None. Blocking."""
    lock = filelock.FileLock(lock_path(final), thread_local=False)
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        return None
    return lock


def open_job(final: Path, url: str, verify: bool
             ) -> tuple[str, filelock.BaseFileLock | None, PartState | None, PartFiles | None]:
    """("present" | "busy" | "verify" | "start", lock, resume state, its open files). Blocking."""
    if final.exists() and not verify:
        return "present", None, None, None
    final.parent.mkdir(parents=True, exist_ok=True)  # a catalog path may have folders
    lock = try_lock(final)
    if lock is None:
        return "busy", None, None, None
    if final.exists():
        return "verify", lock, None, None
    loaded = PartState.load(final, url)
    if loaded is None:
        return "start", lock, None, None
    try:
        return "start", lock, loaded[0], PartFiles(final, seq=loaded[1])
    except BaseException:
        lock.release()
        raise


def release_job(opened: tuple[str, filelock.BaseFileLock | None, PartState | None, PartFiles | None]) -> None:
    """Undo ``open_job`` for a caller that was cancelled meanwhile: close the files, drop the lock."""
    _, lock, _, files = opened
    if files is not None:
        files.close()
    if lock is not None:
        lock.release()


def refused(job: Job, exc: Fatal) -> AccessDenied:
    """The one error for a source that refused a file with 401/403: it refuses every file."""
    hub = _HUB_FILE.match(job.url)
    status = exc.status or 0
    said = f"HTTP {status}" + (f" {exc.code}" if exc.code else "")
    if hub and exc.code == "GatedRepo":
        repo, page = f"hf://datasets/{hub['repo']}", hub["page"]
        who = ("set HF_TOKEN to a token of that account" if status == 401 else
               "HF_TOKEN's account has no access yet (a manual approval may still be pending)")
        msg = f"{repo} is a gated dataset ({said}): accept its terms at {page}; {who}"
    elif hub:
        repo, page = f"hf://datasets/{hub['repo']}", hub["page"]
        msg = f"{repo} refuses downloads ({said}): set HF_TOKEN to a token that may read it ({page})"
    else:
        msg = f"{job.url.rsplit('/', 1)[0]} refuses downloads ({exc}): check the token or credentials"
    return AccessDenied(f"{msg}; the fetch stopped at the first refusal", status=status, url=job.url)


def translate(job: Job, exc: BaseException) -> FetchError:
    """The FetchError for a shard that failed with ``exc`` (chained to it)."""
    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, NoSpace):
        err: FetchError = DiskFullError(
            f"{job.name}: not enough free space in {job.final.parent} for {exc.needed / 1e6:.1f} MB "
            f"({exc}); free some space, choose another --data-dir, or stream with a cache_limit= "
            "(NANOSTREAM_CACHE_LIMIT) below the free space, so that files are evicted to make room",
            shard=job.name, url=job.url)
    elif isinstance(exc, Fatal) and exc.status is not None:
        err = HTTPStatusError(f"{job.name}: {exc} from {job.url}", status=exc.status, shard=job.name, url=job.url)
        discard(job.final)
    elif isinstance(exc, Fatal):
        err = FetchError(f"{job.name}: {exc}", shard=job.name, url=job.url)
    elif not classify(exc)[0]:
        err = FetchError(f"{job.name}: unexpected {type(exc).__name__}: {exc} ({job.url})",
                         shard=job.name, url=job.url)
    else:
        kept = part_path(job.final).exists() and job.size is not None and job.downloaded > 0
        hint = "; rerun to resume the partial download" if kept else ""
        err = RetriesExhausted(
            f"{job.name}: gave up after {job.attempts} failed attempts; last: {describe(exc)} "
            f"({job.url}){hint}", attempts=job.attempts, shard=job.name, url=job.url)
    err.__cause__ = exc
    return err


class Ledger:
    """The shards a Fetcher knows of, by state, and how each one is settled."""

    base_url: str | None
    retry: RetryPolicy
    progress: Any
    _notify: Callable[[], None]

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._pending: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []
        self._parked: list[Job] = []  # shards waiting for disk space held by running ones
        self._down_since: float | None = None
        self.failed: dict[str, ShardResult] = {}  # file path -> the result of a file that failed

    def _host_down(self, why: str, exc: BaseException, *, now: bool = False, url: str = "") -> bool:
        """No connection was ever made: after ``unreachable_after`` seconds (or when a shard runs out
        of attempts) fail every shard at once, with one error."""
        t = time.monotonic()
        if self._down_since is None:
            self._down_since = t
            log.debug("%s; retrying for up to %.0fs", why, self.retry.unreachable_after)  # told once, at the end
        if not now and t - self._down_since < self.retry.unreachable_after:
            return False
        where = self.base_url or url.rsplit("/", 1)[0]
        err = FetchError(f"{why}: nothing was downloaded; check the network, HF_ENDPOINT, AWS_ENDPOINT_URL or "
                         f"--base-url ({where})", url=where)
        err.__cause__ = exc
        self._fail_all(err)
        return True

    def _fail_all(self, err: FetchError, origin: str | None = None) -> None:
        """Fail every queued and running shard (of ``origin``'s host, when given) with the one ``err``."""
        hit = [j for j in [*self._pending, *self._active, *self._parked]
               if origin is None or host_of(j.url) == origin]
        for job in hit:
            if job in self._parked:
                self._parked.remove(job)
            self._fail(job, err)
        self._pending = collections.deque(j for j in self._pending if j not in hit)

    def _no_space(self, job: Job, exc: NoSpace) -> None:
        """The disk can't hold this shard now: wait for the running shards, or fail if none runs."""
        holders = [j for j in self._active if j is not job and j.size is not None]
        if job in self._active:
            self._active.remove(job)
        if holders:
            log.info("%s: %.1f MB do not fit on the disk now; waiting for %d running shard(s) to finish",
                     job.name, exc.needed / 1e6, len(holders))
            job.segments = []
            job.close_files()
            self._release(job)  # it holds nothing on disk; taken again when it is retried
            self._parked.append(job)
            return None
        return self._fail(job, exc)


    def _done(self, job: Job) -> None:
        job.close_files()
        self._release(job)
        self._jobs.pop(job.key, None)
        if job in self._active:
            self._active.remove(job)
        while self._parked:  # space was freed (or a reservation ended): parked shards try again
            self._pending.appendleft(self._parked.pop())
        self._notify()

    def _release(self, job: Job) -> None:
        if job.lock is not None:
            job.lock.release()
            job.lock = None

    def _resolve(self, job: Job, *, skipped: bool) -> None:
        size = job.final.stat().st_size
        result = ShardResult(job.index, job.final, size, job.downloaded, job.attempts, skipped, file=job.key)
        self._done(job)
        job.future.set_result(result)
        if self.progress is not None:
            self.progress.shard_done(result)

    def _fail(self, job: Job, exc: BaseException) -> None:
        if job.future.done():
            return
        if isinstance(exc, Fatal) and exc.status in (401, 403):  # the source refuses all: stop at once
            denied = refused(job, exc)
            denied.__cause__ = exc
            self._fail_all(denied, host_of(job.url))
            return self._fail(job, denied)  # (done already when it was queued or running)
        err = translate(job, exc)
        self._done(job)
        job.future.set_exception(err)
        result = self.failed[job.key] = ShardResult(job.index, None, 0, job.downloaded, job.attempts, error=err,
                                                  file=job.key)
        if self.progress is not None:
            self.progress.shard_done(result)
