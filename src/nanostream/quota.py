"""Request quotas a server announces, obeyed before they run out: one ``Quota`` per host and kind in a process.

The Hub answers every ``/resolve/`` request with its quota for the client's address:
``RateLimit-Policy: "fixed window";"resolvers";q=3000;w=300`` (``q`` requests per ``w``-second
window) and ``RateLimit: "resolvers";r=2999;t=287`` (``r`` left, the window ends in ``t`` s).
``pace`` is an aiohttp client middleware on every session nanostream opens: it runs for each
request and each redirect hop, waits before sending as the host's quota requires, and reads
every answer's headers, so all requests to one host in the process -- footer reads,
downloads, HEADs, listings, on any thread or event loop -- draw on one account (``quota_for``):

* while more than half of the window's quota is left, requests go at once;
* below that, what is left beyond a ``reserve`` (``q // 50``, at least 16: requests of other
  processes behind the same address may be in flight) is spread evenly over the rest of the
  window;
* when nothing is left beyond the reserve, requests wait for the window to end; a 429's named
  wait (``r=0;t=N``: ``N + 1`` s, as huggingface_hub waits) holds every request to the host.

A wait for the next window logs one WARNING line per window (``--quiet`` still explains a
pause). A server that announces nothing is not paced. Requests count against the quota from
when they are sent until their answer says how many are left (``left`` is conservative).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp

# huggingface_hub's reading of the IETF draft: "api";r=0;t=55 and "fixed window";"api";q=500;w=300
RATELIMIT_RE = re.compile(r"\"(?P<kind>\w+)\"\s*;\s*r\s*=\s*(?P<r>\d+)\s*;\s*t\s*=\s*(?P<t>\d+)")
POLICY_RE = re.compile(r"q\s*=\s*(?P<q>\d+).*?w\s*=\s*(?P<w>\d+)")
MIN_RESERVE = 16
log = logging.getLogger(__name__)


def kind_of(path: str) -> str:
    """Which of a Hub's quotas a request to ``path`` draws on (the kinds its headers name)."""
    if "/resolve/" in path:
        return "resolvers"
    return "api" if path.startswith("/api/") else "other"


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
    held_until: float = 0.0  # a 429's wait
    warned: float = -1.0  # the window end (or hold) a WARNING line was logged for
    sent: int = 0  # requests sent in all (for tests and benches)
    limited: int = 0  # 429 answers seen

    @property
    def reserve(self) -> int:
        return max(MIN_RESERVE, (self.limit or 0) // 50)

    def exhausted(self, now: float) -> bool:
        """Nothing left of this window beyond the reserve: the next request waits for the next window."""
        return self.left is not None and now < self.ends and self.left - self.reserve <= 0

    def delay(self, now: float) -> float:
        """Seconds to wait before the next request may go (0: now)."""
        if now < self.held_until:
            return self.held_until - now
        if self.left is None or now >= self.ends:
            return max(0.0, self.next_at - now)
        if self.left - self.reserve <= 0:
            return self.ends - now + 0.25
        return max(0.0, self.next_at - now)

    def send(self, now: float) -> None:
        self.sent += 1
        self.in_flight += 1
        if self.left is None or now >= self.ends:
            return
        self.left -= 1
        spare = self.left - self.reserve
        if self.limit is not None and spare <= self.limit // 2:
            self.next_at = now + (self.ends - now) / max(spare, 1)

    def answer(self, now: float, status: int, headers: Mapping[str, str]) -> None:
        """Read an answer's quota headers (the request it answers is no longer in flight)."""
        self.in_flight = max(0, self.in_flight - 1)
        policy = POLICY_RE.search(headers.get("RateLimit-Policy", "") or "")
        if policy:
            self.limit, self.window = int(policy["q"]), float(policy["w"])
        said = RATELIMIT_RE.search(headers.get("RateLimit", "") or "")
        if said is None:
            return
        r, t = int(said["r"]), float(said["t"])
        self.left, self.ends = r - self.in_flight, now + t
        if status == 429:
            self.limited += 1
            self.left = 0
            self.held_until = max(self.held_until, now + t + 1.0)


_quotas: dict[tuple[str, str], Quota] = {}
_lock = threading.Lock()


def quota_for(host: str, kind: str) -> Quota:
    """The process's account of ``host``'s quota for ``kind`` (made on first use)."""
    with _lock:
        return _quotas.setdefault((host, kind), Quota(host, kind))


def quotas() -> list[Quota]:
    """Every account this process keeps (a copy of the list)."""
    with _lock:
        return list(_quotas.values())


async def wait_turn(host: str, kind: str) -> Quota:
    """Wait until a request of ``kind`` to ``host`` may be sent, and count it as sent."""
    quota = quota_for(host, kind)
    while True:
        with _lock:
            now = time.monotonic()
            delay = quota.delay(now)
            if delay <= 0:
                quota.send(now)
                return quota
            mark = quota.ends  # a 429's hold is told by the request's own retry (``retry.RateGate``)
            warn = quota.exhausted(now) and now >= quota.held_until and quota.warned != mark
            if warn:
                quota.warned = mark
        if warn:
            log.warning("%s: %s quota %s; waiting %.0fs before the next request", host, kind, _said(quota), delay)
        await asyncio.sleep(delay)


def _said(q: Quota) -> str:
    per = f"{q.limit} per {q.window:.0f}s" if q.limit is not None and q.window is not None else "announced"
    return f"({per}, {max(q.left or 0, 0)} left)"


def answered(quota: Quota, status: int, headers: Mapping[str, str]) -> None:
    with _lock:
        quota.answer(time.monotonic(), status, headers)


Handler = Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]]


async def pace(request: aiohttp.ClientRequest, handler: Handler) -> aiohttp.ClientResponse:
    """aiohttp client middleware: every request (and redirect hop) waits its turn in its host's quota,
    and every answer's ``RateLimit`` headers update it."""
    url = request.url
    quota = await wait_turn(f"{url.host}:{url.port}", kind_of(url.path))
    try:
        resp = await handler(request)
    except BaseException:
        with _lock:
            quota.in_flight = max(0, quota.in_flight - 1)
        raise
    named = RATELIMIT_RE.search(resp.headers.get("RateLimit", "") or "")
    if named is not None and named["kind"] != quota.kind:  # the server's own name for it
        with _lock:
            quota.in_flight = max(0, quota.in_flight - 1)
        quota = quota_for(quota.host, named["kind"])
        with _lock:
            quota.in_flight += 1
    answered(quota, resp.status, resp.headers)
    return resp


MIDDLEWARES = (pace,)
