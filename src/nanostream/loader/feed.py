"""One source's side of a ``TokenDataset`` pipeline: its tokenize thread, its packing buffer, its resume point.

The tokenize thread (``_tokenize_ahead``) pulls row groups from the source's stream and
has them tokenized ahead into flat numpy arrays, in pieces of ``PIECE_DOCS`` documents
handed over in order as each is ready (a bounded queue of about ``prefetch`` row groups);
the encoding threads (``encode.encoding``: gigatoken's flat arrays, or tiktoken text by text)
always have the next row group queued behind the current one. A ``Feed`` is what the
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
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..text.tokenizer import Tokenizer
from .encode import encoding
from .packing import BestFitPacker, BufferSnapshot
from .threads import _End, _get, _put, background_thread

if TYPE_CHECKING:
    from ..streaming.plan import Position

PIECE_DOCS = 128  # documents moved into the packing buffer at a time (and encoded as one task by tiktoken)
PIECES_AHEAD = 8  # tokenized pieces queued ahead per row group of ``prefetch`` (1024 documents)


class Seam:
    """Yielded by a source between the run's own data and what may follow it (``TokenDataset``: the
    next epochs, to make up a rank's batch count). The tokenize thread reads on past it only once
    the assembly thread, having packed every document before it, sets the pipeline's ``go`` event
    (``close()`` sets it too, so a thread waiting there stops at once)."""


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
    encode, task_docs, workers = encoding(tokenizer, dtype, PIECE_DOCS)
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
        return encoding(self._args[1], self._args[2], PIECE_DOCS)[2]

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
