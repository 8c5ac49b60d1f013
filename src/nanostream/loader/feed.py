"""One source's side of a ``TokenDataset`` pipeline: its tokenize thread, its packing buffer, its resume point.

The tokenize thread (``_tokenize_ahead``) pulls row groups from the source's stream and
has them tokenized ahead into flat numpy arrays, in pieces of ``PIECE_DOCS`` documents
handed over in order as each is ready (a bounded queue of about ``prefetch`` row groups);
a ``BPETokenizer`` is driven text by text on its ``num_threads`` threads, the next row
group always queued behind the current one (``_encoding``). A ``Feed`` is what the
assembly thread (``pipeline.py``) packs from: ``refill`` moves the next piece into the
source's ``BestFitPacker`` (one piece at a time, as nanochat's loader does: the first batch
waits for ``buffer_docs`` documents and one piece, not for whole row groups), and ``part``
is the source's resume point (``Part``): the position of the last row group moved in
whole, how many documents of the next one it holds (``skip``), the buffer and counters.
A mix has one feed per source. Nothing here imports torch.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LoaderError
from ..text.tokenizer import BPETokenizer, Tokenizer, flat_of
from .packing import BestFitPacker, BufferSnapshot, DocBytes, bos_first, join_docs
from .threads import _End, _get, _put, background_thread

if TYPE_CHECKING:
    from ..streaming.plan import Position

PIECE_DOCS = 128  # documents moved into the packing buffer at a time (and encoded as one task by tiktoken)
FLAT_TASK_PIECES = 4  # pieces encoded as one task by a flat encoder (fewer, larger calls)
PIECES_AHEAD = 8  # tokenized pieces queued ahead per row group of ``prefetch`` (1024 documents)


class Seam:
    """Yielded by a source between the run's own data and what may follow it (``TokenDataset``: the
    next epochs, to make up a rank's batch count). The tokenize thread reads on past it only once
    the assembly thread, having packed every document before it, sets the pipeline's ``go`` event
    (``close()`` sets it too, so a thread waiting there stops at once)."""


Encode = Callable[[list[str]], list[tuple[np.ndarray, np.ndarray]]]


def _encoding(tokenizer: Tokenizer, dtype: np.dtype) -> tuple[Encode, int, int]:
    """How to encode: (a task's texts -> its pieces' BOS-first ``(tokens, lengths)``, documents per
    task, encoding threads).

    A tokenizer with ``encode_flat`` (gigatoken, ``ByteTokenizer``, ...) gives each task's ids as
    one array plus offsets; BOS is inserted by numpy, and no Python int is made per token. A
    ``BPETokenizer`` left on tiktoken (whose methods are the stock ones) is driven text by text
    on its ``num_threads`` threads, each document turned into bytes right after it is encoded
    (cache-hot, in a GIL hold of microseconds between GIL-free encodes). Any other tokenizer gets
    one ``encode_batch`` call per task, on one thread. Tasks are ``PIECE_DOCS`` documents, or
    ``FLAT_TASK_PIECES`` pieces for flat encoders (fewer calls; each still handed over piece by piece).
    """
    cls = type(tokenizer)
    threads = max(1, int(getattr(tokenizer, "num_threads", 1) or 1))
    if (isinstance(tokenizer, BPETokenizer) and tokenizer.fast is None and cls.encode_batch is BPETokenizer.encode_batch
            and cls.encode is BPETokenizer.encode):
        encode, to_bytes = tokenizer.encode, DocBytes(tokenizer.bos_id, dtype)
        return (lambda texts: [_doc_bytes(map(encode, texts), to_bytes, len(texts))]), PIECE_DOCS, threads
    flat = getattr(tokenizer, "encode_flat", None)
    bos = tokenizer.bos_id
    if flat is None or not _flat_is_current(cls):
        return (lambda texts: _pieces(flat_of(_checked_lists(tokenizer.encode_batch(texts), texts)), bos, dtype)), \
            PIECE_DOCS, 1
    return (lambda texts: _pieces(_checked_flat(flat(texts), texts), bos, dtype)), PIECE_DOCS * FLAT_TASK_PIECES, \
        threads if isinstance(tokenizer, BPETokenizer) else 1


def _flat_is_current(cls: type) -> bool:
    """Whether ``encode_flat`` is defined no higher up than ``encode_batch``: a subclass that overrides only
    ``encode_batch`` (to change its ids) is encoded through it."""
    def owner(name: str) -> type | None:
        return next((k for k in cls.__mro__ if name in vars(k)), None)

    flat, batch = owner("encode_flat"), owner("encode_batch")
    return flat is None or batch is None or issubclass(flat, batch)


def doc_arrays(tokenizer: Tokenizer, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``texts`` encoded as the loader does, as one BOS-first ``(tokens, lengths)``."""
    encode = _encoding(tokenizer, dtype)[0]
    parts = [p for a in range(0, len(texts), PIECE_DOCS) for p in encode(texts[a:a + PIECE_DOCS])]
    if not parts:
        return np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64)
    return np.concatenate([t for t, _ in parts]), np.concatenate([n for _, n in parts])


def _checked_lists(lists: list, texts: list[str]) -> list:
    if len(lists) != len(texts):
        raise LoaderError(f"the tokenizer returned {len(lists)} id lists for {len(texts)} texts")
    return lists


def _checked_flat(flat: tuple[np.ndarray, np.ndarray], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if len(flat[1]) != len(texts) + 1:
        raise LoaderError(f"the tokenizer returned {len(flat[1]) - 1} documents' offsets for {len(texts)} texts")
    return flat


def _pieces(flat: tuple[np.ndarray, np.ndarray], bos: int, dtype: np.dtype) -> list[tuple[np.ndarray, np.ndarray]]:
    """A task's ``(tokens, offsets)`` as BOS-first ``(tokens, lengths)`` per piece of ``PIECE_DOCS`` documents."""
    tokens, offsets = flat
    try:
        arrays = bos_first(tokens, offsets, bos, dtype)
    except ValueError as exc:
        raise LoaderError(f"the tokenizer returned an id outside the token dtype ({exc}); check its "
                          "vocab_size") from exc
    out, lengths = arrays
    ends = np.cumsum(lengths)
    cuts = list(range(PIECE_DOCS, len(lengths), PIECE_DOCS))
    bounds = [0, *(int(ends[c - 1]) for c in cuts), len(out)]
    docs = [0, *cuts, len(lengths)]
    return [(out[bounds[i]:bounds[i + 1]], lengths[docs[i]:docs[i + 1]]) for i in range(len(docs) - 1)]


def _doc_bytes(ids_of: Iterable[Sequence[int]], to_bytes: DocBytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs on an encoding thread: each document's ids as the bytes of its BOS-first token array, joined."""
    parts: list[bytes] = []
    lengths: list[int] = []
    for ids in ids_of:
        try:
            parts.append(to_bytes(ids))
        except ValueError as exc:
            raise LoaderError(f"the tokenizer returned an id outside the token dtype ({exc}); check its "
                              "vocab_size") from exc
        lengths.append(len(ids) + 1)
    if len(lengths) != n:
        raise LoaderError(f"the tokenizer returned {len(lengths)} id lists for {n} texts")
    return join_docs(parts, lengths, to_bytes.dtype)


def _tokenize_ahead(open_source: Callable[[], Iterator[Any]], tokenizer: Tokenizer, dtype: np.dtype,
                    q: queue.Queue, stop: threading.Event, go: threading.Event, skip: int,
                    shared: ThreadPoolExecutor | None = None) -> None:
    """Thread body: hands ``(position, tokens, lengths, taken)`` per piece of ``PIECE_DOCS``
    documents to the assembly thread, in order; ``taken`` counts the row group's documents
    handed over so far, None on its last piece. The first ``skip`` documents of the first row
    group are dropped (a resume inside it).

    Row group ``i+1``'s encoding tasks are queued on the encoding threads before we wait for
    row group ``i``'s, so those threads never wait for us. The encoding threads are joined and
    the stream closed before we return. A mix's feeds share one pool (``shared``, the
    pipeline's to shut down): then only this feed's own tasks are cancelled here.
    """
    background_thread()  # before starting the stream and encoding threads, which inherit it
    source = None
    encode, task_docs, workers = _encoding(tokenizer, dtype)
    pool = shared or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nanostream-encode")
    pending: deque[tuple[Position, int, list[Future]]] = deque()

    def hand_over(position: Position, taken: int, tasks: list[Future]) -> bool:
        if not tasks:  # an empty row group still moves the position on
            return _put(q, stop, (position, np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64), None))
        for i, task in enumerate(tasks):
            pieces = task.result()
            for j, (tokens, lens) in enumerate(pieces):
                taken += len(lens)
                last = i == len(tasks) - 1 and j == len(pieces) - 1
                if not _put(q, stop, (position, tokens, lens, None if last else taken)):
                    return False
        return True

    try:
        source = open_source()
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
            pending.append((batch.position, first, [pool.submit(encode, texts[a:a + task_docs])
                                                    for a in range(0, len(texts), task_docs)]))
            if len(pending) > 1 and not hand_over(*pending.popleft()):
                return
        while pending:
            if not hand_over(*pending.popleft()):
                return
        _put(q, stop, _End())
    except Exception as exc:  # noqa: BLE001  (handed to the assembly thread, then to the consumer)
        _put(q, stop, _End(exc))
    finally:
        if shared is None:
            pool.shutdown(wait=True, cancel_futures=True)
        else:
            for _, _, tasks in pending:
                for task in tasks:
                    task.cancel()
        close = getattr(source, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class Part:
    """One source's resume point at a batch boundary (``buffer`` references immutable arrays: no copies)."""

    position: Position | None  # stream position of the last row group moved into the buffer whole
    skip: int  # documents of the row group after it moved into the buffer already ...
    partial: Position | None  # ... that row group, when ``skip`` > 0
    buffer: BufferSnapshot
    stats: dict[str, int]  # ``PackStats`` counters
    buffered_docs: int


class Feed:
    """A source's tokenize thread, the queue of its tokenized pieces, and its packer."""

    def __init__(self, open_source: Callable[[], Iterator[Any]], tokenizer: Tokenizer, dtype: np.dtype,
                 packer: BestFitPacker, *, prefetch: int, position: Position | None, skip: int = 0,
                 partial: Position | None = None) -> None:
        self.packer = packer
        self.position, self.skip, self.partial = position, skip, partial  # ``partial``: the row group ``skip`` counts in
        self.seam: Seam | None = None  # met and not passed yet: refill says "no more data"
        self.go = threading.Event()  # read on past a Seam (set by the assembly thread, or by close)
        self.tokens: queue.Queue = queue.Queue(maxsize=prefetch * PIECES_AHEAD)
        self._args = (open_source, tokenizer, dtype, self.tokens)
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def encoding_threads(self) -> int:
        return _encoding(self._args[1], self._args[2])[2]

    def start(self, stop: threading.Event, name: str, pool: ThreadPoolExecutor | None = None) -> None:
        """Start the tokenize thread; ``stop`` (the pipeline's) ends it; ``pool``: encoding threads shared
        with the other feeds of a mix (else the thread has its own)."""
        self._stop = stop
        open_source, tokenizer, dtype, tokens = self._args
        self.thread = threading.Thread(target=_tokenize_ahead, name=name, daemon=True,
                                       args=(open_source, tokenizer, dtype, tokens, stop, self.go, self.skip, pool))
        self.thread.start()

    def part(self) -> Part:
        p = self.packer
        return Part(self.position, self.skip, self.partial if self.skip else None, p.snapshot(), p.stats.as_dict(),
                    p.n_docs)

    def begin(self) -> tuple[Position | None, int, Position | None]:
        """Start a batch: a transaction on the packer, and the resume fields to go back to."""
        self.packer.begin()
        return self.position, self.skip, self.partial

    def rollback(self, saved: tuple[Position | None, int, Position | None]) -> None:
        self.packer.rollback()  # the buffer matches the last batch finished
        self.position, self.skip, self.partial = saved

    def refill(self) -> bool:
        """Move the next tokenized piece into the packer; False at the end of the data (or at a Seam)."""
        if self.seam is not None:
            return False
        assert self.thread is not None
        item = _get(self.tokens, self._stop, self.thread, "tokenizer")
        if isinstance(item, Seam):
            self.seam = item
            return False
        if isinstance(item, _End):
            if item.error is not None:
                raise item.error
            self.tokens.put(item)  # keep answering "finished" if asked again (the queue has room)
            return False
        position, tokens, lengths, taken = item
        self.packer.add(tokens, lengths, position)  # tagged: which row group each document came from
        if taken is None:
            self.position, self.skip = position, 0
        else:
            self.skip, self.partial = taken, position
        return True
