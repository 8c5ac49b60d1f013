"""Tokenizing ahead and batch assembly for ``TokenDataset``, on background threads (numpy only).

Owns the producer side of a ``TokenDataset`` iterator, so that the consumer's ``next()``
is a queue pop of a finished batch:

* the tokenize thread pulls row groups from ``iter_batches`` and has them tokenized
  ahead into flat numpy arrays, in pieces of ``PIECE_DOCS`` documents handed over in
  order as each is ready (a bounded queue of about ``prefetch`` row groups); a
  ``BPETokenizer`` is driven text by text on its ``num_threads`` threads, the next row
  group always queued behind the current one (see ``_encoding``). The packer refills
  one piece at a time, as nanochat's loader does (128 documents): the first batch waits
  for ``buffer_docs`` documents and one piece, not for whole row groups;
* the assembly thread packs rows with ``packing.BestFitPacker`` (BOS-aligned best fit,
  no padding) straight into the rows buffer a *sink* lends it, has the sink turn them
  into the batch handed over (CPU tensors, or a device copy started from pinned
  memory: ``device.py``), and puts ``(batch, Mark)`` on a bounded queue of ``ahead``
  finished batches. The ``Mark`` is the resume point right after that batch, so the
  consumer can report the state of the batch it *returned*, however far ahead we are.

Every error (stream, tokenizer, sink) reaches the consumer unchanged through the queue;
``close()`` stops and joins both threads and the tokenizer's encoding threads. Nothing
here imports torch.

Scheduling: with ``set_loader_idle(True)`` (``ThreadPlan(loader_idle=True).apply()``) the
producer threads, and the threads they start (encoding pool, the stream's reader and loop),
run under Linux ``SCHED_IDLE``: they get every CPU cycle the training thread leaves, and never
make it wait for a core. Off by default: a loader at idle priority starves on a host whose
CPUs other processes keep busy.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import LoaderError
from ..text.tokenizer import BPETokenizer, Tokenizer
from .packing import BestFitPacker, BufferSnapshot, DocBytes, join_docs

if TYPE_CHECKING:
    from ..streaming.plan import Position

log = logging.getLogger(__name__)
_loader_idle = False


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


PIECE_DOCS = 128  # documents encoded as one task and moved into the packing buffer at a time
PIECES_AHEAD = 8  # tokenized pieces queued ahead per row group of ``prefetch`` (1024 documents)
POLL_S = 0.05  # how often a blocked thread looks at its stop flag


class _End:
    """Queue marker: the data finished (``error`` None) or failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Seam:
    """Yielded by a source between the run's own data and what may follow it (``TokenDataset``: the
    next epochs, to make up a rank's batch count). The tokenize thread reads on past it only once
    the assembly thread, having packed every document before it, sets the pipeline's ``go`` event
    (``close()`` sets it too, so a thread waiting there stops at once)."""


class _Stopped(Exception):
    """Raised inside the assembly thread when ``close()`` asked it to stop."""


def _put(q: queue.Queue, stop: threading.Event, item: object) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event, producer: threading.Thread, what: str) -> Any:
    """The next item of ``q``; raises ``_Stopped`` on stop, LoaderError if ``producer`` died silently."""
    try:
        return q.get_nowait()  # the common case when producers are ahead: no timed wait
    except queue.Empty:
        pass
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            if not producer.is_alive() and q.empty():
                raise LoaderError(f"the {what} thread stopped without a result") from None


def _encoding(tokenizer: Tokenizer) -> tuple[Callable[[list[str]], Iterable[Sequence[int]]], int]:
    """How to encode a piece: (texts -> their ids, encoding threads).

    A ``BPETokenizer`` (whose ``encode_batch`` is the stock one: ``encode`` of each text) is
    driven text by text on ``num_threads`` persistent threads, one task per piece: no thread
    start or end-of-batch wait per row group, and each document is turned into bytes right
    after it is encoded (cache-hot, in a GIL hold of microseconds between GIL-free encodes).
    Any other tokenizer gets one ``encode_batch`` call per piece, on one thread.
    """
    cls = type(tokenizer)
    if (isinstance(tokenizer, BPETokenizer) and cls.encode_batch is BPETokenizer.encode_batch
            and cls.encode is BPETokenizer.encode):
        encode = tokenizer.encode
        return (lambda texts: map(encode, texts)), max(1, int(tokenizer.num_threads))
    return tokenizer.encode_batch, 1


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
                    q: queue.Queue, stop: threading.Event, go: threading.Event, skip: int) -> None:
    """Thread body: hands ``(position, tokens, lengths, taken)`` per piece of ``PIECE_DOCS``
    documents to the assembly thread, in order; ``taken`` counts the row group's documents
    handed over so far, None on its last piece. The first ``skip`` documents of the first row
    group are dropped (a resume inside it).

    Row group ``i+1``'s encoding tasks are queued on the encoding threads before we wait for
    row group ``i``'s, so those threads never wait for us. The encoding threads are joined and
    the stream closed before we return.
    """
    background_thread()  # before starting the stream and encoding threads, which inherit it
    source = None
    encode, workers = _encoding(tokenizer)
    to_bytes = DocBytes(tokenizer.bos_id, dtype)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nanostream-encode")

    def hand_over(position: Position, taken: int, tasks: list[Future]) -> bool:
        if not tasks:  # an empty row group still moves the position on
            return _put(q, stop, (position, np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64), None))
        for i, task in enumerate(tasks):
            parts, lengths = task.result()
            tokens, lens = join_docs(parts, lengths, dtype)
            taken += len(lens)
            if not _put(q, stop, (position, tokens, lens, None if i == len(tasks) - 1 else taken)):
                return False
        return True

    try:
        source = open_source()
        pending: deque[tuple[Position, int, list[Future]]] = deque()
        for batch in source:
            if stop.is_set():
                return
            if isinstance(batch, Seam):
                while pending:
                    if not hand_over(*pending.popleft()):
                        return
                if not _put(q, stop, batch):
                    return
                go.wait()
                if stop.is_set():
                    return
                continue
            texts, first, skip = list(batch.texts)[skip:], skip, 0
            pending.append((batch.position, first, [pool.submit(_encode_task, encode, to_bytes, texts[a:a + PIECE_DOCS])
                                                    for a in range(0, len(texts), PIECE_DOCS)]))
            if len(pending) > 1 and not hand_over(*pending.popleft()):
                return
        while pending:
            if not hand_over(*pending.popleft()):
                return
        _put(q, stop, _End())
    except Exception as exc:  # noqa: BLE001  (handed to the assembly thread, then to the consumer)
        _put(q, stop, _End(exc))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        close = getattr(source, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class Mark:
    """The resume point right after one batch: what ``state_dict()`` reports once it is returned.

    ``buffer`` references immutable token arrays (no copies); ``stats`` are ``PackStats`` counters.
    """

    position: Position | None  # stream position of the last row group moved into the buffer whole
    skip: int  # documents of the row group after it moved into the buffer already ...
    partial: Position | None  # ... that row group, when ``skip`` > 0
    buffer: BufferSnapshot
    stats: dict[str, int]
    batches: int
    buffered_docs: int


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
    """The two producer threads of one ``TokenDataset`` iterator and the queue of finished batches.

    Takes ownership of ``packer`` (already holding the resumed buffer, if any). ``mark`` is the
    resume point before the first batch (``skip``: documents of the row group after ``position``,
    ``partial``, that it holds already). ``get()`` returns ``(batch, Mark)``, or None at the end
    of the data (the batch the data ended in is dropped, its documents stay buffered) or once
    ``limit`` batches (counting the resumed run's ``batches``) have been made. At a ``Seam`` the
    buffer is drained first; only if that leaves the batch count short of ``limit`` does packing
    go on past it (the batch it ran out in is packed again, with the documents that follow).
    """

    def __init__(self, open_source: Callable[[], Iterator[Any]], tokenizer: Tokenizer, dtype: np.dtype,
                 packer: BestFitPacker, sink: Sink, *, position: Position | None, batches: int,
                 prefetch: int, ahead: int, limit: int | None = None, skip: int = 0,
                 partial: Position | None = None) -> None:
        self._packer, self._sink, self._limit = packer, sink, limit
        self._seam: Seam | None = None  # met and not passed yet: refill says "no more data"
        self._position, self._skip, self._batches = position, skip, batches
        self._partial = partial  # the row group ``skip`` counts in
        self.mark = self._mark()
        self.wait_s = 0.0  # time the consumer blocked in get()
        self._stop = threading.Event()
        self._go = threading.Event()  # read on past a Seam (set by the assembly thread, or by close)
        self._tokens: queue.Queue = queue.Queue(maxsize=prefetch * PIECES_AHEAD)
        self._out: queue.Queue = queue.Queue(maxsize=ahead)
        self._tokenizer_thread = threading.Thread(
            target=_tokenize_ahead, name="nanostream-tokenize", daemon=True,
            args=(open_source, tokenizer, dtype, self._tokens, self._stop, self._go, skip))
        self._thread = threading.Thread(target=self._assemble, name="nanostream-assemble", daemon=True)
        self._tokenizer_thread.start()
        self._thread.start()

    def _mark(self) -> Mark:
        p = self._packer
        return Mark(self._position, self._skip, self._partial if self._skip else None, p.snapshot(),
                    p.stats.as_dict(), self._batches, p.n_docs)

    def _refill(self) -> bool:
        if self._seam is not None:
            return False
        item = _get(self._tokens, self._stop, self._tokenizer_thread, "tokenizer")
        if isinstance(item, Seam):
            self._seam = item
            return False
        if isinstance(item, _End):
            if item.error is not None:
                raise item.error
            self._tokens.put(item)  # keep answering "finished" if asked again (the queue has room)
            return False
        position, tokens, lengths, taken = item
        self._packer.add(tokens, lengths, position)  # tagged: which row group each document came from
        if taken is None:
            self._position, self._skip = position, 0
        else:
            self._skip, self._partial = taken, position
        return True

    def _assemble(self) -> None:
        """Thread body: pack, finish and queue batches until the data ends, fails or we are stopped."""
        background_thread()
        packer, sink = self._packer, self._sink
        try:
            while not self._stop.is_set():
                if self._limit is not None and self._batches >= self._limit:
                    _put(self._out, self._stop, _End())
                    return
                rows = sink.rows()
                position, skip, partial = self._position, self._skip, self._partial
                packer.begin()
                finished = False
                try:
                    for row in rows:
                        if not packer.fill_row(row, self._refill):
                            finished = True
                            break
                except BaseException:
                    packer.rollback()  # the buffer matches the last batch finished
                    self._position, self._skip, self._partial = position, skip, partial
                    raise
                if finished:  # the data ended inside this batch: drop it, keep its documents buffered
                    packer.rollback()
                    self._position, self._skip, self._partial = position, skip, partial
                    seam, self._seam = self._seam, None
                    if seam is not None and self._limit is not None and self._batches < self._limit:
                        self._go.set()  # short of the limit: pack this batch again, reading on
                        continue
                    _put(self._out, self._stop, _End())
                    return
                packer.commit()
                self._batches += 1
                mark = self._mark()
                if not _put(self._out, self._stop, (sink.finish(rows), mark)):
                    return
        except _Stopped:
            return
        except Exception as exc:  # noqa: BLE001  (raised in the consumer's next(), unchanged)
            _put(self._out, self._stop, _End(exc))

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
        """Stop and join both threads (idempotent; safe from any thread, including our own)."""
        self._stop.set()
        self._go.set()
        me = threading.current_thread()
        for thread in (self._thread, self._tokenizer_thread):
            if thread is not me:
                thread.join()
