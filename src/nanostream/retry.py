"""Retry policy and the one boundary where HTTP outcomes become retry decisions.

``RetryPolicy`` holds attempts, backoff and timeouts. ``classify`` turns whatever a
request raised (aiohttp errors, timeouts, our own ``Transient``/``Fatal``) into
"retry after N seconds" or "give up now", so the downloader has one place that
decides. Backoff is exponential with full jitter: ``uniform(0, min(cap, base * 2**k))``,
except that a server's ``Retry-After`` is obeyed.

Rate limits: a 429 names its wait in the IETF ``RateLimit: "api";r=0;t=55`` header (the
Hub's, with ``RateLimit-Policy: "fixed window";"api";q=500;w=300``, often without
``Retry-After``) or in ``Retry-After``; ``rate_limit_wait`` reads it as huggingface_hub
does (``t + 1`` seconds when ``r=0``). Such a wait is the server's schedule, not a
failure: it does not use up ``attempts``; the waits of one fetch or listing share a
``RateGate``, which logs one WARNING line per wait (so ``--quiet`` still explains a long
pause) and gives up once they add up to ``rate_limit_budget`` seconds, longer than the
Hub's 5-minute window.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import aiohttp

from .quota import MIDDLEWARES, POLICY_RE, RATELIMIT_RE

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Defaults suit 100 MB shards from the Hub."""

    attempts: int = 8  # failed requests allowed per shard before it fails
    base: float = 1.0  # first backoff ceiling, seconds
    cap: float = 60.0  # largest backoff ceiling, seconds
    connect_timeout: float = 30.0  # to open a connection
    unreachable_after: float = 8.0  # give up on a host that never answered once it failed this long
    read_timeout: float = 60.0  # longest silence while reading a body (a stall); no total timeout
    max_retry_after: float = 301.0  # longest Retry-After / RateLimit t+1 (429/503) obeyed
    rate_limit_budget: float = 900.0  # rate-limit waits (429) allowed in all, beyond attempts

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
    return aiohttp.ClientSession(timeout=timeout, trust_env=True, middlewares=MIDDLEWARES)


class Transient(Exception):
    """A failure worth retrying (5xx, 429, short or corrupt body). ``rate_limited``: a 429 that named
    its wait (``retry_after``): the server's schedule, not counted against the attempts."""

    def __init__(self, message: str, retry_after: float | None = None, *, rate_limited: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited and retry_after is not None


def rate_limit_wait(headers: Mapping[str, str]) -> tuple[float, str] | None:
    """(seconds, what the server said) for a 429's ``RateLimit`` (``r=0``: ``t + 1`` s, as huggingface_hub
    waits) or ``Retry-After`` header; None when it names no wait."""
    limit = RATELIMIT_RE.search(headers.get("RateLimit", "") or "")
    if limit and int(limit["r"]) == 0:
        said = f'RateLimit "{limit["kind"]}";r=0;t={limit["t"]}'
        policy = POLICY_RE.search(headers.get("RateLimit-Policy", "") or "")
        if policy:
            said += f", {policy['q']} requests per {policy['w']}s"
        return float(limit["t"]) + 1.0, said
    after = parse_retry_after(headers.get("Retry-After"))
    return (after, f"Retry-After {headers.get('Retry-After')}") if after is not None else None


def transient(status: int, reason: str, headers: Mapping[str, str]) -> Transient:
    """The Transient for a retryable status: a 429's named wait makes it ``rate_limited``."""
    named = rate_limit_wait(headers) if status == 429 else None
    if named is not None:
        return Transient(f"{reason} ({named[1]})", named[0], rate_limited=True)
    return Transient(reason, parse_retry_after(headers.get("Retry-After")))


class RateGate:
    """The rate-limit waits of one fetch or listing: every request waits out the current one, each wait
    is logged once (not once per file), and their sum is bounded by ``policy.rate_limit_budget``."""

    def __init__(self, policy: RetryPolicy, where: str = "") -> None:
        self.policy, self.where = policy, where
        self.until = 0.0  # monotonic time the current wait ends
        self.waited = 0.0  # seconds of waits begun so far

    def hit(self, exc: Transient) -> bool:
        """Start (or join) the wait ``exc`` names; False when the waits would outlast the budget."""
        now = time.monotonic()
        seconds = min(max(exc.retry_after or 0.0, 0.0), self.policy.max_retry_after)
        end = now + seconds
        if end <= self.until + 1.0:  # a request that was already in flight: same wait
            return True
        extra = end - max(now, self.until)
        if self.waited + extra > self.policy.rate_limit_budget:
            return False
        self.waited += extra
        self.until = end
        log.warning("%s%s: rate-limited; waiting %.0fs before the next request (%.0fs of at most %.0fs waited)",
                    f"{self.where}: " if self.where else "", exc, seconds, self.waited,
                    self.policy.rate_limit_budget)
        return True

    async def wait(self) -> None:
        """Sleep until the current wait is over (at once when there is none)."""
        delay = self.until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def exhausted(self) -> str:
        return (f"still rate-limited after waiting {self.waited:.0f}s (rate_limit_budget "
                f"{self.policy.rate_limit_budget:.0f}s): try again later, or with HF_TOKEN set (a higher limit)")


class Retries:
    """One request loop's retries: failures count against ``policy.attempts``; rate-limit waits go
    through ``gate`` instead (``RateGate``)."""

    def __init__(self, policy: RetryPolicy, gate: RateGate | None = None) -> None:
        self.policy, self.gate = policy, gate or RateGate(policy)
        self.failures = 0

    async def again(self, exc: BaseException) -> bool:
        """After ``exc``: wait and return True to retry, or False to give up."""
        if isinstance(exc, Transient) and exc.rate_limited:
            if not self.gate.hit(exc):
                return False
            await self.gate.wait()
            return True
        self.failures += 1
        return await self.policy.wait_to_retry(exc, self.failures)

    def why(self, exc: BaseException) -> str:
        """What the last failure was, for the error after ``again`` said no."""
        if isinstance(exc, Transient) and exc.rate_limited:
            return self.gate.exhausted()
        return f"gave up after {self.failures} attempts; last: {describe(exc)}"


class Fatal(Exception):
    """A failure retrying cannot fix (404, 403, disk full). ``status`` and the Hub's ``X-Error-Code``
    when HTTP."""

    def __init__(self, message: str, status: int | None = None, code: str = ""):
        super().__init__(message)
        self.status, self.code = status, code


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
