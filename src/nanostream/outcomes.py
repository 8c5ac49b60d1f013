"""What a shard's download comes to: taking its lock, its ``ShardResult``, and its error.

``open_job`` is the blocking first look at a shard (present? someone else's?
resumable?), run in the Fetcher's disk pool. ``translate`` is the one boundary
where whatever ended a shard (an HTTP status, exhausted retries, a full disk)
becomes the ``FetchError`` the caller sees, with a message that says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import filelock

from .errors import DiskFullError, FetchError, HTTPStatusError, RetriesExhausted
from .partial import PartFiles, PartState, discard, lock_path, part_path
from .retry import Fatal, NoSpace, classify, describe
from .shards import shard_name

if TYPE_CHECKING:
    from .jobs import Job


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


def translate(job: Job, exc: BaseException) -> FetchError:
    """The FetchError for a shard that failed with ``exc`` (chained to it)."""
    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, NoSpace):
        err: FetchError = DiskFullError(
            f"{job.name}: not enough free space in {job.final.parent} for {exc.needed / 1e6:.1f} MB "
            f"({exc}); free some space or choose another --data-dir", shard=job.name, url=job.url)
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
