"""The event-loop side of one stream's place in its folder's budget: demands, waits and reservations.

``Admission`` wraps the stream's ``budget.FolderBudget`` (whose calls block: they run on
threads here) for ``supply.ShardSource``. A file is a *demand* while a reader waits for it
(``wanted``) and a *prefetch* otherwise. ``admit`` returns once the budget has reserved room
for a download: a demand retries every 20-250 ms until it fits (saying what holds the budget
every ``WAIT_LOG_S``); prefetches are tried in the order they were asked for, and a refused
one is *parked* and retries up to every second, and at once when it becomes a demand or the
one before it is through. Reservations are dropped in the background (``release``) and
``close`` waits for those, then leaves the budget (its holder file goes, and every
reservation with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .budget import FolderBudget
from .holders import Needs

log = logging.getLogger(__name__)
T = TypeVar("T")
WAIT_LOG_S = 30.0  # a demand that waits this long for room says what holds the budget


class Admission:
    """One stream's demands and reservations in ``budget`` (see the module docstring)."""

    def __init__(self, budget: FolderBudget) -> None:
        self.budget = budget
        self.parked: set[str] = set()  # prefetches waiting for room
        self._demand: set[str] = set()  # files a reader waits for
        self._queued: list[str] = []  # prefetches not admitted yet, in the order they are needed
        self._cleanup: set[asyncio.Task[Any]] = set()
        self._woken = asyncio.Event()  # set (and replaced) when a file becomes a demand or a prefetch moves up

    def _wake(self) -> None:
        woken, self._woken = self._woken, asyncio.Event()
        woken.set()

    def wanted(self, rel: str) -> None:
        """A reader waits for ``rel`` now."""
        self._demand.add(rel)
        self._wake()

    def done(self, rel: str) -> None:
        """The reader holds ``rel`` (or gave up on it): no longer a demand, nor reserved by us."""
        self._demand.discard(rel)
        self.release(rel)

    def is_demand(self, rel: str) -> bool:
        return rel in self._demand

    async def admit(self, rel: str, size: int) -> None:
        """Wait until the budget has reserved room to download ``rel`` (``size`` bytes). Prefetches are
        admitted in the order they were asked for (the order they are needed): a later one does not take
        the room an earlier one waits for."""
        delay, since = 0.02, time.monotonic()
        told = since
        self._queued.append(rel)
        try:
            while True:
                now = rel in self._demand
                if (now or self._queued[0] == rel) and await _blocking(self.budget.admit, rel, size, now):
                    self.parked.discard(rel)
                    return
                if not now:
                    self.parked.add(rel)
                elif time.monotonic() - told > WAIT_LOG_S:
                    told = time.monotonic()
                    log.warning("waiting %.0fs for room under cache_limit: %s", told - since, self.budget.shortfall)
                if now:
                    await asyncio.sleep(delay)
                else:  # a prefetch that becomes a demand, or moves up, tries again at once
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._woken.wait(), delay)
                delay = min(delay * 1.5, 0.25 if now else 1.0)
        finally:
            self._queued.remove(rel)
            self._wake()

    def release(self, rel: str) -> None:
        """Drop our reservation of ``rel`` in the background (``close`` waits for it)."""
        h = self.budget.holder
        if h is None or (rel not in h.info.reserved and rel not in h.info.waiting):
            return  # nothing to drop (saves a trip to a thread for every file read)
        task = asyncio.ensure_future(_blocking(self.budget.release, rel))
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def publish(self, needs: Needs) -> None:
        await _blocking(self.budget.publish, needs)

    async def close(self) -> None:
        if self._cleanup:
            await asyncio.wait(list(self._cleanup))
        await _blocking(self.budget.close)


async def _blocking(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)
