"""The PyTorch side of nanostream: ``TokenDataset`` and ``to_device`` (the only module importing torch).

``TokenDataset`` is an ``IterableDataset`` of ``(inputs, targets)`` int64 tensors of
shape ``(batch_size, seq_len)`` with ``targets`` = ``inputs`` shifted by one. Per
iterator (the main process, or each DataLoader worker):

* a background thread pulls row groups from ``iter_batches`` and has them tokenized
  ahead into flat numpy arrays (a bounded queue of ``prefetch`` row groups); a
  ``BPETokenizer`` is driven text by text on its ``num_threads`` threads, the next row
  group always queued behind the current one (see ``_encoding``);
* the consuming thread packs rows with ``packing.BestFitPacker`` (BOS-aligned best
  fit, no padding) and builds each batch with numpy slices;
* ``state_dict()`` describes the state after the last batch *returned*: the stream
  position of the last row group moved into the packing buffer, the buffer's
  documents (compact token tensors) and counters. Row groups still in the queue are
  not part of it; a resumed dataset re-reads them.

Worker ``w`` of ``k`` on rank ``r`` of ``world`` reads stride ``r*k + w`` of ``world*k``
(``shards.worker_stride``), so ranks and workers never share a row group.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .errors import LoaderError
from .packing import BestFitPacker, BufferSnapshot, DocBytes, PackStats, join_docs, token_dtype
from .shards import worker_stride
from .stream import Position, default_rank, iter_batches, stream
from .tokenizer import BPETokenizer, Tokenizer

__all__ = ["CudaPrefetcher", "TokenDataset", "to_device"]

log = logging.getLogger(__name__)
STATE_VERSION = 1
SPLITS = ("train", "val")


class _End:
    """Queue marker: the stream finished (``error`` None) or failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def _put(q: queue.Queue, stop: threading.Event, item: object) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


TASKS_PER_THREAD = 2  # a row group is split into this many encoding tasks per thread ...
MIN_TASK_TEXTS = 16  # ... of at least this many texts (fewer tasks: less hand-off overhead)


def _encoding(tokenizer: Tokenizer) -> tuple[Callable[[list[str]], Iterable[Sequence[int]]], int]:
    """How to encode: (texts -> their ids, encoding threads; 1 means one task per row group).

    A ``BPETokenizer`` (whose ``encode_batch`` is the stock one: ``encode`` of each text) is
    driven text by text on ``num_threads`` persistent threads, each row group split into a few
    tasks: no thread start or end-of-batch wait per row group, and each document is turned into
    bytes right after it is encoded (cache-hot, in a GIL hold of microseconds between GIL-free
    encodes, instead of a separate whole-row-group pass that stalls the encoding threads). Any
    other tokenizer gets one ``encode_batch`` call per row group on one thread (it parallelises
    inside if it can).
    """
    cls = type(tokenizer)
    if (isinstance(tokenizer, BPETokenizer) and cls.encode_batch is BPETokenizer.encode_batch
            and cls.encode is BPETokenizer.encode):
        encode = tokenizer.encode
        return (lambda texts: map(encode, texts)), max(1, int(tokenizer.num_threads))
    return tokenizer.encode_batch, 1


def _task_size(n_texts: int, threads: int) -> int:
    if threads == 1:
        return max(1, n_texts)
    return max(MIN_TASK_TEXTS, -(-n_texts // (TASKS_PER_THREAD * threads)))


def _encode_task(encode: Callable[[list[str]], Iterable[Sequence[int]]], to_bytes: DocBytes,
                 texts: list[str]) -> tuple[list[bytes], list[int]]:
    """Runs on an encoding thread: ``texts`` as the byte pieces of their BOS-first token arrays."""
    parts: list[bytes] = []
    lengths: list[int] = []
    for ids in encode(texts):
        try:
            parts.append(to_bytes(ids))
        except ValueError as exc:
            raise LoaderError(f"the tokenizer returned an id outside the token dtype ({exc}); check its "
                              "vocab_size") from exc
        lengths.append(len(ids) + 1)
    if len(lengths) != len(texts):
        raise LoaderError(f"the tokenizer returned {len(lengths)} id lists for {len(texts)} texts")
    return parts, lengths


def _tokenize_ahead(open_source: Callable[[], Iterator[Any]], tokenizer: Tokenizer, dtype: np.dtype,
                    q: queue.Queue, stop: threading.Event) -> None:
    """Thread body: hands ``(position, tokens, lengths)`` per row group to the consumer, in order.

    Row group ``i+1``'s encoding tasks are queued on the encoding threads before we wait for
    row group ``i``'s, so those threads never wait for us. Holds no reference to the iterator
    object, so dropping that still stops us; the encoding threads are joined before we return.
    """
    source = None
    encode, workers = _encoding(tokenizer)
    to_bytes = DocBytes(tokenizer.bos_id, dtype)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nanostream-encode")

    def hand_over(position: Position, tasks: list[Future]) -> bool:
        parts: list[bytes] = []
        lengths: list[int] = []
        for task in tasks:
            p, n = task.result()
            parts += p
            lengths += n
        tokens, lens = join_docs(parts, lengths, dtype)
        return _put(q, stop, (position, tokens, lens))

    try:
        source = open_source()
        pending: deque[tuple[Position, list[Future]]] = deque()
        for batch in source:
            if stop.is_set():
                return
            texts = list(batch.texts)
            step = _task_size(len(texts), workers)
            pending.append((batch.position, [pool.submit(_encode_task, encode, to_bytes, texts[a:a + step])
                                             for a in range(0, len(texts), step)]))
            if len(pending) > 1 and not hand_over(*pending.popleft()):
                return
        while pending:
            if not hand_over(*pending.popleft()):
                return
        _put(q, stop, _End())
    except Exception as exc:  # handed to the consumer, raised there unchanged
        _put(q, stop, _End(exc))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        close = getattr(source, "close", None)
        if close is not None:
            close()


class _Snapshot:
    """A TokenDataset iterator's resume state at one batch boundary, not yet turned into tensors."""

    def __init__(self, config: dict[str, Any], stride: tuple[int, int], position: Position | None,
                 buffer: BufferSnapshot, stats: dict[str, int], batches: int) -> None:
        self.config, self.stride, self.position = config, stride, position
        self.buffer, self.stats, self.batches = buffer, stats, batches

    def state_dict(self) -> dict[str, Any]:
        tokens, lengths = self.buffer.export()
        pos = self.position
        return {
            "version": STATE_VERSION,
            "config": dict(self.config),
            "stride": list(self.stride),
            "position": None if pos is None else [pos.epoch, pos.shard, pos.row_group],
            "tokens": torch.from_numpy(tokens),
            "lengths": torch.from_numpy(lengths),
            "stats": dict(self.stats),
            "batches": self.batches,
        }


class _TokenIterator:
    """One pass of a TokenDataset: owns the tokenizer thread and the packing buffer."""

    def __init__(self, ds: TokenDataset, stride: tuple[int, int], state: dict[str, Any] | None) -> None:
        self._last = ds._last  # where close() leaves the final state and stats for the dataset
        self.batch_size, self.row_len = ds.batch_size, ds.seq_len + 1
        self.stride = stride
        self._config = ds._config()
        self._packer = BestFitPacker(ds.buffer_docs)
        self._position: Position | None = None
        self.batches = 0
        self.wait_s = 0.0  # time the consumer blocked on the tokenizer thread
        self._held: _Snapshot | None = None
        dtype = token_dtype(ds.tokenizer.vocab_size)
        if state is not None:
            self._position = Position(*state["position"]) if state["position"] is not None else None
            tokens = state["tokens"].numpy().astype(dtype, copy=True)
            self._packer.add(tokens, state["lengths"].numpy().astype(np.int64, copy=False))
            self._packer.stats = PackStats(**state["stats"])
            self.batches = int(state["batches"])
        self._q: queue.Queue = queue.Queue(maxsize=ds.prefetch)
        self._stop = threading.Event()
        self._closed = False
        kwargs = dict(ds._stream_kwargs)
        split, start = ds.split, self._position

        def open_source() -> Iterator[Any]:
            return iter_batches(split, rank=stride[0], world_size=stride[1], start=start, **kwargs)

        self._thread = threading.Thread(target=_tokenize_ahead, name="nanostream-tokenize", daemon=True,
                                        args=(open_source, ds.tokenizer, dtype, self._q, self._stop))
        self._thread.start()

    def __iter__(self) -> _TokenIterator:
        return self

    def _refill(self) -> bool:
        t0 = time.perf_counter()
        while True:
            try:
                item = self._q.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._q.empty():
                    raise LoaderError("the tokenizer thread stopped without a result") from None
        self.wait_s += time.perf_counter() - t0
        if isinstance(item, _End):
            if item.error is not None:
                raise item.error
            self._q.put(item)  # keep answering "finished" if asked again
            return False
        position, tokens, lengths = item
        self._packer.add(tokens, lengths)
        self._position = position
        return True

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._closed:
            raise StopIteration
        rows = np.empty((self.batch_size, self.row_len), dtype=np.int64)
        packer, position = self._packer, self._position
        packer.begin()
        finished = False
        try:
            for row in rows:
                if not packer.fill_row(row, self._refill):
                    finished = True
                    break
        except BaseException:
            packer.rollback()
            self._position = position
            self.close()
            raise
        if finished:  # the data ended inside this batch: drop it, keep its documents buffered
            packer.rollback()
            self._position = position
            self.close()
            raise StopIteration
        packer.commit()
        self.batches += 1
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())

    def snapshot(self) -> _Snapshot:
        """The state right now, cheaply (no token copies); ``.state_dict()`` materializes it."""
        return _Snapshot(self._config, self.stride, self._position, self._packer.snapshot(),
                         self._packer.stats.as_dict(), self.batches)

    def hold(self, snap: _Snapshot | None) -> None:
        """Report ``snap`` from ``state_dict()`` until released with ``hold(None)``: used by a
        consumer that reads one batch ahead (``CudaPrefetcher``) so the state matches what the
        training loop has actually received."""
        self._held = snap

    def state_dict(self) -> dict[str, Any]:
        return (self._held or self.snapshot()).state_dict()

    def stats(self) -> dict[str, Any]:
        st = self._packer.stats
        return {**st.as_dict(), "crop_fraction": st.crop_fraction, "batches": self.batches,
                "buffered_docs": self._packer.n_docs, "wait_s": self.wait_s}

    def close(self) -> None:
        """Stop and join the tokenizer thread (idempotent; also run when the iterator is dropped)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._last.update(state=self.state_dict(), stats=self.stats())
        st = self._packer.stats
        log.debug("TokenDataset stride %s: %d batches, %d docs, %.2f%% of tokens cropped, waited %.2fs",
                  self.stride, self.batches, st.docs_used, 100 * st.crop_fraction, self.wait_s)

    def __del__(self) -> None:
        if hasattr(self, "_thread"):
            self.close()


class TokenDataset(IterableDataset):
    """``(inputs, targets)`` batches of a split, packed best-fit from a tokenized document stream.

    Use directly (``for x, y in ds``) or as ``DataLoader(ds, batch_size=None, num_workers=k,
    pin_memory=True)``. ``rank``/``world_size`` default to torch.distributed, else the
    RANK/WORLD_SIZE env vars, else 0/1. ``epochs=None`` streams forever; with a finite
    number, iteration ends when a full batch can no longer be built (the rest stays
    in the buffer). ``buffer_docs`` documents are kept to choose from (nanochat: 1000),
    ``prefetch`` row groups are tokenized ahead. Other keyword arguments
    (``shuffle``, ``seed``, ``max_shard``, ``num_shards``, ``base_url``, ``dataset``,
    ``queue_size``, ``fetch_ahead``, ...) go to ``iter_batches``.
    """

    def __init__(self, split: str, tokenizer: Tokenizer, batch_size: int, seq_len: int, *,
                 data_dir: Any = None, rank: int | None = None, world_size: int | None = None,
                 epochs: int | None = None, buffer_docs: int = 1000, prefetch: int = 2,
                 **stream_kwargs: Any) -> None:
        if split not in SPLITS:
            raise LoaderError(f"unknown split {split!r}: use 'train' or 'val'")
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len),
                            ("buffer_docs", buffer_docs), ("prefetch", prefetch)):
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
        self.buffer_docs, self.prefetch, self.epochs = buffer_docs, prefetch, epochs
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
        it = _TokenIterator(self, stride, state)
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


# -- device transfer ---------------------------------------------------------------------------

def _is_batch(obj: Any) -> bool:
    return isinstance(obj, torch.Tensor) or (
        isinstance(obj, (tuple, list)) and len(obj) > 0 and all(isinstance(t, torch.Tensor) for t in obj))


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=batch.device.type == "cpu" and batch.is_pinned())
    return type(batch)(_move(t, device) for t in batch)


def to_device(batches: Any, device: str | torch.device = "cuda") -> Any:
    """Move one batch (a tensor or a tuple of tensors), or every batch of an iterable, to ``device``.

    For an iterable on CUDA this returns a ``CudaPrefetcher``: batch ``i+1`` is copied
    from pinned host memory on a side stream while step ``i`` computes. On CPU the
    iterable's own iterator is returned (no copies, no cost).
    """
    dev = torch.device(device)
    if _is_batch(batches):
        return _move(batches, dev)
    if dev.type == "cpu":
        return iter(batches)
    if dev.type == "cuda":
        return CudaPrefetcher(batches, dev)
    return (_move(b, dev) for b in batches)


class CudaPrefetcher:
    """Iterator of device batches that keeps the next batch's host-to-device copy in flight.

    Unpinned CPU tensors are first copied into reusable pinned buffers (two sets, used in
    turn; a set is rewritten only after its previous copy has finished). Copies run with
    ``non_blocking=True`` on a side stream; the consumer's stream waits on an event, and
    ``record_stream`` keeps the caching allocator from reusing the memory too early.

    Reading one batch ahead would make the source's resume state one batch ahead too, so:
    a ``TokenDataset`` (or its iterator) is told to report the state of the batch last
    *returned* here (its ``state_dict()`` stays exact), and for other sources with a
    ``state_dict()`` (e.g. torchdata's ``StatefulDataLoader``) it is captured after each
    batch and returned by this object's ``state_dict()``. ``wait_s``: time spent waiting
    for the source (data wait).
    """

    def __init__(self, batches: Iterable[Any], device: torch.device | str = "cuda", slots: int = 2) -> None:
        if not torch.cuda.is_available():
            raise LoaderError("to_device: a CUDA device was asked for but torch.cuda.is_available() is False")
        dev = torch.device(device)
        self.device = dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
        self._it = iter(batches)
        self._snap = getattr(self._it, "snapshot", None)  # our _TokenIterator
        has_state = self._snap is None and callable(getattr(batches, "state_dict", None))
        self._source_state = batches.state_dict if has_state else None
        self._side = torch.cuda.Stream(self.device)
        self._pinned: list[list[torch.Tensor]] = [[] for _ in range(slots)]
        self._copied: list[Any] = [None] * slots  # event recorded after each slot's last copy
        self._k = 0
        self._ahead: Any = None
        self._state: Any = None
        self._started = False
        self.wait_s = 0.0
        self.batches = 0

    def __iter__(self) -> CudaPrefetcher:
        return self

    def _pinned_src(self, slot: int, i: int, t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "cpu" or t.is_pinned():
            return t
        bufs = self._pinned[slot]
        if i == len(bufs):
            bufs.append(torch.empty(0, dtype=t.dtype, pin_memory=True))
        if bufs[i].shape != t.shape or bufs[i].dtype != t.dtype:
            bufs[i] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return bufs[i].copy_(t)

    def _stage(self) -> Any:
        t0 = time.perf_counter()
        try:
            batch = next(self._it)
        except StopIteration:
            return None
        finally:
            self.wait_s += time.perf_counter() - t0
        state = self._snap() if self._snap is not None else (
            self._source_state() if self._source_state is not None else None)
        single = isinstance(batch, torch.Tensor)
        tensors = (batch,) if single else tuple(batch)
        slot = self._k % len(self._pinned)
        self._k += 1
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()  # that slot's pinned buffers are free again
        srcs = [self._pinned_src(slot, i, t) for i, t in enumerate(tensors)]
        with torch.cuda.stream(self._side):
            out = tuple(s.to(self.device, non_blocking=True) for s in srcs)
            done = torch.cuda.Event()
            done.record(self._side)
        self._copied[slot] = done
        return (out[0] if single else out), done, state

    def __next__(self) -> Any:
        if not self._started:
            self._started = True
            if self._snap is not None:
                self._it.hold(self._snap())
            self._ahead = self._stage()
        if self._ahead is None:
            self.close()
            raise StopIteration
        out, done, state = self._ahead
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        for t in (out,) if isinstance(out, torch.Tensor) else out:
            t.record_stream(current)
        self._state = state
        if self._snap is not None:
            self._it.hold(state)  # the source now reports the batch we return
        self._ahead = self._stage()  # the next copy overlaps the caller's step on this batch
        self.batches += 1
        return out

    def state_dict(self) -> Any:
        """The source's resume state as of the last batch returned (None before the first)."""
        st = self._state
        return st.state_dict() if isinstance(st, _Snapshot) else st

    def close(self) -> None:
        """Drop the staged batch and close the source iterator if it can be closed."""
        self._ahead = None
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
