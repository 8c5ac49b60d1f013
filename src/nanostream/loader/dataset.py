"""``TokenDataset``: packed ``(inputs, targets)`` batches of a split, and their exact resume state.

``TokenDataset`` is an ``IterableDataset`` of ``(inputs, targets)`` int64 tensors of
shape ``(batch_size, seq_len)`` with ``targets`` = ``inputs`` shifted by one. Per
iterator (the main process, or each DataLoader worker) a ``pipeline.BatchPipeline``
tokenizes row groups ahead and assembles finished batches on background threads, so
``next()`` only pops a finished batch (on CUDA, through ``to_device``, it also waits
on the batch's copy event: ``device.py``).

``state_dict()`` describes the state after the last batch *returned* (what it holds, and
how a load at the same or another layout is planned: ``resume.py``). Batches assembled
ahead and row groups still being tokenized are not part of it; a resumed dataset re-reads
them. A load at another layout (world size, nodes or DataLoader workers) restarts the
stream at the smallest global cursor of all old readers, and new reader ``j`` of ``R``
takes over the buffered documents of the old readers ``i`` with ``i % R == j``. Nothing
is lost; the row groups other readers took beyond the smallest cursor are read again, and
so is a row group a reader was in the middle of (its buffered documents are then not
carried over).

Readers: worker ``w`` of ``k`` on rank ``r`` of ``world`` (``local`` ranks a node) is reader
``r*k + w`` of ``world*k`` with ``local*k`` readers a node (``streaming.ranks.worker_stride``), so
ranks and workers never share a row group and each node reads only its shards.

Equal batches: with finite ``epochs`` the run yields exactly ``len(ds)`` batches on every
rank, a count fixed before it starts (``epoch_batches``); a reader whose data is longer
stops there, one whose data is shorter drains its buffer, then goes on into the next
epoch's order (``pipeline.Seam``).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ConfigError, LoaderError
from ..streaming.order import Cursor
from ..streaming.plan import Position
from ..streaming.ranks import default_layout, worker_stride
from ..streaming.single import Stream
from ..streaming.streams import iter_batches, stream
from ..text.tokenizer import Tokenizer
from . import resume
from .packing import BestFitPacker, PackStats, flatten_docs, token_dtype
from .pipeline import BatchPipeline, Mark, Seam, Sink

__all__ = ["TokenDataset"]

log = logging.getLogger(__name__)
SPLITS = ("train", "val")


class _Cursors:
    """The reader's stream (never started) that global cursors are computed with, made on first use and
    shared by an iterator and its snapshots (a snapshot never refers to its iterator)."""

    def __init__(self, split: str, layout: tuple[int, int, int], origin: Cursor | None,
                 kwargs: dict[str, Any]) -> None:
        self._args, self._stream = (split, layout, origin, kwargs), None

    def stream(self) -> Stream:
        if self._stream is None:
            split, (r, w, local), origin, kwargs = self._args
            self._stream = stream(split, rank=r, world_size=w, local_world_size=local, start=origin, **kwargs)
        return self._stream


class _Snapshot:
    """A TokenDataset iterator's resume state at one batch boundary, not yet turned into tensors."""

    def __init__(self, cursors: _Cursors, mark: Mark, config: dict[str, Any], layout: tuple[int, int, int],
                 origin: Cursor | None) -> None:
        self._cursors, self.mark, self._config, self._layout, self._origin = cursors, mark, config, layout, origin

    @property
    def batches(self) -> int:
        return self.mark.batches

    def state_dict(self) -> dict[str, Any]:
        cursor = resume.global_cursor(self._cursors.stream(), self.mark)
        return _tensors(resume.encode(self.mark, config=self._config, layout=self._layout, cursor=cursor,
                                      origin=self._origin))

    def stats(self) -> dict[str, Any]:
        st = PackStats(**self.mark.stats)
        return {**st.as_dict(), "crop_fraction": st.crop_fraction, "batches": self.mark.batches,
                "buffered_docs": self.mark.buffered_docs}


def _tensors(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its token arrays as tensors (what ``torch.save`` and ``all_gather_object`` carry)."""
    return {**state, "tokens": torch.from_numpy(state["tokens"]), "lengths": torch.from_numpy(state["lengths"])}


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


class _TokenIterator:
    """One pass of a TokenDataset: the consumer's side of its ``BatchPipeline``.

    ``layout`` is ``(reader, readers, readers per node)``; ``state`` an exact resume state of this
    layout, or None; ``origin`` the cursor the run started from (None: epoch 0); ``limit`` the
    batches this reader makes in the whole run (None: until the data ends)."""

    def __init__(self, ds: TokenDataset, layout: tuple[int, int, int], state: dict[str, Any] | None,
                 origin: Cursor | None, limit: int | None, sink: Sink | None = None,
                 carried: tuple[dict[str, Any], ...] = ()) -> None:
        self._last = ds._last  # where close() leaves the final snapshot and wait time for the dataset
        self.layout, self.stride, self.origin = layout, layout[:2], origin
        self._config = ds._config()
        self._held: _Snapshot | None = None
        self._closed = False
        packer = BestFitPacker(ds.buffer_docs)
        position: Position | None = None
        batches = 0
        dtype = token_dtype(ds.tokenizer.vocab_size)
        if state is not None:
            position, batches = resume.restore(packer, state, dtype)
        for old in carried:  # an elastic resume: the old readers' buffered documents, not re-read
            for tokens, lengths in resume.carried_docs(old, dtype):
                packer.add(tokens, lengths)
        self._sink = sink if sink is not None else HostSink(ds.batch_size, ds.seq_len + 1)
        self._kwargs = ds._source_kwargs()
        self._split = split = ds.split
        start: Position | Cursor | None = position if position is not None else origin
        kwargs, epochs = self._kwargs, ds.epochs
        partial = None if state is None or not state.get("skip") else resume.pos_from(state.get("partial"))

        def open_source() -> Iterator[Any]:
            def read(start: Position | Cursor | None, **kw: Any) -> Iterator[Any]:
                it = iter_batches(split, rank=layout[0], world_size=layout[1], local_world_size=layout[2],
                                  start=start, **{**kwargs, **kw})
                try:
                    yield from it
                finally:
                    it.close()

            at = start
            if epochs is None:
                yield from read(at)
                return
            if at is None or at.epoch < epochs:  # the run's epochs; then, only if needed, more
                if partial is None or partial.epoch < epochs:  # (stopped inside the first row group past
                    yield from read(at, epochs=epochs)  # them: the Seam was passed already)
                    yield Seam()
                total = stream(split, rank=0, world_size=1, **kwargs).epoch_plan(0).total  # (no ref to self)
                at = Cursor(epochs, 0, (), total)
            yield from read(at)

        self._pipe = BatchPipeline(open_source, ds.tokenizer, dtype, packer, self._sink, position=position,
                                   batches=batches, prefetch=ds.prefetch, ahead=ds.ahead, limit=limit,
                                   skip=0 if state is None else int(state.get("skip", 0)), partial=partial)
        self._mark = self._pipe.mark
        self._cursors = _Cursors(split, layout, origin, kwargs)

    def __iter__(self) -> _TokenIterator:
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
    def wait_s(self) -> float:
        """Time the consumer blocked in ``next()`` waiting for a finished batch."""
        return self._pipe.wait_s

    def snapshot(self) -> _Snapshot:
        """The state after the last batch returned, cheaply (``.state_dict()`` materializes it)."""
        return _Snapshot(self._cursors, self._mark, self._config, self.layout, self.origin)

    def hold(self, snap: _Snapshot | None) -> None:
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
        (global cursor, footers) is made only if ``ds.state_dict()`` asks for it."""
        self._closed = True
        self._pipe.close()
        self._last.update(snapshot=self._held or self.snapshot(), wait_s=self.wait_s)

    def __del__(self) -> None:
        # may run at interpreter exit, when imports and footer reads fail: only stop the threads
        if hasattr(self, "_pipe") and not self._closed:
            self._stop()


class TokenDataset(IterableDataset):
    """``(inputs, targets)`` batches of a split, packed best-fit from a tokenized document stream.

    Use directly (``for x, y in ds``) or as ``DataLoader(ds, batch_size=None, num_workers=k,
    pin_memory=True)``. ``rank``/``world_size``/``local_world_size`` default as in ``stream()``
    (torch.distributed, else torchrun's environment, else one rank); ``drop_last`` evens out the
    row groups of the readers per epoch as there. ``epochs=None`` streams forever; with a finite
    number, every rank yields exactly ``len(ds)`` batches (see ``epoch_batches``).
    ``buffer_docs`` documents are kept to choose from (nanochat: 1000; refilled 128 at a time),
    about ``prefetch`` row groups (``prefetch`` x 1024 documents, in pieces of 128) are tokenized
    ahead and ``ahead`` finished batches are assembled ahead (on background threads; ``next()``
    only hands one over). Other keyword arguments (``shuffle``, ``seed``,
    ``max_shard``, ``num_shards``, ``base_url``, ``dataset``, ``queue_size``, ``fetch_ahead``,
    ``cache_limit``, ...) go to ``iter_batches`` (``cache_limit`` is not part of the resume state:
    a run may resume under another budget). ``rows_per_row_group`` fixes the count's estimate (see
    ``rows_per_row_group()``) instead of reading it from the data.
    """

    def __init__(self, split: str, tokenizer: Tokenizer, batch_size: int, seq_len: int, *,
                 data_dir: Any = None, rank: int | None = None, world_size: int | None = None,
                 local_world_size: int | None = None, drop_last: bool = True,
                 epochs: int | None = None, buffer_docs: int = 1000, prefetch: int = 2,
                 ahead: int = 2, rows_per_row_group: int | None = None, **stream_kwargs: Any) -> None:
        if split not in SPLITS:
            raise LoaderError(f"unknown split {split!r}: use 'train' or 'val'")
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len),
                            ("buffer_docs", buffer_docs), ("prefetch", prefetch), ("ahead", ahead)):
            if not isinstance(value, int) or value < 1:
                raise LoaderError(f"TokenDataset {name} must be an integer >= 1, got {value!r}")
        for name in ("bos_id", "vocab_size", "encode_batch"):
            if not hasattr(tokenizer, name):
                raise LoaderError(f"tokenizer {type(tokenizer).__name__} has no {name}: "
                                  "pass a nanostream.text.tokenizer.Tokenizer (e.g. ByteTokenizer)")
        try:
            token_dtype(tokenizer.vocab_size)
        except ValueError as exc:
            raise LoaderError(str(exc)) from exc
        if "start" in stream_kwargs:
            raise LoaderError("TokenDataset takes no start=: resume with load_state_dict()")
        rank, world_size, local_world_size = default_layout(rank, world_size, local_world_size)
        self.split, self.tokenizer = split, tokenizer
        self.batch_size, self.seq_len = batch_size, seq_len
        self.buffer_docs, self.prefetch, self.ahead, self.epochs = buffer_docs, prefetch, ahead, epochs
        self.drop_last = bool(drop_last)
        self._stream_kwargs = {"data_dir": data_dir, "drop_last": self.drop_last, **stream_kwargs}
        # check folder, split, layout and stream arguments now (starts nothing)
        plan = stream(split, rank=rank, world_size=world_size, local_world_size=local_world_size,
                      epochs=epochs, **self._stream_kwargs).plan
        self.rank, self.world_size, self.local_world_size = plan.rank, plan.world_size, plan.local_world_size
        self._pending: list[dict[str, Any]] | None = None
        self._live: weakref.ref[_TokenIterator] | None = None
        self._last: dict[str, Any] = {}  # final state/stats of the last closed iterator
        if rows_per_row_group is not None and (not isinstance(rows_per_row_group, int) or rows_per_row_group < 1):
            raise LoaderError(f"TokenDataset rows_per_row_group must be an integer >= 1, got {rows_per_row_group!r}")
        self._rows = rows_per_row_group  # rows packed from the sample row group (epoch_batches)
        self._origin: Cursor | None = None  # where the last iterator's run started (len)

    def _config(self) -> dict[str, Any]:
        kw = self._stream_kwargs
        return {"split": self.split, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "buffer_docs": self.buffer_docs, "bos_id": int(self.tokenizer.bos_id),
                "vocab_size": int(self.tokenizer.vocab_size), "drop_last": self.drop_last,
                "shuffle": bool(kw.get("shuffle", False)), "seed": int(kw.get("seed", 0))}

    def _source_kwargs(self) -> dict[str, Any]:
        """``iter_batches`` arguments of every reader: the stream never ends by itself (``epochs``
        only sets the batch count), so a reader with less data goes on into the next epoch."""
        return {**self._stream_kwargs, "epochs": None}

    # -- how many batches ----------------------------------------------------------------------
    def rows_per_row_group(self) -> int:
        """Full rows packed from one row group alone -- the first of epoch 0's global order, the
        same on every rank and node -- with this dataset's tokenizer, ``seq_len`` and ``buffer_docs``.
        Read once (downloading that shard if it is not local) and kept, unless given to the
        constructor (``rows_per_row_group=``; every rank must then be given the same)."""
        if self._rows is None:
            kw = {k: v for k, v in self._stream_kwargs.items() if k != "drop_last"}
            kw["fetch_ahead"] = 0  # that shard only
            it = iter_batches(self.split, rank=0, world_size=1, local_world_size=1, epochs=1, **kw)
            try:
                texts = list(next(it).texts)
            finally:
                it.close()
            tokens, lengths = flatten_docs(self.tokenizer.encode_batch(texts), self.tokenizer.bos_id,
                                           token_dtype(self.tokenizer.vocab_size))
            packer = BestFitPacker(self.buffer_docs)
            packer.add(tokens, lengths)
            row, rows = np.empty(self.seq_len + 1, dtype=np.int64), 0
            while packer.fill_row(row, lambda: False):
                rows += 1
            self._rows = rows
        return self._rows

    def epoch_batches(self, epoch: int = 0, *, start: Cursor | None = None) -> int:
        """Batches every rank yields for ``epoch`` (from ``start``, if the run resumed there):
        ``row groups each rank reads in it * rows_per_row_group() // batch_size``, known before it
        starts and the same on every rank. Raises ConfigError if some rank reads no row group."""
        s = stream(self.split, rank=self.rank, world_size=self.world_size, local_world_size=self.local_world_size,
                   start=start, **self._source_kwargs())
        return s.epoch_length(epoch) * self.rows_per_row_group() // self.batch_size

    def _run_batches(self, origin: Cursor | None) -> int | None:
        """Batches every rank yields in a run from ``origin`` (None: epoch 0) to the last epoch."""
        if self.epochs is None:
            return None
        first = origin.epoch if origin is not None else 0
        total = sum(self.epoch_batches(e, start=origin) for e in range(first, self.epochs))
        if total == 0 and origin is None:
            raise ConfigError(
                f"TokenDataset makes no batch of {self.batch_size} x {self.seq_len} per rank in {self.epochs} "
                f"epoch(s) ({self.rows_per_row_group()} rows per row group): use a smaller batch, fewer ranks "
                "or more data")
        return total

    def __len__(self) -> int:
        """Batches every rank yields in this run (finite ``epochs`` only; after an elastic
        ``load_state_dict``, those left from its cursor)."""
        if self.epochs is None:
            raise TypeError("TokenDataset with epochs=None is endless: it has no len()")
        origin = self._origin
        if self._pending:
            _, origin, _ = resume.plan(self._pending, (self.rank, self.world_size, self.local_world_size))
        total = self._run_batches(origin)
        assert total is not None
        return total

    # -- iterators -----------------------------------------------------------------------------
    def __iter__(self) -> _TokenIterator:
        return self._iterate()

    def _iterate(self, sink: Sink | None = None) -> _TokenIterator:
        """A new iterator; ``sink`` decides what a finished batch is (default: CPU tensors)."""
        info = get_worker_info()
        wid, k = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = worker_stride(self.rank, self.world_size, wid, k)
        layout = (reader, readers, self.local_world_size * k)
        state, origin, carried = resume.plan(self._pending, layout)
        self._origin = origin
        total = self._run_batches(origin)
        limit = None if total is None else total // k + (wid < total % k)
        self._pending = None
        self._last = {}
        it = _TokenIterator(self, layout, state, origin, limit, sink, carried)
        self._live = weakref.ref(it)
        return it

    def _current(self) -> _TokenIterator | None:
        return self._live() if self._live is not None else None

    def state_dict(self) -> dict[str, Any]:
        """Resume state after the last batch this process's current iterator returned."""
        it = self._current()
        if it is not None:
            return it.state_dict()
        if "snapshot" in self._last:
            return self._last["snapshot"].state_dict()
        if self._pending is not None and len(self._pending) == 1:
            return dict(self._pending[0])
        fresh = _tensors(resume.empty(self._config()))
        if self._pending:  # loaded for an elastic resume, not started yet: keep all of it
            fresh["pending"] = list(self._pending)
        return fresh

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Make the next ``iter()`` continue where ``state`` was taken.

        The state of this reader's own layout (rank, world size, nodes, DataLoader workers)
        resumes exactly. At another layout pass *every* old reader's state (a list, the same on
        every new rank): the run goes on from the smallest of their global cursors, and the old
        buffers are shared out (module docstring). Nothing is lost; see the README for what is
        read twice."""
        states = state if isinstance(state, list) else [state]
        if len(states) == 1 and isinstance(states[0], dict) and "pending" in states[0]:
            states = list(states[0]["pending"])  # saved between an elastic load and the first batch
        for st in states:
            resume.check(st, self._config())
        if not states:
            raise LoaderError("load_state_dict got an empty list of states")
        self._pending = states
        self._live, self._last = None, {}

    def stats(self) -> dict[str, Any]:
        """Counters of the current iterator: documents, tokens, ``crop_fraction``, ``wait_s``."""
        it = self._current()
        if it is not None:
            return it.stats()
        if "snapshot" in self._last:
            return {**self._last["snapshot"].stats(), "wait_s": self._last["wait_s"]}
        st = PackStats(**self.state_dict()["stats"])
        return {**st.as_dict(), "crop_fraction": st.crop_fraction, "batches": 0, "buffered_docs": 0,
                "wait_s": 0.0}

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_live"], d["_last"] = None, {}
        return d
