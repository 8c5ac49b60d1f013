"""What a fetch returns per file: ``ShardResult``, and ``translate``/``refused``, the one boundary where what
ended a file becomes the caller's ``FetchError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AccessDenied, DiskFullError, FetchError, HTTPStatusError, RetriesExhausted
from ..retry import Fatal, NoSpace, classify, describe
from .partial import discard, part_path

if TYPE_CHECKING:
    from .jobs import Job

_HUB_FILE = re.compile(r"^(?P<page>https?://[^?#]*?/datasets/(?P<repo>[^/]+/[^/]+))/resolve/")


@dataclass
class ShardResult:
    """Outcome of one file: ``path`` is the verified final file, or ``error`` says why not. ``name``: its
    path in the data folder; ``index``: its place in the list ``fetch_files`` was given."""

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
    repo, page = (f"hf://datasets/{hub['repo']}", hub["page"]) if hub else ("", "")
    if hub and exc.code == "GatedRepo":
        who = ("set HF_TOKEN to a token of that account" if status == 401 else
               "HF_TOKEN's account has no access yet (a manual approval may still be pending)")
        msg = f"{repo} is a gated dataset ({said}): accept its terms at {page}; {who}"
    elif hub:
        msg = f"{repo} refuses downloads ({said}): set HF_TOKEN to a token that may read it ({page})"
    else:
        msg = f"{job.url.rsplit('/', 1)[0]} refuses downloads ({exc}): check the token or credentials"
    return AccessDenied(f"{msg}; the fetch stopped at the first refusal", status=status, url=job.url)


def translate(job: Job, exc: BaseException) -> tuple[FetchError, str | None]:
    """The FetchError for a file that failed with ``exc`` (chained to it), and whom it fails: ``None`` this
    file, ``"host"`` every file of its host (a 401/403), ``"all"`` every file (429 waits past the budget)."""
    if isinstance(exc, FetchError):
        return exc, None
    scope = None
    if isinstance(exc, Fatal) and exc.status in (401, 403):
        err: FetchError = refused(job, exc)
        scope = "host"
    elif job.retries.rate_limited(exc):
        err = RetriesExhausted(f"{describe(exc)}: {job.retries.why(exc)} ({job.url})", url=job.url)
        scope = "all"
    elif isinstance(exc, NoSpace):
        err = job.error(f"not enough free space in {job.final.parent} for {exc.needed / 1e6:.1f} MB ({exc}); "
                        "free some space, choose another --data-dir, or stream with a cache_limit= "
                        "(NANOSTREAM_CACHE_LIMIT) below the free space, so that files are evicted to make "
                        "room", DiskFullError)
    elif isinstance(exc, Fatal) and exc.status is not None:
        err = job.error(f"{exc} from {job.url}", HTTPStatusError, status=exc.status)
        discard(job.final)
    elif isinstance(exc, Fatal):
        err = job.error(str(exc))
    elif not classify(exc)[0]:
        err = job.error(f"unexpected {type(exc).__name__}: {exc} ({job.url})")
    else:
        kept = part_path(job.final).exists() and job.size is not None and job.downloaded > 0
        hint = "; rerun to resume the partial download" if kept else ""
        err = job.error(f"{job.retries.why(exc)} ({job.url}){hint}", RetriesExhausted,
                        attempts=job.retries.failures)
    err.__cause__ = exc
    return err, scope
