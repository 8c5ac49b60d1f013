"""Batch assembly for ``TokenDataset`` on a background thread, fed by one tokenize thread per source (numpy only).

Owns the producer side of a ``TokenDataset`` iterator, so that the consumer's ``next()``
is a queue pop of a finished batch. Each source has a ``feed.Feed`` (its tokenize thread
and packing buffer); the assembly thread packs each row with ``packing.BestFitPacker``
(BOS-aligned best fit, no padding) from one source's buffer -- with several sources (a
mix), the source furthest below its share of the rows packed so far (``Schedule``), so
each source's share of the tokens is its weight to within a row -- straight into the rows
buffer a *sink* lends it, has the sink turn them into the batch handed over (CPU tensors,
or a device copy started from pinned memory: ``device.py``), and puts ``(batch, Mark)`` on
a bounded queue of ``ahead`` finished batches. The ``Mark`` is the resume point right
after that batch, so the consumer can report the state of the batch it *returned*,
however far ahead we are.

Every error (stream, tokenizer, sink) reaches the consumer unchanged through the queue;
``close()`` stops and joins every thread and the tokenizers' encoding threads. Nothing
here imports torch.

Scheduling: with ``set_loader_idle(True)`` (``ThreadPlan(loader_idle=True).apply()``) the
producer threads, and the threads they start (encoding pool, the stream's reader and loop),
run under Linux ``SCHED_IDLE``: they get every CPU cycle the training thread leaves, and never
make it wait for a core. Off by default: a loader at idle priority starves on a host whose
CPUs other processes keep busy (``threads.py``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..streaming.mix import Schedule
from .feed import Feed, Part
from .packing import BufferSnapshot, PackStats
from .threads import _End, _get, _put, _Stopped, background_thread, set_loader_idle

if TYPE_CHECKING:
    from ..streaming.plan import Position

__all__ = ["BatchPipeline", "Mark", "Schedule", "Sink", "set_loader_idle"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mark:
    """The resume point right after one batch: what ``state_dict()`` reports once it is returned.

    ``parts`` is each source's resume point (one, unless a mix); ``rows`` the rows each source
    has packed in this run (a mix's schedule). With one source, ``position``, ``skip``,
    ``partial``, ``buffer``, ``stats`` and ``buffered_docs`` are its part's. ``note``: what the
    pipeline's ``note`` made of this mark on the assembly thread (None without one)."""

    parts: tuple[Part, ...]
    batches: int
    rows: tuple[int, ...] = ()
    note: Any = None

    @property
    def position(self) -> Position | None:
        return self.parts[0].position

    @property
    def skip(self) -> int:
        return self.parts[0].skip

    @property
    def partial(self) -> Position | None:
        return self.parts[0].partial

    @property
    def buffer(self) -> BufferSnapshot:
        return self.parts[0].buffer

    @property
    def stats(self) -> dict[str, int]:
        """The counters of every source together."""
        total = PackStats()
        for p in self.parts:
            for k, v in p.stats.items():
                setattr(total, k, getattr(total, k) + v)
        return total.as_dict()

    @property
    def buffered_docs(self) -> int:
        return sum(p.buffered_docs for p in self.parts)


class Sink(Protocol):
    """Where assembled rows go. ``rows`` and ``finish`` run on the assembly thread, ``ready`` on
    the consumer's; a batch is abandoned between ``rows`` and ``finish`` when the data ends."""

    def rows(self) -> np.ndarray:
        """An int64 ``(batch_size, seq_len + 1)`` array to pack the next batch into."""
        ...

    def finish(self, rows: np.ndarray) -> Any:
        """The packed ``rows`` as the object queued for the consumer."""
        ...

    def ready(self, item: Any) -> tuple[Any, Any]:
        """On the consumer's thread: the queued object as the ``(inputs, targets)`` returned."""
        ...


class BatchPipeline:
    """The producer threads of one ``TokenDataset`` iterator and the queue of finished batches.

    Takes ownership of ``feeds`` (one per source, their packers already holding the resumed
    buffers, if any) and starts their threads. ``mark`` is the resume point before the first
    batch. ``get()`` returns ``(batch, Mark)``, or None at the end of the data (the batch the
    data ended in is dropped, its documents stay buffered) or once ``limit`` batches (counting
    the resumed run's ``batches``) have been made (``limit``: a number, or a ``length.RunLimit``, known
    late and asked before each batch). With one source, at a ``Seam`` the buffer is
    drained first; only if that leaves the batch count short of ``limit`` does packing go on
    past it (the batch it ran out in is packed again, with the documents that follow). With
    several, ``schedule`` picks each row's source. ``note(mark, stop)``, if given, runs on the
    assembly thread after each batch, before it is queued; its result rides on the batch's
    ``Mark`` (``Mark.note``; an error in it reaches the consumer as any other).
    """

    def __init__(self, feeds: list[Feed], sink: Sink, *, batches: int, ahead: int, limit: Any = None,
                 schedule: Schedule | None = None, note: Callable[[Mark, threading.Event], Any] | None = None) -> None:
        if len(feeds) > 1 and schedule is None:
            raise ValueError("a pipeline of several sources needs a schedule")
        self._feeds, self._sink, self._limit, self._schedule = feeds, sink, limit, schedule
        self._note = note
        self._batches = batches
        self.mark = self._mark()
        self.wait_s = 0.0  # time the consumer blocked in get()
        self._stop = threading.Event()
        self._out: queue.Queue = queue.Queue(maxsize=ahead)
        # a mix's feeds share one encoding pool: as many encoding threads as one source would have
        self._pool = ThreadPoolExecutor(max_workers=max(f.encoding_threads() for f in feeds),
                                        thread_name_prefix="nanostream-encode") if len(feeds) > 1 else None
        for i, feed in enumerate(feeds):
            feed.start(self._stop, "nanostream-tokenize" if len(feeds) == 1 else f"nanostream-tokenize-{i}",
                       self._pool)
        self._thread = threading.Thread(target=self._assemble, name="nanostream-assemble", daemon=True)
        self._thread.start()

    def _mark(self) -> Mark:
        rows = tuple(self._schedule.taken) if self._schedule is not None else ()
        return Mark(tuple(f.part() for f in self._feeds), self._batches, rows)

    def _pack(self, rows: np.ndarray) -> bool:
        """Fill every row of ``rows``; False if a source's data ended first. The caller undoes a failure."""
        feeds, schedule = self._feeds, self._schedule
        for row in rows:
            k = schedule.next() if schedule is not None else 0
            feed = feeds[k]
            if not feed.packer.fill_row(row, feed.refill):
                return False
            if schedule is not None:
                schedule.add(k, 1)
        return True

    def _assemble(self) -> None:
        """Thread body: pack, finish and queue batches until the data ends, fails or we are stopped."""
        background_thread()
        sink, feeds = self._sink, self._feeds
        try:
            for f in feeds:  # a resumed feed's buffer first
                f.prime()
            while not self._stop.is_set():
                if not self._allows():
                    _put(self._out, self._stop, _End())
                    return
                rows = sink.rows()
                saved = [f.begin() for f in feeds]
                taken = list(self._schedule.taken) if self._schedule is not None else []
                try:
                    finished = not self._pack(rows)
                except BaseException:
                    self._undo(saved, taken)
                    raise
                if finished:  # the data ended inside this batch: drop it, keep its documents buffered
                    self._undo(saved, taken)
                    seam, feeds[0].seam = feeds[0].seam, None
                    if len(feeds) == 1 and seam is not None and self._limit is not None and self._allows():
                        feeds[0].go.set()  # short of the limit: pack this batch again, reading on
                        continue
                    _put(self._out, self._stop, _End())
                    return
                for f in feeds:
                    f.packer.commit()
                self._batches += 1
                mark = self._mark()
                if self._note is not None:
                    mark = replace(mark, note=self._note(mark, self._stop))
                if not _put(self._out, self._stop, (sink.finish(rows), mark)):
                    return
        except _Stopped:
            return
        except Exception as exc:  # noqa: BLE001  (raised in the consumer's next(), unchanged)
            _put(self._out, self._stop, _End(exc))

    def _allows(self) -> bool:
        """May one more batch be made (``limit``: a number, or a ``length.RunLimit`` that may wait to tell)?"""
        limit = self._limit
        if limit is None:
            return True
        if isinstance(limit, int):
            return self._batches < limit
        return limit.allows(self._batches, self._stop)

    def _undo(self, saved: list, taken: list[int]) -> None:
        for f, s in zip(self._feeds, saved, strict=True):
            f.rollback(s)
        if self._schedule is not None:
            self._schedule.taken = taken

    def get(self) -> tuple[Any, Mark] | None:
        """The next finished batch and its Mark; None at the end; raises the producers' error."""
        t0 = time.perf_counter()
        try:
            item = _get(self._out, self._stop, self._thread, "batch assembly")
        except _Stopped:
            return None
        finally:
            self.wait_s += time.perf_counter() - t0
        if isinstance(item, _End):
            if item.error is not None:
                raise item.error
            return None
        return item

    def close(self) -> None:
        """Stop and join every thread (idempotent; safe from any thread, including our own)."""
        self._stop.set()
        for f in self._feeds:
            f.go.set()
        me = threading.current_thread()
        for thread in (self._thread, *(f.thread for f in self._feeds)):
            if thread is not None and thread is not me:
                thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
