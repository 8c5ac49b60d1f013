"""The loader's thread plumbing: stop-aware queue hand-overs, end markers, and the threads' scheduling policy.

Shared by the pipeline's threads (``feed.py``: tokenize; ``pipeline.py``: assembly) and the
CUDA prefetcher (``device.py``). Every blocking put/get looks at a stop event every
``POLL_S`` seconds, so ``close()`` from any thread ends every wait. With
``set_loader_idle(True)`` (``ThreadPlan(loader_idle=True).apply()``) the producer threads,
and the threads they start, run under Linux ``SCHED_IDLE``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

from ..errors import LoaderError

log = logging.getLogger(__name__)
_loader_idle = False
POLL_S = 0.05  # how often a blocked thread looks at its stop flag


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


class _End:
    """Queue marker: the data finished (``error`` None) or failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class _Stopped(Exception):
    """Raised inside the assembly thread when ``close()`` asked it to stop."""


def _put(q: queue.Queue, stop: threading.Event, item: object) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event, producer: threading.Thread, what: str) -> Any:
    """The next item of ``q``; raises ``_Stopped`` on stop, LoaderError if ``producer`` died silently."""
    try:
        return q.get_nowait()  # the common case when producers are ahead: no timed wait
    except queue.Empty:
        pass
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            if not producer.is_alive() and q.empty():
                raise LoaderError(f"the {what} thread stopped without a result") from None
