"""``TokenDataset``: packed ``(inputs, targets)`` batches of a split, and their exact resume state.

``TokenDataset`` is an ``IterableDataset`` of ``(inputs, targets)`` int64 tensors of
shape ``(batch_size, seq_len)`` with ``targets`` = ``inputs`` shifted by one. Per
iterator (the main process, or each DataLoader worker) a ``pipeline.BatchPipeline``
tokenizes row groups ahead and assembles finished batches on background threads, so
``next()`` only pops a finished batch (on CUDA, through ``to_device``, it also waits
on the batch's copy event: ``device.py``).

``state_dict()`` describes the state after the last batch *returned*: the stream
position of the last row group moved into the packing buffer, the buffer's documents
(compact token tensors) and counters. Batches assembled ahead and row groups still
being tokenized are not part of it; a resumed dataset re-reads them.

Worker ``w`` of ``k`` on rank ``r`` of ``world`` reads stride ``r*k + w`` of ``world*k``
(``shards.worker_stride``), so ranks and workers never share a row group.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .errors import LoaderError
from .packing import BestFitPacker, PackStats, token_dtype
from .pipeline import BatchPipeline, Mark, Sink
from .shards import worker_stride
from .streaming import Position, default_rank, iter_batches, stream
from .tokenizer import Tokenizer

__all__ = ["TokenDataset"]

log = logging.getLogger(__name__)
STATE_VERSION = 1
SPLITS = ("train", "val")


class _Snapshot:
    """A TokenDataset iterator's resume state at one batch boundary, not yet turned into tensors."""

    def __init__(self, config: dict[str, Any], stride: tuple[int, int], mark: Mark) -> None:
        self.config, self.stride, self.mark = config, stride, mark

    @property
    def batches(self) -> int:
        return self.mark.batches

    def state_dict(self) -> dict[str, Any]:
        tokens, lengths = self.mark.buffer.export()
        pos = self.mark.position
        return {
            "version": STATE_VERSION,
            "config": dict(self.config),
            "stride": list(self.stride),
            "position": None if pos is None else [pos.epoch, pos.shard, pos.row_group],
            "tokens": torch.from_numpy(tokens),
            "lengths": torch.from_numpy(lengths),
            "stats": dict(self.mark.stats),
            "batches": self.mark.batches,
        }


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
    """One pass of a TokenDataset: the consumer's side of its ``BatchPipeline``."""

    def __init__(self, ds: TokenDataset, stride: tuple[int, int], state: dict[str, Any] | None,
                 sink: Sink | None = None) -> None:
        self._last = ds._last  # where close() leaves the final state and stats for the dataset
        self.stride = stride
        self._config = ds._config()
        self._held: _Snapshot | None = None
        self._closed = False
        packer = BestFitPacker(ds.buffer_docs)
        position: Position | None = None
        batches = 0
        dtype = token_dtype(ds.tokenizer.vocab_size)
        if state is not None:
            position = Position(*state["position"]) if state["position"] is not None else None
            tokens = state["tokens"].numpy().astype(dtype, copy=True)
            packer.add(tokens, state["lengths"].numpy().astype(np.int64, copy=False))
            packer.stats = PackStats(**state["stats"])
            batches = int(state["batches"])
        self._sink = sink if sink is not None else HostSink(ds.batch_size, ds.seq_len + 1)
        kwargs = dict(ds._stream_kwargs)
        split = ds.split

        def open_source() -> Iterator[Any]:
            return iter_batches(split, rank=stride[0], world_size=stride[1], start=position, **kwargs)

        self._pipe = BatchPipeline(open_source, ds.tokenizer, dtype, packer, self._sink, position=position,
                                   batches=batches, prefetch=ds.prefetch, ahead=ds.ahead)
        self._mark = self._pipe.mark

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
        return _Snapshot(self._config, self.stride, self._mark)

    def hold(self, snap: _Snapshot | None) -> None:
        """Report ``snap`` from ``state_dict()`` until released with ``hold(None)``: used by a
        consumer that reads batches ahead from this iterator (``device.CudaPrefetcher``) so that
        the state matches what the training loop has actually received."""
        self._held = snap

    def state_dict(self) -> dict[str, Any]:
        return (self._held or self.snapshot()).state_dict()

    def stats(self) -> dict[str, Any]:
        mark = (self._held or self.snapshot()).mark
        st = PackStats(**mark.stats)
        return {**st.as_dict(), "crop_fraction": st.crop_fraction, "batches": mark.batches,
                "buffered_docs": mark.buffered_docs, "wait_s": self.wait_s}

    def close(self) -> None:
        """Stop and join the producer threads (idempotent; also run when the iterator is dropped)."""
        if self._closed:
            return
        self._closed = True
        self._pipe.close()
        self._last.update(state=self.state_dict(), stats=self.stats())
        st = self.stats()
        log.debug("TokenDataset stride %s: %d batches, %d docs, %.2f%% of tokens cropped, waited %.2fs",
                  self.stride, st["batches"], st["docs_used"], 100 * st["crop_fraction"], self.wait_s)

    def __del__(self) -> None:
        if hasattr(self, "_pipe"):
            self.close()


class TokenDataset(IterableDataset):
    """``(inputs, targets)`` batches of a split, packed best-fit from a tokenized document stream.

    Use directly (``for x, y in ds``) or as ``DataLoader(ds, batch_size=None, num_workers=k,
    pin_memory=True)``. ``rank``/``world_size`` default to torch.distributed, else the
    RANK/WORLD_SIZE env vars, else 0/1. ``epochs=None`` streams forever; with a finite
    number, iteration ends when a full batch can no longer be built (the rest stays
    in the buffer). ``buffer_docs`` documents are kept to choose from (nanochat: 1000),
    ``prefetch`` row groups are tokenized ahead and ``ahead`` finished batches are assembled
    ahead (on background threads; ``next()`` only hands one over). Other keyword arguments
    (``shuffle``, ``seed``, ``max_shard``, ``num_shards``, ``base_url``, ``dataset``,
    ``queue_size``, ``fetch_ahead``, ...) go to ``iter_batches``.
    """

    def __init__(self, split: str, tokenizer: Tokenizer, batch_size: int, seq_len: int, *,
                 data_dir: Any = None, rank: int | None = None, world_size: int | None = None,
                 epochs: int | None = None, buffer_docs: int = 1000, prefetch: int = 2,
                 ahead: int = 2, **stream_kwargs: Any) -> None:
        if split not in SPLITS:
            raise LoaderError(f"unknown split {split!r}: use 'train' or 'val'")
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len),
                            ("buffer_docs", buffer_docs), ("prefetch", prefetch), ("ahead", ahead)):
            if not isinstance(value, int) or value < 1:
                raise LoaderError(f"TokenDataset {name} must be an integer >= 1, got {value!r}")
        for name in ("bos_id", "vocab_size", "encode_batch"):
            if not hasattr(tokenizer, name):
                raise LoaderError(f"tokenizer {type(tokenizer).__name__} has no {name}: "
                                  "pass a nanostream.tokenizer.Tokenizer (e.g. ByteTokenizer)")
        try:
            token_dtype(tokenizer.vocab_size)
        except ValueError as exc:
            raise LoaderError(str(exc)) from exc
        if rank is None or world_size is None:
            r, w = default_rank()
            rank = r if rank is None else rank
            world_size = w if world_size is None else world_size
        self.split, self.tokenizer = split, tokenizer
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.buffer_docs, self.prefetch, self.ahead, self.epochs = buffer_docs, prefetch, ahead, epochs
        self._stream_kwargs = {"data_dir": data_dir, "epochs": epochs, **stream_kwargs}
        # check folder, split and stream arguments now (starts nothing)
        stream(split, rank=rank, world_size=world_size, **self._stream_kwargs)
        self._pending: dict[str, Any] | None = None
        self._live: weakref.ref[_TokenIterator] | None = None
        self._last: dict[str, Any] = {}  # final state/stats of the last closed iterator

    def _config(self) -> dict[str, Any]:
        kw = self._stream_kwargs
        return {"split": self.split, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "buffer_docs": self.buffer_docs, "bos_id": int(self.tokenizer.bos_id),
                "vocab_size": int(self.tokenizer.vocab_size),
                "shuffle": bool(kw.get("shuffle", False)), "seed": int(kw.get("seed", 0))}

    def __iter__(self) -> _TokenIterator:
        return self._iterate()

    def _iterate(self, sink: Sink | None = None) -> _TokenIterator:
        """A new iterator; ``sink`` decides what a finished batch is (default: CPU tensors)."""
        info = get_worker_info()
        wid, k = (info.id, info.num_workers) if info is not None else (0, 1)
        stride = worker_stride(self.rank, self.world_size, wid, k)
        state, self._pending = self._pending, None
        if state is not None and state["stride"] is not None and tuple(state["stride"]) != stride:
            raise LoaderError(
                f"resume state was saved by the reader with stride {tuple(state['stride'])} (rank*workers+"
                f"worker, world*workers) but this one is {stride}: resume with the same world_size and "
                "num_workers, giving each rank (and worker) its own state")
        self._last = {}
        it = _TokenIterator(self, stride, state, sink)
        self._live = weakref.ref(it)
        return it

    def _current(self) -> _TokenIterator | None:
        return self._live() if self._live is not None else None

    def state_dict(self) -> dict[str, Any]:
        """Resume state after the last batch this process's current iterator returned."""
        it = self._current()
        if it is not None:
            return it.state_dict()
        if "state" in self._last:
            return dict(self._last["state"])
        if self._pending is not None:
            return dict(self._pending)
        return {"version": STATE_VERSION, "config": self._config(), "stride": None, "position": None,
                "tokens": torch.zeros(0, dtype=torch.int32), "lengths": torch.zeros(0, dtype=torch.int64),
                "stats": PackStats().as_dict(), "batches": 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next ``iter()`` continue exactly where ``state`` was taken."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise LoaderError(f"not a TokenDataset state (version {STATE_VERSION}): "
                              f"got {type(state).__name__} with keys {sorted(state)[:8] if isinstance(state, dict) else '-'}")
        mine = self._config()
        diff = {k: (v, mine.get(k)) for k, v in state["config"].items() if mine.get(k) != v}
        if diff or set(mine) != set(state["config"]):
            detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise LoaderError(f"resume state comes from a different TokenDataset config ({detail or 'keys differ'}); "
                              "create the dataset with the same arguments and tokenizer")
        self._pending = state
        self._live, self._last = None, {}

    def stats(self) -> dict[str, Any]:
        """Counters of the current iterator: documents, tokens, ``crop_fraction``, ``wait_s``."""
        it = self._current()
        if it is not None:
            return it.stats()
        if "stats" in self._last:
            return dict(self._last["stats"])
        st = PackStats(**self.state_dict()["stats"])
        return {**st.as_dict(), "crop_fraction": st.crop_fraction, "batches": 0, "buffered_docs": 0,
                "wait_s": 0.0}

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_live"], d["_last"] = None, {}
        return d
