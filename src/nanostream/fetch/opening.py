"""How a file's download begins: already there, another process's, checked again (``--verify``), resumed or new."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..errors import FetchError
from ..retry import with_retries
from .disk import Disk
from .jobs import Job, Segment
from .partial import check_file, open_job, release_job, try_lock

log = logging.getLogger(__name__)
POLL = 0.25  # seconds between looks at a file another process downloads


async def open_file(job: Job, disk: Disk, verify: bool,
                    announced: Callable[[], Awaitable[tuple[str | None, int | None]]]) -> str:
    """Take ``job``'s lock and resume state: "present" (nothing to download), "busy" (another process
    downloads it), "resume" or "start" (its segments are set: the missing ranges, or the whole file).
    With ``verify`` a present file is checked against the catalog, else against ``announced()`` (the
    server's sha256 and size), and fetched again if it differs. Raises FetchError."""
    try:
        status, job.lock, state, job.pfiles = await disk.acquire(release_job, open_job, job.final, job.url, verify)
    except OSError as exc:
        raise FetchError(f"{job.name}: cannot lock {job.final.parent}: {exc}", shard=job.name, url=job.url) from exc
    if status == "verify" and await _verified(job, disk, announced):
        return "present"
    if status in ("present", "busy"):
        return status
    if state is None:
        job.segments = [Segment(0, None)]
        return "start"
    job.size, job.validator, job.sha256 = state.size, state.validator, state.sha256
    job.segments = [Segment(s, e) for s, e in state.ranges() if s < e]
    log.info("%s: resuming, %d of %d bytes to go", job.name, sum(e - s for s, e in state.ranges()), state.size)
    return "resume"


async def _verified(job: Job, disk: Disk, announced: Callable[[], Awaitable[tuple[str | None, int | None]]]
                    ) -> bool:
    sha, size, md5 = job.file.sha256, job.file.size, job.file.md5
    if not job.known:
        sha, size = await with_retries(job.retries, announced)
    problem = await disk.run(check_file, job.final, size, sha, md5)
    if problem is not None:
        log.warning("%s: present but %s; downloading it again", job.name, problem)
        job.final.unlink(missing_ok=True)
    return problem is None


async def other_finished(job: Job, verify: bool) -> bool:
    """Another process holds ``job``'s lock: True once its file is there, False when that process is
    gone without it (take over). Polled: a lock another process holds wakes nothing here."""
    while True:
        await asyncio.sleep(POLL)
        if job.final.exists() and not verify:
            return True
        probe = try_lock(job.final)
        if probe is not None:
            probe.release()
            return False
