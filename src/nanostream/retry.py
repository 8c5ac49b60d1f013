"""Retrying HTTP requests: ``RetryPolicy``, ``classify``, ``Retries`` (one request's or file's failures),
``with_retries`` (the one request loop) and ``client_session``, which opens every session."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from .errors import RetriesExhausted
from .quota import LONGEST_WAIT, pace, parse_retry_after, rate_limit_wait

T = TypeVar("T")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Defaults suit 100 MB shards from the Hub."""

    attempts: int = 8  # failed requests allowed per file (or listing) before it fails
    base: float = 1.0  # first backoff ceiling, seconds
    cap: float = 60.0  # largest backoff ceiling, seconds
    connect_timeout: float = 30.0  # to open a connection
    unreachable_after: float = 8.0  # give up on a host that never answered once it failed this long
    read_timeout: float = 60.0  # longest silence while reading a body (a stall); no total timeout
    max_retry_after: float = LONGEST_WAIT  # longest Retry-After (503) obeyed
    rate_limit_budget: float = 900.0  # rate-limit waits (429) allowed in all, beyond attempts

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure (or the server's ``Retry-After``)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return random.uniform(0.0, min(self.cap, self.base * 2 ** max(failures - 1, 0)))


LIST_RETRY = RetryPolicy(attempts=5, base=0.5, cap=8.0)  # listing a dataset (Hub tree API, S3 ListObjectsV2)


def client_session(policy: RetryPolicy, **kwargs: Any) -> aiohttp.ClientSession:
    """A session with the policy's timeouts (no total one), every request paced by ``quota.pace``."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.connect_timeout, sock_read=policy.read_timeout)
    return aiohttp.ClientSession(timeout=timeout, trust_env=True, middlewares=(pace,), **kwargs)


class Transient(Exception):
    """A failure worth retrying (5xx, 429, short or corrupt body); ``rate_limited``: a 429 that named its wait."""

    def __init__(self, message: str, retry_after: float | None = None, *, rate_limited: bool = False):
        super().__init__(message)
        self.retry_after, self.rate_limited = retry_after, rate_limited


class Fatal(Exception):
    """A failure retrying cannot fix (404, 403, disk full)."""

    def __init__(self, message: str, status: int | None = None, code: str = ""):
        super().__init__(message)
        self.status, self.code = status, code


class NoSpace(Fatal):
    """The disk cannot hold this file's part file now."""

    def __init__(self, message: str, needed: int):
        super().__init__(message)
        self.needed = needed


def transient(status: int, reason: str, headers: Mapping[str, str]) -> Transient:
    """The Transient for a retryable status: a 429's named wait makes it ``rate_limited``."""
    named = rate_limit_wait(headers) if status == 429 else None
    if named is not None:
        return Transient(f"{reason} ({named[1]})", min(named[0], LONGEST_WAIT), rate_limited=True)
    return Transient(reason, parse_retry_after(headers.get("Retry-After")))


def check_status(resp: aiohttp.ClientResponse) -> None:
    """Raise Transient/Fatal for a response that is not 200/206."""
    if resp.status in (200, 206):
        return
    reason = f"HTTP {resp.status} {resp.reason or ''}".strip()
    if resp.status in RETRY_STATUSES:
        raise transient(resp.status, reason, resp.headers)
    code = resp.headers.get("X-Error-Code", "")
    if code:
        reason += f" ({code})"
    hint = {
        401: "set HF_TOKEN to a valid token",
        403: "check HF_TOKEN and that you accepted the dataset's terms",
        404: "check --dataset/--base-url and --max-shard",
        416: "the remote file changed size; delete the partial download and retry",
    }.get(resp.status, "check the URL")
    raise Fatal(f"{reason} ({hint})", status=resp.status, code=code)


def classify(exc: BaseException) -> tuple[bool, float | None]:
    """(retryable, retry_after) for an exception raised while requesting or reading."""
    if isinstance(exc, Transient):
        return True, exc.retry_after
    return isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)), None


def unreachable(exc: BaseException) -> str | None:
    """Why no connection could be made (DNS failure, refused, no route), or None for other failures."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve host {exc.host!r}"
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
            exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientConnectorSSLError)):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc.os_error})"
    return None


def describe(exc: BaseException) -> str:
    """A short human description of a request failure."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out (connect or read stall)"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientError) and not isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}: {text}"
    return text


class Retries:
    """The failures of one request, or of one file's requests, named ``what`` in logs and errors."""

    def __init__(self, policy: RetryPolicy, what: str, *, url: str = "", shard: str | None = None) -> None:
        self.policy, self.what, self.url, self.shard = policy, what, url, shard
        self.failures = 0
        self.waited = 0.0  # seconds of 429 waits begun
        self.answered = False  # a failure came from an answer (not a connection that could not be made)

    def rate_limited(self, exc: BaseException) -> bool:
        return isinstance(exc, Transient) and exc.rate_limited

    async def again(self, exc: BaseException) -> bool:
        """After ``exc``: wait and return True to retry, or return False at once to give up (a 429's wait
        is held by ``quota.pace`` and only counted here)."""
        if self.rate_limited(exc):
            assert isinstance(exc, Transient) and exc.retry_after is not None
            if self.waited + exc.retry_after > self.policy.rate_limit_budget:
                return False
            self.waited += exc.retry_after
            return True
        self.failures += 1
        retryable, after = classify(exc)
        if not retryable or self.failures >= self.policy.attempts:
            return False
        why = unreachable(exc)
        self.answered = self.answered or why is None
        delay = self.policy.backoff(self.failures, after)
        if not self.answered:
            delay = min(delay, 1.0)
        log.log(logging.INFO if self.answered else logging.DEBUG, "%s: %s; retry %d/%d in %.1fs", self.what,
                why or describe(exc), self.failures, self.policy.attempts - 1, delay)
        await asyncio.sleep(delay)
        return True

    def why(self, exc: BaseException) -> str:
        """What the last failure was, once ``again`` said no."""
        if self.rate_limited(exc):
            return (f"still rate-limited after waiting {self.waited:.0f}s (rate_limit_budget "
                    f"{self.policy.rate_limit_budget:.0f}s): try again later, or with HF_TOKEN set (a higher limit)")
        return f"gave up after {self.failures} attempts; last: {describe(exc)}"


async def with_retries(retries: Retries, attempt: Callable[[], Awaitable[T]]) -> T:
    """``await attempt()`` until it returns; a failure ``retries`` gives up on is raised as it is, or as
    ``RetriesExhausted`` when it was worth retrying."""
    while True:
        try:
            return await attempt()
        except Exception as exc:  # sorted by Retries.again (classify)
            if await retries.again(exc):
                continue
            if not classify(exc)[0]:
                raise
            where = f" ({retries.url})" if retries.url else ""
            raise RetriesExhausted(f"{retries.what}: {retries.why(exc)}{where}", attempts=retries.failures,
                                   shard=retries.shard, url=retries.url or None) from exc


def parse_sha256(value: str | None) -> str | None:
    """The sha256 in an ETag-like header (quotes and W/ stripped), else None."""
    if not value:
        return None
    v = value.strip().removeprefix("W/").strip('"').lower()
    return v if SHA256_RE.match(v) else None

