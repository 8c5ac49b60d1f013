"""How each file of a fetch is settled: ``Jobs`` (the files a Fetcher knows of, by state), ``ShardResult`` and
``translate``, the one boundary where what ended a file becomes the caller's ``FetchError``.
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

from ..config import host_of
from ..errors import AccessDenied, DiskFullError, FetchError, HTTPStatusError, RetriesExhausted
from ..retry import Fatal, NoSpace, RetryPolicy, classify, describe
from .partial import discard, part_path

if TYPE_CHECKING:
    from .jobs import Job

log = logging.getLogger(__name__)
_HUB_FILE = re.compile(r"^(?P<page>https?://[^?#]*?/datasets/(?P<repo>[^/]+/[^/]+))/resolve/")


@dataclass
class ShardResult:
    """Outcome of one file: ``path`` is the verified final file, or ``error`` says why not. ``name``: its
    path in the data folder; ``index``: the shard index (``fetch_shards``) or its place in the list."""

    index: int | None
    path: Path | None
    size: int = 0  # bytes of the final file
    downloaded: int = 0  # bytes transferred by this process
    attempts: int = 0  # failed requests (retries) along the way
    skipped: bool = False  # already present (or finished by another process): no download
    error: FetchError | None = None
    name: str = ""


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
    """The FetchError for a file that failed with ``exc`` (chained to it)."""
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
        err = RetriesExhausted(f"{job.name}: {job.retries.why(exc)} ({job.url}){hint}", attempts=job.attempts,
                               shard=job.name, url=job.url)
    err.__cause__ = exc
    return err


class Jobs:
    """The files a Fetcher knows of, by state (queued, running, waiting for disk space), and how each one
    is settled: resolved, failed, or set aside until the running ones free disk space. ``wake`` tells
    the idle workers that there is something new to do."""

    def __init__(self, policy: RetryPolicy, progress: Any, wake: Callable[[], None]) -> None:
        self.policy, self.progress, self.wake = policy, progress, wake
        self.by_key: dict[str, Job] = {}
        self.queued: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []
        self.waiting_for_space: list[Job] = []
        self.failed: dict[str, ShardResult] = {}  # file path -> the result of a file that failed
        self.down_since: float | None = None  # when the host was first found unreachable

    def host_down(self, why: str, exc: BaseException, *, now: bool = False, where: str = "") -> bool:
        """No connection was ever made: after ``unreachable_after`` seconds (or at once with ``now``) fail
        every file with one error; True when it did."""
        t = time.monotonic()
        if self.down_since is None:
            self.down_since = t
            log.debug("%s; retrying for up to %.0fs", why, self.policy.unreachable_after)
        if not now and t - self.down_since < self.policy.unreachable_after:
            return False
        err = FetchError(f"{why}: nothing was downloaded; check the network, HF_ENDPOINT, AWS_ENDPOINT_URL or "
                         f"--base-url ({where})", url=where)
        err.__cause__ = exc
        self.fail_all(err)
        return True

    def fail_all(self, err: FetchError, host: str | None = None) -> None:
        """Fail every queued, running and waiting file (of ``host``, when given) with the one ``err``."""
        every = [*self.queued, *self.running, *self.waiting_for_space]
        hit = [j for j in every if host is None or host_of(j.url) == host]
        for job in hit:
            if job in self.waiting_for_space:
                self.waiting_for_space.remove(job)
            self.fail(job, err)
        self.queued = collections.deque(j for j in self.queued if j not in hit)

    def no_space(self, job: Job, exc: NoSpace) -> None:
        """The disk cannot hold this file now: wait for the running ones to finish, or fail if none runs."""
        others = [j for j in self.running if j is not job and j.size is not None]
        if job in self.running:
            self.running.remove(job)
        if not others:
            return self.fail(job, exc)
        log.info("%s: %.1f MB do not fit on the disk now; waiting for %d running shard(s) to finish",
                 job.name, exc.needed / 1e6, len(others))
        job.segments = []
        job.close_files()
        job.unlock()  # it holds nothing on disk; locked again when it is retried
        self.waiting_for_space.append(job)
        return None

    def resolve(self, job: Job, *, skipped: bool) -> None:
        self._settle(job, ShardResult(job.index, job.final, job.final.stat().st_size, job.downloaded, job.attempts,
                                      skipped, name=job.name))

    def fail(self, job: Job, exc: BaseException) -> None:
        if job.future.done():
            return
        if isinstance(exc, Fatal) and exc.status in (401, 403):  # the source refuses all: stop at once
            denied = refused(job, exc)
            denied.__cause__ = exc
            self.fail_all(denied, host_of(job.url))
            return self.fail(job, denied)  # (done already when it was queued or running)
        if job.retries.rate_limited(exc):  # the host's schedule outlasts the budget: for every file
            err = RetriesExhausted(f"{describe(exc)}: {job.retries.why(exc)} ({job.url})", url=job.url)
            err.__cause__ = exc
            self.fail_all(err)
            return self.fail(job, err)
        result = ShardResult(job.index, None, 0, job.downloaded, job.attempts, error=translate(job, exc), name=job.name)
        self.failed[job.name] = result
        self._settle(job, result)

    def _settle(self, job: Job, result: ShardResult) -> None:
        job.close_files()
        job.unlock()
        self.by_key.pop(job.name, None)
        if job in self.running:
            self.running.remove(job)
        while self.waiting_for_space:  # space was freed: the waiting files try again
            self.queued.appendleft(self.waiting_for_space.pop())
        self.wake()
        if result.error is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(result.error)
        if self.progress is not None:
            self.progress.shard_done(result)
