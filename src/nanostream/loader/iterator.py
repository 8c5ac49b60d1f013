"""One pass of a ``TokenDataset``: its iterator, the CPU sink, and the resume snapshots it hands out.

``TokenIterator`` builds one ``feed.Feed`` per source (its buffer from an exact resume state, or from
the documents an elastic resume carries over; its stream from the right place), starts a
``pipeline.BatchPipeline`` and pops finished batches. A ``Snapshot`` is the resume point after the
last batch returned, materialized by ``state_dict()`` (``resume.py``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..streaming.order import Cursor
from ..streaming.plan import Position
from ..streaming.single import Stream
from ..streaming.streams import BatchIterator, Schedule
from . import resume
from .docrefs import unpack
from .feed import Feed, Seam, replay_keys
from .packing import BestFitPacker, PackStats, token_dtype
from .pipeline import BatchPipeline, Mark, Sink

log = logging.getLogger(__name__)
Layout = tuple[int, int, int]  # (reader, readers, readers per node), DataLoader workers folded in


class Reader:
    """Who an iterator reads as: its dataset, layout and origins, and the streams (never started) that global
    cursors are computed with, made on first use (shared by the iterator and its snapshots)."""

    def __init__(self, ds: Any, layout: Layout, origins: tuple[Cursor | None, ...]) -> None:
        self.ds, self.layout, self.origins = ds, layout, origins
        self._streams: dict[int, Stream] = {}

    def cursor_stream(self, k: int) -> Stream:
        if k not in self._streams:
            self._streams[k] = self.ds._stream(k, self.layout, self.origins[k])
        return self._streams[k]


class Snapshot:
    """A TokenDataset iterator's resume state at one batch boundary, not yet turned into plain values."""

    def __init__(self, reader: Reader, mark: Mark) -> None:
        self._reader, self.mark = reader, mark

    @property
    def batches(self) -> int:
        return self.mark.batches

    def state_dict(self) -> dict[str, Any]:
        """The resume state (plain values: ``json.dump`` writes it)."""
        it, mark = self._reader, self.mark
        ds = it.ds
        prints = ds._prints.get()
        subs = [resume.encode(part, config=ds._config(), fingerprint=prints[k], layout=it.layout,
                              batches=mark.batches, cursor=resume.global_cursor(it.cursor_stream(k), part),
                              origin=it.origins[k])
                for k, part in enumerate(mark.parts)]
        if ds.weights is None:
            return subs[0]
        return resume.encode_mix(subs, config=ds._config(), layout=it.layout, batches=mark.batches,
                                 weights=ds.weights, rows=mark.rows)

    def stats(self) -> dict[str, Any]:
        st = PackStats(**self.mark.stats)
        out = {**st.as_dict(), "crop_fraction": st.crop_fraction, "batches": self.mark.batches,
               "buffered_docs": self.mark.buffered_docs}
        ds = self._reader.ds
        if ds.weights is not None:
            tokens = [p.stats["tokens_out"] for p in self.mark.parts]
            out["sources"] = [{"source": s.label, "weight": w, "tokens": n, "share": n / max(sum(tokens), 1),
                               "rows": rows}
                              for s, w, n, rows in zip(ds.sources, ds.weights, tokens, self.mark.rows, strict=True)]
        return out


class HostSink:
    """The CPU sink: rows packed into one reused array, handed over as fresh tensors (the caller may keep them)."""

    def __init__(self, batch_size: int, row_len: int) -> None:
        self._rows = np.empty((batch_size, row_len), dtype=np.int64)

    def rows(self) -> np.ndarray:
        return self._rows

    def finish(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())

    def ready(self, item: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return item


def _reader(ds: Any, k: int, layout: Layout, start: Position | Cursor | None, epochs: int | None = None,
            replay: tuple[tuple[int, int], ...] = ()) -> Iterator[Any]:
    """Source ``k``'s batches for this reader, from ``start``; its stream is closed however this ends."""
    it = BatchIterator(ds._stream(k, layout, start, epochs, replay))
    try:
        yield from it
    finally:
        it.close()


def _single_source(ds: Any, layout: Layout, start: Position | Cursor | None, partial: Position | None,
                   replay: tuple[tuple[int, int], ...] = ()) -> Iterator[Any]:
    """One source's batches for a run: its epochs, a ``Seam``, then the next epochs' order (which only a
    reader whose data ran short reads on into); the first stream reads the ``replay`` row groups first."""
    epochs, at = ds.epochs, start
    if epochs is None:
        yield from _reader(ds, 0, layout, at, replay=replay)
        return
    if at is None or at.epoch < epochs:
        if partial is None or partial.epoch < epochs:  # else stopped past the run's epochs: the Seam was passed
            yield from _reader(ds, 0, layout, at, epochs=epochs, replay=replay)
            replay = ()
            yield Seam()
        at = Cursor(epochs, shards=len(ds._stream(0, (0, 1, 1)).plan.shards))
    yield from _reader(ds, 0, layout, at, replay=replay)


class TokenIterator:
    """One pass of a TokenDataset: the consumer's side of its ``BatchPipeline``.

    ``state`` is an exact resume state of this layout, or None; ``origins`` each source's cursor the run
    started from (None: epoch 0); ``carried`` each source's old states whose buffered documents an elastic
    resume carries over; ``limit`` the batches this reader makes in the run (None: until the data ends);
    ``last`` where ``close()`` leaves the final snapshot; ``note(snapshot, stopping)`` runs on the assembly
    thread after each batch."""

    def __init__(self, ds: Any, layout: Layout, state: dict[str, Any] | None,
                 origins: tuple[Cursor | None, ...], limit: Any, last: dict[str, Any],
                 sink: Sink | None = None, carried: tuple[tuple[dict[str, Any], ...], ...] = (),
                 note: Callable[[Snapshot, threading.Event], Any] | None = None) -> None:
        self._last, self.layout = last, layout
        self._reader = Reader(ds, layout, origins)
        self._held: Snapshot | None = None
        self._closed = False
        k = len(ds.sources)
        subs = (state["sources"] if k > 1 else [state]) if state is not None else [None] * k
        dtype = token_dtype(ds.tokenizer.vocab_size)
        feeds = []
        for i, sub in enumerate(subs):
            if sub is not None:  # exact: this reader's own buffer and counters
                runs, stats = unpack(sub["docs"]), PackStats(**sub["stats"])
                position, skip = resume.pos_from(sub["position"]), int(sub["skip"])
            else:  # an elastic resume: the old readers' buffered documents (counted as new ones)
                runs = [r for old in (carried[i] if carried else ()) for r in resume.carried_runs(old)]
                stats, position, skip = None, None, 0
            partial = resume.pos_from(sub["partial"]) if skip else None
            start = position if position is not None else origins[i]
            replay = replay_keys(runs)  # the row groups of the buffered documents, read again first
            source = (functools.partial(_single_source, ds, layout, start, partial, replay) if k == 1
                      else functools.partial(_reader, ds, i, layout, start, replay=replay))
            feeds.append(Feed(source, ds.tokenizer, dtype, BestFitPacker(ds.buffer_docs),
                              ahead=ds.read_ahead.tokenized, position=position, skip=skip, partial=partial,
                              restore=runs, stats=stats))
        schedule = None
        if ds.weights is not None:
            rows = tuple(state["mix"]["rows"]) if state is not None else None
            if rows is not None and tuple(state["mix"]["weights"]) != ds.weights:
                log.info("TokenDataset: the mix's weights changed since the state was saved: the new shares "
                         "count from here")
                rows = None
            schedule = Schedule(ds.weights, rows)
        self._sink = sink if sink is not None else HostSink(ds.batch_size, ds.seq_len + 1)
        noted, reader = None, self._reader
        if note is not None:
            def noted(mark: Mark, stopping: threading.Event) -> Any:
                return note(Snapshot(reader, mark), stopping)
        self._pipe = BatchPipeline(feeds, self._sink, batches=int(state["batches"]) if state is not None else 0,
                                   ahead=ds.read_ahead.batches, limit=limit, schedule=schedule, note=noted)
        self._mark = self._pipe.mark

    def __iter__(self) -> TokenIterator:
        return self

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        try:
            item = self._pipe.get()
        except BaseException:
            self.close()
            raise
        if item is None:  # the data ended (its last, partial batch is dropped; documents stay buffered)
            self.close()
            raise StopIteration
        batch, self._mark = item
        return self._sink.ready(batch)

    @property
    def batches(self) -> int:
        """Batches returned so far (counting those of the run this one resumed)."""
        return self._mark.batches

    @property
    def note(self) -> Any:
        """What ``note`` made of the state after the last batch returned (None before the first)."""
        return self._mark.note

    @property
    def wait_s(self) -> float:
        """Time the consumer blocked in ``next()`` waiting for a finished batch."""
        return self._pipe.wait_s

    def snapshot(self) -> Snapshot:
        """The state after the last batch returned, cheaply (``.state_dict()`` materializes it)."""
        return Snapshot(self._reader, self._mark)

    def hold(self, snap: Snapshot | None) -> None:
        """Report ``snap`` from ``state_dict()`` until ``hold(None)``: for a consumer that reads batches ahead
        (``device.CudaPrefetcher``), so the state matches what the training loop has received."""
        self._held = snap

    def state_dict(self) -> dict[str, Any]:
        return (self._held or self.snapshot()).state_dict()

    def stats(self) -> dict[str, Any]:
        return {**(self._held or self.snapshot()).stats(), "wait_s": self.wait_s}

    def close(self) -> None:
        """Stop and join the producer threads (idempotent; also run when the iterator is dropped)."""
        if self._closed:
            return
        self._stop()
        st = self.stats()
        log.debug("TokenDataset reader %s: %d batches, %d docs, %.2f%% of tokens cropped, waited %.2fs",
                  self.layout[:2], st["batches"], st["docs_used"], 100 * st["crop_fraction"], self.wait_s)

    def _stop(self) -> None:
        """Join the threads and leave the final snapshot to the dataset (the state is made only if asked for)."""
        self._closed = True
        self._pipe.close()
        self._last.update(snapshot=self._held or self.snapshot(), wait_s=self.wait_s)

    def __del__(self) -> None:
        # may run at interpreter exit, when imports and footer reads fail: only stop the threads
        if hasattr(self, "_pipe") and not self._closed:
            self._stop()
