"""One pass of a ``TokenDataset``: ``TokenIterator`` and its ``Assembly`` thread, which packs each row from one
source's feed (a mix: the source furthest below its share) and hands finished batches over a ``Channel`` of
``ReadAhead.batches``, so that ``next()`` is a hand-over (numpy only); ``RunLimit``, how many it makes."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from ..concurrency import LoopThread
from ..streaming.epoch import Tally
from ..streaming.order import Cursor
from ..streaming.streams import Schedule
from .feed import Feed, single_source, source_batches
from .packing import BestFitPacker, token_dtype
from .resume import Layout, Mark, Part, Reader
from .threads import Channel, Receiver, background_thread

log = logging.getLogger(__name__)


class Assembly:
    """The assembly thread's side of a ``TokenIterator`` (apart, so that dropping the iterator stops the thread)."""

    def __init__(self, feeds: list[Feed], sink: Any, out: Channel, schedule: Schedule | None, limit: Any,
                 reader: Reader, note: Callable[[Mark, threading.Event], Any] | None, batches: int) -> None:
        self.feeds, self.sink, self.out, self.schedule, self.limit = feeds, sink, out, schedule, limit
        self.reader, self.note, self.batches = reader, note, batches
        self.stopping = threading.Event()

    def mark(self) -> Mark:
        rows = tuple(self.schedule.taken) if self.schedule is not None else ()
        return Mark(self.reader, tuple(f.part() for f in self.feeds), self.batches, rows)

    def run(self) -> None:
        """Thread body: pack, finish and hand over batches until the data ends, fails or we are stopped."""
        background_thread()  # before the stream and encoding threads start: they inherit it
        pool = ThreadPoolExecutor(max_workers=max(f.threads for f in self.feeds),
                                  thread_name_prefix="nanostream-encode")
        loop = LoopThread("nanostream-loop")  # every source's stream, one after another
        try:
            for f in self.feeds:
                f.start(pool, loop)
            self.last = self.mark()  # where an unfinished batch goes back to
            while not self.stopping.is_set():
                item = self._next_batch()
                if not self.out.put(item) or isinstance(item, StopIteration):
                    return
        except BaseException as exc:  # noqa: BLE001  (raised in the consumer's next(), unchanged)
            if not self.stopping.is_set():
                self.out.put(exc)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # drop the queued encodings before the streams close
            for f in self.feeds:
                f.close()
            pool.shutdown(wait=True)
            loop.close()

    def _next_batch(self) -> tuple[Any, Mark] | StopIteration:
        """The next finished batch and its Mark, or ``StopIteration()``. The batch the data ends in is dropped (its
        documents stay buffered); with one source, at the ``SEAM`` it is packed again reading on, if the limit allows."""
        feeds = self.feeds
        while True:
            if self.limit is not None and not self.limit.allows(self.batches):
                return StopIteration()
            rows = self.sink.rows()
            if self._pack(rows):
                break
            self._undo()
            if not (len(feeds) == 1 and feeds[0].at_seam and self.limit is not None):
                return StopIteration()
            feeds[0].at_seam = False
        for f in feeds:
            f.packer.compact()
        self.batches += 1
        self.last = mark = self.mark()
        if self.note is not None:
            mark = replace(mark, note=self.note(mark, self.stopping))
        return self.sink.finish(rows), mark

    def _pack(self, rows: np.ndarray) -> bool:
        """Fill every row of ``rows``; False if a source's data ended first (the caller undoes it)."""
        feeds, schedule = self.feeds, self.schedule
        for row in rows:
            k = schedule.next() if schedule is not None else 0
            if not feeds[k].packer.fill_row(row, feeds[k].refill):
                return False
            if schedule is not None:
                schedule.add(k, 1)
        return True

    def _undo(self) -> None:
        """Go back to the last batch's mark."""
        for f, part in zip(self.feeds, self.last.parts, strict=True):
            f.restore(part)
        if self.schedule is not None:
            self.schedule.taken = list(self.last.rows)


class TokenIterator(Receiver):
    """One pass of a TokenDataset: the consumer's side of its ``Assembly``. ``state``, ``origins``, ``parts``:
    ``resume.plan``'s; ``limit``: a ``RunLimit`` or None; ``last``: where ``close()`` leaves the final
    mark; ``note(mark, stopping)`` runs on the assembly thread after each batch, its result on the ``Mark``."""

    def __init__(self, ds: Any, layout: Layout, state: dict[str, Any] | None, origins: tuple[Cursor | None, ...],
                 parts: tuple[Part, ...], limit: Any, last: dict[str, Any], sink: Any,
                 note: Callable[[Mark, threading.Event], Any] | None = None) -> None:
        super().__init__(ds.read_ahead.batches)
        self._last, self._sink, self._limit = last, sink, limit
        self._held: Mark | None = None
        feeds = [_feed(ds, i, part, layout, origins[i], elastic=state is None) for i, part in enumerate(parts)]
        schedule = None
        if ds.weights is not None:
            rows = tuple(state["mix"]["rows"]) if state is not None else None
            if rows is not None and tuple(state["mix"]["weights"]) != ds.weights:
                log.info("TokenDataset: the mix's weights changed since the state was saved: the new shares "
                         "count from here")
                rows = None
            schedule = Schedule(ds.weights, rows)
        batches = int(state["batches"]) if state is not None else 0
        self._assembly = Assembly(feeds, sink, self._out, schedule, limit, Reader(ds, layout, origins), note, batches)
        self._mark = self._assembly.mark()
        self._thread = threading.Thread(target=self._assembly.run, name="nanostream-assemble", daemon=True)
        self._thread.start()

    # -- the consumer --------------------------------------------------------------------------
    def _received(self, item: tuple[Any, Mark]) -> Any:
        batch, self._mark = item
        return self._sink.ready(batch)

    def snapshot(self) -> Mark:
        """The state after the last batch returned, cheaply (``.state_dict()`` materializes it; ``.batches``: the
        batches returned so far, those of the resumed run too; ``.note``: what ``note`` made of it)."""
        return self._mark

    def hold(self, snap: Mark | None) -> None:
        """Report ``snap`` from ``state_dict()`` until ``hold(None)`` (``device.CudaPrefetcher`` reads ahead)."""
        self._held = snap

    def state_dict(self) -> dict[str, Any]:
        return (self._held or self.snapshot()).state_dict()

    def stats(self) -> dict[str, Any]:
        return {**(self._held or self.snapshot()).stats(), "wait_s": self.wait_s}

    def close(self) -> None:
        """Stop and join the assembly thread, which closes the streams and encoding threads (idempotent)."""
        if not self._closed:
            self._assembly.stopping.set()
            if self._limit is not None:
                self._limit.interrupt()
            super().close()
            self._last.update(snapshot=self._held or self.snapshot(), wait_s=self.wait_s)


def _feed(ds: Any, i: int, start: Part, layout: Layout, origin: Cursor | None, elastic: bool) -> Feed:
    """Source ``i``'s feed, from ``start``; its stream reads the row groups of the buffered documents first."""
    at = start.position if start.position is not None else origin
    replay = tuple(sorted({(r.tag[1], r.tag[2]) for r in start.runs}))  # (shard, row group), read first
    source = (functools.partial(single_source, ds, layout, at, start.partial, replay) if len(ds.sources) == 1
              else functools.partial(source_batches, ds, i, layout, at, replay=replay))
    return Feed(source, ds.tokenizer, token_dtype(ds.tokenizer.vocab_size), BestFitPacker(ds.buffer_docs),
                ahead=ds.read_ahead.tokenized, start=start, elastic=elastic)


class RunLimit:
    """The batches one iterator (a DataLoader worker's share of its rank's) makes, known at once below a lower
    bound from the row-group counts known so far."""

    def __init__(self, ds: Any, origins: tuple[Cursor | None, ...], worker: int, workers: int) -> None:
        self.ds, self.origins, self.worker, self.workers = ds, origins, worker, workers
        self.value: int | None = None
        self._bound = 0
        self._tallies: dict[tuple[int, int], Tally] = {}  # (source, 0: the origin's epoch | 1: a later one)
        self._runner: LoopThread | None = None
        self._interrupted = False

    def _share(self, total: int) -> int:
        return total // self.workers + (self.worker < total % self.workers)

    def _length(self, k: int, epoch: int, origin: Cursor | None) -> int:
        first = origin.epoch if origin is not None else 0
        key = (k, int(epoch != first))
        if key not in self._tallies:
            s = self.ds._stream(k, None, origin)
            self._tallies[key] = Tally(s.epoch_deal(epoch), s.book)
        return self._tallies[key].length_lower()

    def allows(self, batches: int) -> bool:
        """May batch number ``batches + 1`` be made? At once below the bound; past it, after learning every
        count (``interrupt()`` from another thread ends that wait: ``CancelledError``)."""
        if self.value is None and batches >= self._bound:
            self._bound = self._share(self.ds._total_batches(self.origins, self._length))
            if batches >= self._bound:
                self._runner = runner = LoopThread("nanostream-count")
                if self._interrupted:  # before the runner was there: it runs nothing
                    runner.close()
                try:
                    for k, origin in enumerate(self.origins):
                        runner.run(self.ds._stream(k, None, origin).prepare())
                finally:
                    runner.close()
                self.value = self._share(self.ds._total_batches(self.origins))
        return self.value is None or batches < self.value

    def interrupt(self) -> None:
        """Cancel a count being learned (on another thread) and any later one."""
        self._interrupted = True
        if self._runner is not None:
            self._runner.close()
