"""Retry policy and the one boundary where HTTP outcomes become retry decisions.

``RetryPolicy`` holds attempts, backoff and timeouts. ``classify`` turns whatever a
request raised (aiohttp errors, timeouts, our own ``Transient``/``Fatal``) into
"retry after N seconds" or "give up now", so the downloader has one place that
decides. Backoff is exponential with full jitter: ``uniform(0, min(cap, base * 2**k))``,
except that a server's ``Retry-After`` is obeyed.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import aiohttp

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Defaults suit 100 MB shards from the Hub."""

    attempts: int = 8  # failed requests allowed per shard before it fails
    base: float = 1.0  # first backoff ceiling, seconds
    cap: float = 60.0  # largest backoff ceiling, seconds
    connect_timeout: float = 30.0  # to open a connection
    unreachable_after: float = 8.0  # give up on a host that never answered once it failed this long
    read_timeout: float = 60.0  # longest silence while reading a body (a stall); no total timeout
    max_retry_after: float = 300.0  # longest Retry-After (429/503) obeyed

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure (1-based)."""
        if retry_after is not None:  # the server knows best, within reason
            return min(max(retry_after, 0.0), self.max_retry_after)
        return random.uniform(0.0, min(self.cap, self.base * 2 ** max(failures - 1, 0)))

    async def wait_to_retry(self, exc: BaseException, failures: int) -> bool:
        """After the ``failures``-th failure ``exc``: sleep the backoff and return True, or return
        False at once when ``exc`` is not worth retrying or the attempts are used up."""
        retryable, after = classify(exc)
        if not retryable or failures >= self.attempts:
            return False
        await asyncio.sleep(self.backoff(failures, after))
        return True


LIST_RETRY = RetryPolicy(attempts=5, base=0.5, cap=8.0)  # listing a dataset (Hub tree API, S3 ListObjectsV2)


def client_session(policy: RetryPolicy) -> aiohttp.ClientSession:
    """A session for listing requests (Hub tree API, S3 ListObjectsV2) with the policy's timeouts."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.connect_timeout, sock_read=policy.read_timeout)
    return aiohttp.ClientSession(timeout=timeout, trust_env=True)


class Transient(Exception):
    """A failure worth retrying (5xx, 429, short or corrupt body)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Fatal(Exception):
    """A failure retrying cannot fix (404, 403, disk full). ``status`` when HTTP."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class NoSpace(Fatal):
    """The disk cannot hold this shard's part file now (``posix_fallocate`` said ENOSPC)."""

    def __init__(self, message: str, needed: int):
        super().__init__(message)
        self.needed = needed


def unreachable(exc: BaseException) -> str | None:
    """Why no connection could be made (DNS failure, refused, no route), or None for other failures."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve host {exc.host!r}"
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
            exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientConnectorSSLError)):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc.os_error})"
    return None


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import datetime as dt

    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def check_status(resp: aiohttp.ClientResponse) -> None:
    """Raise Transient/Fatal for a response that is not 200/206."""
    if resp.status in (200, 206):
        return
    reason = f"HTTP {resp.status} {resp.reason or ''}".strip()
    if resp.status in RETRY_STATUSES:
        raise Transient(reason, parse_retry_after(resp.headers.get("Retry-After")))
    hint = {
        401: "set HF_TOKEN to a valid token",
        403: "check HF_TOKEN and that you accepted the dataset's terms",
        404: "check --dataset/--base-url and --max-shard",
        416: "the remote file changed size; delete the partial download and retry",
    }.get(resp.status, "check the URL")
    raise Fatal(f"{reason} ({hint})", status=resp.status)


def classify(exc: BaseException) -> tuple[bool, float | None]:
    """(retryable, retry_after) for an exception raised while requesting or reading."""
    if isinstance(exc, Transient):
        return True, exc.retry_after
    if isinstance(exc, Fatal):
        return False, None
    if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)):
        return True, None
    return False, None


def describe(exc: BaseException) -> str:
    """A short human description of a request failure."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out (connect or read stall)"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientError) and not isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}: {text}"
    return text


def parse_sha256(value: str | None) -> str | None:
    """The sha256 in an ETag-like header (quotes and W/ stripped), else None."""
    if not value:
        return None
    v = value.strip()
    v = v.removeprefix("W/")
    v = v.strip('"').lower()
    return v if SHA256_RE.match(v) else None
