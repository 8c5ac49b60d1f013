"""The loader's threads and cores: how a host's cores are split (``threads_for``), the producer threads'
scheduling policy (``set_loader_idle``: Linux ``SCHED_IDLE``), ``Channel``, the bounded hand-over
between two threads that ``close()`` ends, and ``Receiver``, the consumer's iterator over one."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..text.tokenizer import usable_cpus

if TYPE_CHECKING:
    import torch

__all__ = ["ThreadPlan", "threads_for"]

log = logging.getLogger(__name__)
_loader_idle = False


@dataclass(frozen=True)
class ThreadPlan:
    """How to split the cores: ``torch`` intra-op threads and ``loader`` threads (the stream's reader, the
    tokenizer's encoding threads, pyarrow's decode pool); pass ``loader`` as the tokenizer's ``num_threads``."""

    device: str
    cores: int
    torch: int
    loader: int
    loader_idle: bool = False

    def apply(self) -> None:
        """Set torch's intra-op pool, pyarrow's CPU pool and the loader threads' priority to this plan."""
        import pyarrow
        import torch

        torch.set_num_threads(self.torch)
        pyarrow.set_cpu_count(self.loader)
        set_loader_idle(self.loader_idle)


def threads_for(device: str | torch.device = "cpu", torch_threads: int = 0, cores: int = 0,
                loader_idle: bool = False) -> ThreadPlan:
    """The thread split for training on ``device`` with ``cores`` cores (0: this process's): on CPU the loader
    gets one core, on CUDA torch gets 1 (2 from 8 cores), the other the rest. ``torch_threads`` > 0 overrides
    torch's share."""
    import torch  # imported here: the assembly thread's modules (``pipeline.py``) never import torch

    dev = torch.device(device)
    n = cores if cores > 0 else usable_cpus()
    if dev.type == "cpu":
        loader = 1
        torch_n = max(1, n - loader)
    else:
        torch_n = 2 if n >= 8 else 1
        loader = max(1, n - torch_n)
    return ThreadPlan(dev.type, n, torch_threads if torch_threads > 0 else torch_n, loader, loader_idle)


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


class Channel:
    """A bounded queue between two threads; ``close()`` wakes every waiter at once (no polling). A producer's last
    item is the exception the consumer's ``next()`` raises: ``StopIteration()`` when the data finished."""

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
        """Wait for the next item; a ``StopIteration()`` once the channel is closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._items)
            if self._closed:
                return StopIteration()
            item = self._items.popleft()
            self._changed.notify_all()
            return item

    def close(self) -> None:
        """Drop what is queued and wake every waiter (idempotent)."""
        with self._changed:
            self._closed = True
            self._items.clear()
            self._changed.notify_all()


class Receiver:
    """The consumer's side of a producer thread: ``next()`` takes its items (``wait_s``: the time it blocked) until
    an exception, which it raises; ``close()`` stops and joins the thread. Subclasses say what an item becomes
    (``_received``) and start ``self._thread``."""

    _thread: threading.Thread
    _received: Callable[[Any], Any]

    def __init__(self, size: int) -> None:
        self._out = Channel(size)
        self._closed = False
        self.wait_s = 0.0

    def __iter__(self) -> Receiver:
        return self

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        t0 = time.perf_counter()
        try:
            item = self._out.get()
        except BaseException:
            self.close()
            raise
        finally:
            self.wait_s += time.perf_counter() - t0
        if isinstance(item, BaseException):  # the end of the data (StopIteration) or the producer's error
            self.close()
            raise item
        return self._received(item)

    def close(self) -> None:
        """Close the channel (waking the producer) and join its thread, unless this runs on it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._out.close()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __del__(self) -> None:
        if hasattr(self, "_thread"):
            self.close()
