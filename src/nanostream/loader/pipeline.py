"""A ``TokenDataset`` iterator's producer: one assembly thread that packs finished batches ahead (numpy only).

The assembly thread owns everything that makes batches: each source's ``feed.Feed`` (its stream and
its packer), the encoding threads they share, and the sink that turns packed rows into the batch
handed over (CPU tensors, or a device copy: ``device.py``). It packs each row best-fit from one
source (a mix: ``Schedule`` picks the source furthest below its share) and puts ``(batch, Mark)`` on
a ``Channel`` of ``batches`` finished batches, so the consumer's ``next()`` is a hand-over. Every error
reaches the consumer unchanged; ``close()`` wakes every wait and joins every thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from ..streaming.streams import Schedule
from .feed import Feed, Part
from .packing import PackStats
from .threads import Channel, Closed, End, background_thread


@dataclass(frozen=True)
class Mark:
    """The resume point right after one batch: each source's ``Part``, the batches made, the rows each source
    has packed (a mix's schedule), and what the pipeline's ``note`` made of it (None without one)."""

    parts: tuple[Part, ...]
    batches: int
    rows: tuple[int, ...] = ()
    note: Any = None

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
    """Where assembled rows go: ``rows`` and ``finish`` run on the assembly thread, ``ready`` on the consumer's."""

    def rows(self) -> np.ndarray:
        """An int64 ``(batch_size, seq_len + 1)`` array to pack the next batch into."""
        ...

    def finish(self, rows: np.ndarray) -> Any:
        """The packed ``rows`` as the object handed to the consumer."""
        ...

    def ready(self, item: Any) -> tuple[Any, Any]:
        """On the consumer's thread: the handed object as the ``(inputs, targets)`` returned."""
        ...


class BatchPipeline:
    """The assembly thread of one iterator and its channel of finished batches.

    ``get()`` returns ``(batch, Mark)``, or None at the end: the data ended (the batch it ended in is
    dropped, its documents stay buffered) or ``limit`` said no more (a ``length.RunLimit``). With one
    source, at a ``Seam`` the buffer is drained first, and packing reads on past it only while the
    limit allows more. ``note(mark, stopping)`` runs on the assembly thread after each batch; its result rides on
    the batch's ``Mark``.
    """

    def __init__(self, feeds: list[Feed], sink: Sink, *, batches: int, ahead: int, limit: Any = None,
                 schedule: Schedule | None = None, note: Callable[[Mark, threading.Event], Any] | None = None) -> None:
        self._feeds, self._sink, self._limit, self._schedule = feeds, sink, limit, schedule
        self._note = note
        self._batches = batches
        self.mark = self._mark()
        self.wait_s = 0.0  # time the consumer blocked in get()
        self.stopping = threading.Event()
        self._out = Channel(ahead)
        self._thread = threading.Thread(target=self._assemble, name="nanostream-assemble", daemon=True)
        self._thread.start()

    def _mark(self) -> Mark:
        rows = tuple(self._schedule.taken) if self._schedule is not None else ()
        return Mark(tuple(f.part() for f in self._feeds), self._batches, rows)

    def _assemble(self) -> None:
        """Thread body: pack, finish and hand over batches until the data ends, fails or we are stopped."""
        background_thread()  # before the stream and encoding threads start: they inherit it
        pool = ThreadPoolExecutor(max_workers=max(f.threads for f in self._feeds),
                                  thread_name_prefix="nanostream-encode")
        try:
            for f in self._feeds:
                f.start(pool)
            while not self.stopping.is_set():
                item = self._next()
                if not self._out.put(item) or isinstance(item, End):
                    return
        except BaseException as exc:  # noqa: BLE001  (raised in the consumer's next(), unchanged)
            if not self.stopping.is_set():
                self._out.put(End(exc))
        finally:
            for f in self._feeds:
                f.close()
            pool.shutdown(wait=True, cancel_futures=True)

    def _next(self) -> tuple[Any, Mark] | End:
        """The next finished batch and its Mark, or End."""
        sink, feeds, schedule = self._sink, self._feeds, self._schedule
        while True:
            if self._limit is not None and not self._limit.allows(self._batches):
                return End()
            rows = sink.rows()
            saved = [f.begin() for f in feeds]
            taken = list(schedule.taken) if schedule is not None else []
            try:
                full = self._pack(rows)
            except BaseException:
                self._undo(saved, taken)
                raise
            if full:
                break
            self._undo(saved, taken)  # the data ended inside this batch: drop it, keep its documents buffered
            if not (len(feeds) == 1 and feeds[0].at_seam and self._limit is not None):
                return End()
            feeds[0].pass_seam()  # pack this batch again, reading on (if the limit allows it)
        for f in feeds:
            f.packer.commit()
        self._batches += 1
        mark = self._mark()
        if self._note is not None:
            mark = replace(mark, note=self._note(mark, self.stopping))
        return sink.finish(rows), mark

    def _pack(self, rows: np.ndarray) -> bool:
        """Fill every row of ``rows``; False if a source's data ended first (the caller undoes it)."""
        feeds, schedule = self._feeds, self._schedule
        for row in rows:
            k = schedule.next() if schedule is not None else 0
            if not feeds[k].packer.fill_row(row, feeds[k].refill):
                return False
            if schedule is not None:
                schedule.add(k, 1)
        return True

    def _undo(self, saved: list, taken: list[int]) -> None:
        for f, s in zip(self._feeds, saved, strict=True):
            f.rollback(s)
        if self._schedule is not None:
            self._schedule.taken = taken

    def get(self) -> tuple[Any, Mark] | None:
        """The next finished batch and its Mark; None at the end; raises the producer's error."""
        t0 = time.perf_counter()
        try:
            item = self._out.get()
        except Closed:
            return None
        finally:
            self.wait_s += time.perf_counter() - t0
        if isinstance(item, End):
            self._out.close()
            if item.error is not None:
                raise item.error
            return None
        return item

    def close(self) -> None:
        """Stop and join the assembly thread, which closes the streams and encoding threads (idempotent)."""
        self.stopping.set()
        self._out.close()
        if self._limit is not None:
            self._limit.interrupt()
        if threading.current_thread() is not self._thread:
            self._thread.join()
