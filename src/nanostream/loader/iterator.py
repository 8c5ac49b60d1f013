"""One pass of a ``TokenDataset``: its iterator, the CPU sink, and the resume snapshots it hands out.

``TokenIterator`` is the consumer's side of a ``pipeline.BatchPipeline``: it builds one
``feed.Feed`` per source -- its packer refilled from an exact resume state, or from the
documents an elastic resume carries over, and its stream from the right place -- and
pops finished batches. A ``Snapshot`` is the resume point after the last batch returned
(a ``pipeline.Mark`` and what turning it into a state needs, never the iterator itself):
cheap to take, materialized by ``state_dict()`` (``resume.py``: the global cursors need
the row-group counts). ``Recipe`` is what the dataset hands the iterator.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..sources.spec import Source
from ..streaming.blocking import BatchIterator
from ..streaming.cursor import Cursor
from ..streaming.mix import Schedule
from ..streaming.plan import Options, Position
from ..streaming.ranks import Ranks
from ..streaming.single import Stream, open_stream
from ..text.tokenizer import Tokenizer
from . import resume
from .feed import Feed, Seam, replay_keys
from .packing import BestFitPacker, PackStats, token_dtype
from .pipeline import BatchPipeline, Mark, Sink

log = logging.getLogger(__name__)
Layout = tuple[int, int, int]  # (reader, readers, readers per node), DataLoader workers folded in


@dataclass(frozen=True)
class Recipe:
    """What every iterator of a dataset is made from: the split, tokenizer, sizes, and per source the
    ``stream()`` arguments (``source=`` and the common ones; ``epochs`` is the run's, the streams never
    end by themselves); ``weights`` is a mix's, normalized (None for one source)."""

    split: str
    tokenizer: Tokenizer
    batch_size: int
    seq_len: int
    buffer_docs: int
    prefetch: int
    ahead: int
    epochs: int | None
    config: dict[str, Any]
    sources: tuple[Source, ...]
    options: Options
    settings: Config
    weights: tuple[float, ...] | None = None
    labels: tuple[str, ...] = ()
    fingerprints: Any = None  # resume.Fingerprints: per source, its data's and the tokenizer's

    def stream(self, k: int, layout: Layout, start: Position | Cursor | None = None, epochs: int | None = None,
               replay: tuple[tuple[int, int], ...] = ()) -> Stream:
        """Source ``k``'s stream for reader ``layout`` (never started), from ``start``, reading ``replay`` first."""
        ranks = Ranks(*layout, drop_last=self.options.ranks.drop_last).resolved()
        options = replace(self.options, ranks=ranks, epochs=epochs, replay=replay)
        return open_stream(self.sources[k], options, self.settings, start)


class Cursors:
    """Each source's stream (never started) that global cursors are computed with, made on first use
    and shared by an iterator and its snapshots."""

    def __init__(self, recipe: Recipe, layout: Layout, origins: tuple[Cursor | None, ...]) -> None:
        self._recipe, self._layout, self._origins = recipe, layout, origins
        self._streams: dict[int, Stream] = {}

    def stream(self, k: int) -> Stream:
        if k not in self._streams:
            self._streams[k] = self._recipe.stream(k, self._layout, self._origins[k])
        return self._streams[k]


class Snapshot:
    """A TokenDataset iterator's resume state at one batch boundary, not yet turned into tensors."""

    def __init__(self, cursors: Cursors, mark: Mark, recipe: Recipe, layout: Layout,
                 origins: tuple[Cursor | None, ...]) -> None:
        self._cursors, self.mark, self._recipe, self._layout, self._origins = cursors, mark, recipe, layout, origins

    @property
    def batches(self) -> int:
        return self.mark.batches

    def state_dict(self) -> dict[str, Any]:
        """The resume state (plain values: ``json.dump`` writes it)."""
        mark, recipe = self.mark, self._recipe
        prints = recipe.fingerprints.get()
        subs = [resume.encode(part, config=recipe.config, fingerprint=prints[k], layout=self._layout,
                              batches=mark.batches, cursor=resume.global_cursor(self._cursors.stream(k), part),
                              origin=self._origins[k])
                for k, part in enumerate(mark.parts)]
        if recipe.weights is None:
            return subs[0]
        return resume.encode_mix(subs, config=recipe.config, layout=self._layout, batches=mark.batches,
                                 weights=recipe.weights, rows=mark.rows)

    def stats(self) -> dict[str, Any]:
        st = PackStats(**self.mark.stats)
        out = {**st.as_dict(), "crop_fraction": st.crop_fraction, "batches": self.mark.batches,
               "buffered_docs": self.mark.buffered_docs}
        if self._recipe.weights is not None:
            tokens = [p.stats["tokens_out"] for p in self.mark.parts]
            out["sources"] = [{"source": label, "weight": w, "tokens": n, "share": n / max(sum(tokens), 1),
                               "rows": rows}
                              for label, w, n, rows in zip(self._recipe.labels, self._recipe.weights, tokens,
                                                           self.mark.rows, strict=True)]
        return out


class HostSink:
    """The CPU sink: rows packed into one reused scratch array, handed over as fresh tensors
    (the caller may keep every batch)."""

    def __init__(self, batch_size: int, row_len: int) -> None:
        self._rows = np.empty((batch_size, row_len), dtype=np.int64)

    def rows(self) -> np.ndarray:
        return self._rows

    def finish(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())

    def ready(self, item: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return item


def _reader(recipe: Recipe, k: int, layout: Layout, start: Position | Cursor | None, epochs: int | None = None,
            replay: tuple[tuple[int, int], ...] = ()) -> Iterator[Any]:
    """Source ``k``'s batches for this reader, from ``start``; its stream is closed however this ends."""
    it = BatchIterator(recipe.stream(k, layout, start, epochs, replay))
    try:
        yield from it
    finally:
        it.close()


def _single_source(recipe: Recipe, layout: Layout, start: Position | Cursor | None,
                   partial: Position | None, replay: tuple[tuple[int, int], ...] = ()) -> Iterator[Any]:
    """One source's batches for a run: its epochs, then (a ``Seam``) the next epochs' order, which only
    a reader whose data ran short reads on into (``pipeline.BatchPipeline``); the first stream reads
    the ``replay`` row groups first."""
    epochs = recipe.epochs
    at = start
    if epochs is None:
        yield from _reader(recipe, 0, layout, at, replay=replay)
        return
    if at is None or at.epoch < epochs:  # the run's epochs; then, only if needed, more
        if partial is None or partial.epoch < epochs:  # (stopped inside the first row group past
            yield from _reader(recipe, 0, layout, at, epochs=epochs, replay=replay)  # them: the Seam was
            replay = ()  # passed already)
            yield Seam()
        shards = len(recipe.stream(0, (0, 1, 1)).plan.shards)
        at = Cursor(epochs, shards=shards)
    yield from _reader(recipe, 0, layout, at, replay=replay)


class TokenIterator:
    """One pass of a TokenDataset: the consumer's side of its ``BatchPipeline``.

    ``state`` is an exact resume state of this layout, or None; ``origins`` each source's cursor
    the run started from (None: epoch 0); ``carried`` each source's old states whose buffered
    documents an elastic resume carries over; ``limit`` the batches this reader makes in the
    whole run (None: until the data ends); ``last`` where ``close()`` leaves the final snapshot."""

    def __init__(self, recipe: Recipe, layout: Layout, state: dict[str, Any] | None,
                 origins: tuple[Cursor | None, ...], limit: Any, last: dict[str, Any],
                 sink: Sink | None = None, carried: tuple[tuple[dict[str, Any], ...], ...] = (),
                 note: Callable[[Snapshot, threading.Event], Any] | None = None) -> None:
        self._last, self._recipe = last, recipe
        self.layout, self.stride, self.origins = layout, layout[:2], origins
        self._held: Snapshot | None = None
        self._closed = False
        k = len(recipe.sources)
        subs = (state["sources"] if k > 1 else [state]) if state is not None else [None] * k
        dtype = token_dtype(recipe.tokenizer.vocab_size)
        feeds, batches = [], int(state["batches"]) if state is not None else 0
        for i in range(k):
            sub = subs[i]
            if sub is not None:  # exact: this reader's own buffer and counters
                runs, stats, position = resume.buffer_runs(sub, dtype), PackStats(**sub["stats"]), \
                    resume.pos_from(sub["position"])
            else:  # an elastic resume: the old readers' buffered documents (counted as new ones)
                runs = [r for old in (carried[i] if carried else ()) for r in resume.carried_runs(old, dtype)]
                stats, position = None, None
            partial = resume.pos_from(sub.get("partial")) if sub is not None and sub.get("skip") else None
            start = position if position is not None else origins[i]
            replay = replay_keys(runs)  # the row groups of the buffered documents, read again first
            source = (functools.partial(_single_source, recipe, layout, start, partial, replay) if k == 1
                      else functools.partial(_reader, recipe, i, layout, start, replay=replay))
            feeds.append(Feed(source, recipe.tokenizer, dtype, BestFitPacker(recipe.buffer_docs),
                              prefetch=recipe.prefetch, position=position,
                              skip=int(sub.get("skip", 0)) if sub is not None else 0, partial=partial,
                              restore=runs, stats=stats))
        schedule = None
        if recipe.weights is not None:
            rows = tuple(state["mix"]["rows"]) if state is not None else None
            if rows is not None and tuple(state["mix"]["weights"]) != recipe.weights:
                log.info("TokenDataset: the mix's weights changed since the state was saved: the new shares "
                         "count from here")
                rows = None
            schedule = Schedule(recipe.weights, rows)
        self._sink = sink if sink is not None else HostSink(recipe.batch_size, recipe.seq_len + 1)
        self._cursors = Cursors(recipe, layout, origins)
        noted = None
        if note is not None:
            def noted(mark: Mark, stop: threading.Event) -> Any:
                return note(Snapshot(self._cursors, mark, recipe, layout, origins), stop)
        self._pipe = BatchPipeline(feeds, self._sink, batches=batches, ahead=recipe.ahead, limit=limit,
                                   schedule=schedule, note=noted)
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
        """What the iterator's ``note`` made of the state after the last batch returned (None before the
        first, or without a ``note``)."""
        return self._mark.note

    @property
    def wait_s(self) -> float:
        """Time the consumer blocked in ``next()`` waiting for a finished batch."""
        return self._pipe.wait_s

    def snapshot(self) -> Snapshot:
        """The state after the last batch returned, cheaply (``.state_dict()`` materializes it)."""
        return Snapshot(self._cursors, self._mark, self._recipe, self.layout, self.origins)

    def hold(self, snap: Snapshot | None) -> None:
        """Report ``snap`` from ``state_dict()`` until released with ``hold(None)``: used by a
        consumer that reads batches ahead from this iterator (``device.CudaPrefetcher``) so that
        the state matches what the training loop has actually received."""
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
        log.debug("TokenDataset stride %s: %d batches, %d docs, %.2f%% of tokens cropped, waited %.2fs",
                  self.stride, st["batches"], st["docs_used"], 100 * st["crop_fraction"], self.wait_s)

    def _stop(self) -> None:
        """Join the threads and leave the final snapshot to the dataset, computing nothing: the state
        (global cursors, footers) is made only if ``ds.state_dict()`` asks for it."""
        self._closed = True
        self._pipe.close()
        self._last.update(snapshot=self._held or self.snapshot(), wait_s=self.wait_s)

    def __del__(self) -> None:
        # may run at interpreter exit, when imports and footer reads fail: only stop the threads
        if hasattr(self, "_pipe") and not self._closed:
            self._stop()
