"""Batches onto the accelerator: ``to_device``, ``CudaPrefetcher`` and the pinned ring. On CUDA the copy of
batch ``i+1`` overlaps step ``i`` and the consumer's stream waits on each batch's event (no host sync)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from ..errors import LoaderError
from .dataset import TokenDataset
from .pipeline import TokenIterator
from .resume import Mark
from .threads import Channel, Receiver, background_thread

__all__ = ["CudaPrefetcher", "PinnedRowsSink", "to_device"]

EVENT_POLL_S = 0.0002  # how often a producer thread looks whether a copy it waits for has finished


def _wait_host(event: torch.cuda.Event) -> None:
    """Wait on this (producer) thread for ``event`` by polling ``query()``: no blocking CUDA call."""
    while not event.query():
        time.sleep(EVENT_POLL_S)


def _is_batch(obj: Any) -> bool:
    return isinstance(obj, torch.Tensor) or (
        isinstance(obj, (tuple, list)) and len(obj) > 0 and all(isinstance(t, torch.Tensor) for t in obj))


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=batch.device.type == "cpu" and batch.is_pinned())
    return type(batch)(_move(t, device) for t in batch)


def _cuda(device: str | torch.device) -> torch.device:
    if not torch.cuda.is_available():
        raise LoaderError("to_device: a CUDA device was asked for but torch.cuda.is_available() is False")
    dev = torch.device(device)
    return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())


def to_device(batches: Any, device: str | torch.device = "cuda", ahead: int = 2) -> Any:
    """Move one batch (a tensor or a tuple of tensors), or every batch of an iterable, to ``device``: on CUDA
    an iterator whose copies overlap the caller's compute, ``ahead`` batches in flight (``close()`` stops it)."""
    dev = torch.device(device)
    if _is_batch(batches):
        return _move(batches, dev)
    if dev.type == "cpu":
        return iter(batches)
    if dev.type == "cuda":
        if isinstance(batches, TokenDataset):
            return token_batches(batches, dev)
        return CudaPrefetcher(batches, dev, ahead=ahead)
    return (_move(b, dev) for b in batches)


def token_batches(ds: TokenDataset, device: torch.device, note: Any = None) -> Any:
    """A new ``TokenDataset`` iterator: on CUDA its batches packed into the pinned ring, else CPU tensors."""
    sink = PinnedRowsSink(ds.batch_size, ds.seq_len + 1, _cuda(device), slots=ds.read_ahead.batches + 2) \
        if device.type == "cuda" else None
    return ds._iterate(sink, note)


class PinnedRowsSink:
    """A ``pipeline.Sink`` of ``slots`` pinned ``(batch_size, row_len)`` buffers: ``finish`` starts the packed
    rows' copy on the side stream, splits them there into ``inputs``/``targets`` and records an event;
    ``rows`` lends a buffer again only once its copy has finished (a wait on the assembly thread)."""

    def __init__(self, batch_size: int, row_len: int, device: torch.device, slots: int = 4) -> None:
        self.device = device
        self.side = torch.cuda.Stream(device)
        self._host = [torch.empty((batch_size, row_len), dtype=torch.int64, pin_memory=True)
                      for _ in range(max(2, slots))]
        self._views = [t.numpy() for t in self._host]
        self._copied: list[torch.cuda.Event | None] = [None] * len(self._host)
        self._k = 0

    def rows(self) -> np.ndarray:
        slot = self._k % len(self._host)
        done = self._copied[slot]
        if done is not None:
            _wait_host(done)  # this buffer's previous copy has finished: it may be rewritten
        return self._views[slot]

    def finish(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event]:
        slot = self._k % len(self._host)
        self._k += 1
        with torch.cuda.device(self.device), torch.cuda.stream(self.side):
            block = self._host[slot].to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.side)
            x, y = block[:, :-1].contiguous(), block[:, 1:].contiguous()
            ready = torch.cuda.Event()
            ready.record(self.side)
        self._copied[slot] = done
        return x, y, ready

    def ready(self, item: tuple[torch.Tensor, torch.Tensor, torch.cuda.Event]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, ready = item
        current = torch.cuda.current_stream(self.device)
        current.wait_event(ready)
        x.record_stream(current)
        y.record_stream(current)
        return x, y


class _PinnedRing:
    """Reusable pinned staging buffers for unpinned CPU tensors, ``slots`` sets used in turn."""

    def __init__(self, slots: int) -> None:
        self._bufs: list[list[torch.Tensor]] = [[] for _ in range(slots)]
        self._copied: list[torch.cuda.Event | None] = [None] * slots
        self._k = 0

    def stage(self, tensors: tuple[torch.Tensor, ...]) -> tuple[int, list[torch.Tensor]]:
        slot = self._k % len(self._bufs)
        self._k += 1
        done = self._copied[slot]
        if done is not None:
            _wait_host(done)  # that slot's buffers are free again
        bufs, out = self._bufs[slot], []
        for i, t in enumerate(tensors):
            if t.device.type != "cpu" or t.is_pinned():
                out.append(t)
                continue
            while len(bufs) <= i:
                bufs.append(torch.empty(0, dtype=t.dtype, pin_memory=True))
            if bufs[i].shape != t.shape or bufs[i].dtype != t.dtype:
                bufs[i] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            out.append(bufs[i].copy_(t))
        return slot, out

    def copied(self, slot: int, event: torch.cuda.Event) -> None:
        self._copied[slot] = event


def _prefetch(it: Iterator[Any], out: Channel, device: torch.device, side: torch.cuda.Stream, slots: int,
              capture: Any) -> None:
    """Thread body: batches of ``it`` on their way to ``device``, their events and resume states, onto ``out``."""
    background_thread()
    ring = _PinnedRing(slots)
    try:
        with torch.cuda.device(device), torch.cuda.stream(side):
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    out.put(StopIteration())
                    return
                state = capture() if capture is not None else None
                single = isinstance(batch, torch.Tensor)
                slot, srcs = ring.stage((batch,) if single else tuple(batch))
                moved = tuple(s.to(device, non_blocking=True) for s in srcs)
                done = torch.cuda.Event()
                done.record(side)
                ring.copied(slot, done)
                if not out.put((moved[0] if single else moved, done, state)):
                    return
    except Exception as exc:  # noqa: BLE001  (raised in the consumer's next(), unchanged)
        out.put(exc)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


class CudaPrefetcher(Receiver):
    """Iterator of CUDA batches from any iterable of CPU tensors (or tuples of them), read ``ahead`` batches ahead
    on a thread. The resume state follows the batch last *returned*: a ``TokenDataset`` iterator is told to
    report it (``hold``); another source's ``state_dict()`` is captured after each batch (``state_dict()``)."""

    def __init__(self, batches: Iterable[Any], device: torch.device | str = "cuda", ahead: int = 2) -> None:
        if not isinstance(ahead, int) or ahead < 1:
            raise LoaderError(f"to_device ahead must be an integer >= 1, got {ahead!r}")
        self.device = _cuda(device)
        self._it = iter(batches)
        self._tokens = self._it if isinstance(self._it, TokenIterator) else None
        capture = self._tokens.snapshot if self._tokens is not None else getattr(batches, "state_dict", None)
        if self._tokens is not None:
            self._tokens.hold(self._tokens.snapshot())  # nothing returned yet
        self._side = torch.cuda.Stream(self.device)
        super().__init__(ahead)
        self._state: Any = None
        self._thread = threading.Thread(target=_prefetch, name="nanostream-to-device", daemon=True,
                                        args=(self._it, self._out, self.device, self._side, ahead + 2, capture))
        self._thread.start()

    def _received(self, item: tuple[Any, torch.cuda.Event, Any]) -> Any:
        out, done, state = item
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        for t in (out,) if isinstance(out, torch.Tensor) else out:
            t.record_stream(current)
        self._state = state
        if self._tokens is not None:
            self._tokens.hold(state)  # the source now reports the batch we return
        return out

    def state_dict(self) -> Any:
        """The source's resume state as of the last batch returned (None before the first)."""
        st = self._state
        return st.state_dict() if isinstance(st, Mark) else st
