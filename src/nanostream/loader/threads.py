"""The loader's thread plumbing: ``Channel`` (a bounded hand-over that ``close()`` ends), ``End``, and the
producer threads' scheduling policy (``set_loader_idle``: Linux ``SCHED_IDLE``)."""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Any

log = logging.getLogger(__name__)
_loader_idle = False


def set_loader_idle(idle: bool) -> None:
    """Run the producer threads of loaders started from now on under ``SCHED_IDLE`` (Linux)."""
    global _loader_idle
    _loader_idle = bool(idle)


def background_thread() -> None:
    """Called first in each producer thread: apply the loader's scheduling policy to it."""
    if not _loader_idle or not hasattr(os, "SCHED_IDLE"):
        return
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:  # not permitted in some sandboxes: run at normal priority
        log.debug("SCHED_IDLE not applied to %s: %s", threading.current_thread().name, exc)


class End:
    """The last item a producer puts: the data finished (``error`` None) or failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Closed(Exception):
    """Raised by ``Channel.get`` once the channel is closed."""


class Channel:
    """A bounded queue between two threads; ``close()`` wakes every waiter at once (no polling)."""

    def __init__(self, size: int) -> None:
        self._items: deque[Any] = deque()
        self._size = size
        self._closed = False
        self._changed = threading.Condition()

    def put(self, item: Any) -> bool:
        """Wait for room, then append ``item``; False if the channel is closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or len(self._items) < self._size)
            if self._closed:
                return False
            self._items.append(item)
            self._changed.notify_all()
            return True

    def get(self) -> Any:
        """Wait for the next item; raises ``Closed`` once the channel is closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._items)
            if self._closed:
                raise Closed
            item = self._items.popleft()
            self._changed.notify_all()
            return item

    def close(self) -> None:
        """Drop what is queued and wake every waiter (idempotent)."""
        with self._changed:
            self._closed = True
            self._items.clear()
            self._changed.notify_all()
