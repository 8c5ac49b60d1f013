"""One gate per host and kind of request in a process, paced by its announced quota and its 429 waits:
``pace``, the client middleware of every session, waits at it and updates it from each answer (design.md)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import aiohttp

# huggingface_hub's reading of the IETF draft: "api";r=0;t=55 and "fixed window";"api";q=500;w=300
RATELIMIT_RE = re.compile(r"\"(?P<kind>\w+)\"\s*;\s*r\s*=\s*(?P<r>\d+)\s*;\s*t\s*=\s*(?P<t>\d+)")
POLICY_RE = re.compile(r"q\s*=\s*(?P<q>\d+).*?w\s*=\s*(?P<w>\d+)")
MIN_RESERVE = 16
LONGEST_WAIT = 301.0  # the longest wait a server's Retry-After or RateLimit t+1 is obeyed for
log = logging.getLogger(__name__)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` value (seconds or an HTTP date), None if absent or unreadable."""
    with contextlib.suppress(ValueError):
        return float(value or "")
    try:
        return max(0.0, (parsedate_to_datetime(value) - dt.datetime.now(dt.timezone.utc)).total_seconds())
    except (TypeError, ValueError):  # absent, or neither seconds nor a date
        return None


def rate_limit_wait(headers: Mapping[str, str]) -> tuple[float, str] | None:
    """(seconds, what the server said) a 429 names (``RateLimit`` with ``r=0``: ``t + 1`` s, else ``Retry-After``),
    or None."""
    limit = RATELIMIT_RE.search(headers.get("RateLimit", "") or "")
    if limit and int(limit["r"]) == 0:
        said = f'RateLimit "{limit["kind"]}";r=0;t={limit["t"]}'
        policy = POLICY_RE.search(headers.get("RateLimit-Policy", "") or "")
        if policy:
            said += f", {policy['q']} requests per {policy['w']}s"
        return float(limit["t"]) + 1.0, said
    after = parse_retry_after(headers.get("Retry-After"))
    return (after, f"Retry-After {headers.get('Retry-After')}") if after is not None else None


@dataclass
class Quota:
    """What one host said about one kind of its requests, and the requests sent since."""

    host: str
    kind: str
    limit: int | None = None  # q: requests per window
    window: float | None = None  # w: seconds
    left: int | None = None  # r at the last answer, less the requests sent since (None: not known)
    ends: float = 0.0  # monotonic time the current window ends
    in_flight: int = 0
    next_at: float = 0.0  # earliest time of the next request
    held_until: float = 0.0  # the end of a 429's wait
    warned: float = -1.0  # the window end a WARNING line was logged for

    @property
    def reserve(self) -> int:
        return max(MIN_RESERVE, (self.limit or 0) // 50)

    def exhausted(self, now: float) -> bool:
        """Nothing left of this window beyond the reserve."""
        return self.left is not None and now < self.ends and self.left - self.reserve <= 0

    def delay(self, now: float) -> float:
        """Seconds to wait before the next request may go (0: now)."""
        if now < self.held_until:
            return self.held_until - now
        if self.exhausted(now):
            return self.ends - now + 0.25
        return max(0.0, self.next_at - now)

    def send(self, now: float) -> None:
        self.in_flight += 1
        if self.left is None or now >= self.ends:
            return
        self.left -= 1
        spare = self.left - self.reserve
        if self.limit is not None and spare <= self.limit // 2:
            self.next_at = now + (self.ends - now) / max(spare, 1)

    def answer(self, now: float, status: int, headers: Mapping[str, str]) -> str | None:
        """Read an answer's quota headers; a 429's named wait holds the host. The WARNING line of a new
        wait, else None."""
        policy = POLICY_RE.search(headers.get("RateLimit-Policy", "") or "")
        if policy:
            self.limit, self.window = int(policy["q"]), float(policy["w"])
        said = RATELIMIT_RE.search(headers.get("RateLimit", "") or "")
        if said is not None:
            self.left, self.ends = int(said["r"]) - self.in_flight, now + float(said["t"])
        named = rate_limit_wait(headers) if status == 429 else None
        if named is None:
            return None
        seconds = min(max(named[0], 0.0), LONGEST_WAIT)
        if now + seconds <= self.held_until + 1.0:  # an answer to a request already in flight: the same wait
            return None
        self.held_until = now + seconds
        return f"{self.host}: HTTP 429 ({named[1]}): rate-limited; waiting {seconds:.0f}s before the next request"


_quotas: dict[tuple[str, str], Quota] = {}
_lock = threading.Lock()


def quota_for(host: str, kind: str) -> Quota:
    """The process's account of ``host``'s quota for ``kind`` (made on first use)."""
    with _lock:
        return _quotas.setdefault((host, kind), Quota(host, kind))


async def wait_turn(quota: Quota) -> None:
    """Wait until a request may draw on ``quota``, and count it as sent."""
    while True:
        with _lock:
            now = time.monotonic()
            delay = quota.delay(now)
            if delay <= 0:
                quota.send(now)
                return
            warn = quota.exhausted(now) and now >= quota.held_until and quota.warned != quota.ends
            if warn:  # a 429's wait was told when it arrived
                quota.warned = quota.ends
        if warn:
            per = f"{quota.limit} per {quota.window:.0f}s" if quota.window is not None else "announced"
            log.warning("%s: %s quota (%s, %d left); waiting %.0fs before the next request", quota.host, quota.kind,
                        per, max(quota.left or 0, 0), delay)
        await asyncio.sleep(delay)


Handler = Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]]


async def pace(request: aiohttp.ClientRequest, handler: Handler) -> aiohttp.ClientResponse:
    """aiohttp client middleware: each request (and redirect hop) waits at its host's gate; each answer
    updates it."""
    url = request.url
    kind = "api" if url.path.startswith("/api/") else "other"  # which of a Hub's quotas it draws on
    if "/resolve/" in url.path:
        kind = "resolvers"
    quota = quota_for(f"{url.host}:{url.port}", kind)
    await wait_turn(quota)
    try:
        resp = await handler(request)
    finally:
        with _lock:
            quota.in_flight = max(0, quota.in_flight - 1)
    named = RATELIMIT_RE.search(resp.headers.get("RateLimit", "") or "")
    if named is not None and named["kind"] != quota.kind:  # the server's own name for it
        quota = quota_for(quota.host, named["kind"])
    with _lock:
        line = quota.answer(time.monotonic(), resp.status, resp.headers)
    if line is not None:
        log.warning("%s", line)
    return resp

