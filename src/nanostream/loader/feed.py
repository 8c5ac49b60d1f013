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
Every document enters the buffer tagged with its row group's position and its number there,
so a resume state can name it instead of holding its tokens (``docrefs.py``).

A resumed feed first rebuilds its buffer (``restore``: runs of a resume state, oldest first):
the tokenize thread reads the row groups the runs name again -- the stream yields them first
(``replay``) -- tokenizes those documents, and hands them over in one ``Restored`` item, which
the assembly thread adds to the packer before its first batch (``prime``). Until then the
feed's resume point is the runs themselves. A mix has one feed per source. Nothing here
imports torch.
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

from ..errors import LoaderError
from ..streaming.plan import Position
from ..text.tokenizer import Tokenizer
from .docrefs import Run
from .encode import doc_arrays, encoding
from .packing import BestFitPacker, BufferSnapshot, PackStats
from .threads import _End, _get, _put, background_thread

if TYPE_CHECKING:
    from collections.abc import Sequence

PIECE_DOCS = 128  # documents moved into the packing buffer at a time (and encoded as one task by tiktoken)
PIECES_AHEAD = 8  # tokenized pieces queued ahead per row group of ``prefetch`` (1024 documents)


def replay_keys(runs: Sequence[Run]) -> tuple[tuple[int, int], ...]:
    """The ``(shard, row_group)`` the runs name (each once, sorted): what a resumed stream reads first."""
    return tuple(sorted({(r.tag[1], r.tag[2]) for r in runs if not r.inline and r.tag is not None}))


class Restored:
    """The tokenize thread's first item for a resumed feed: the buffer's documents, run by run, as
    ``(tag, tokens, lengths, ids)`` (``ids`` None for inline runs)."""

    def __init__(self, runs: list[tuple[Position | None, np.ndarray, np.ndarray, np.ndarray | None]]) -> None:
        self.runs = runs


def _restored(runs: Sequence[Run], batches: Iterator[Any], tokenizer: Tokenizer, dtype: np.dtype) -> Restored:
    """Read the replayed row groups from ``batches`` (the stream yields them first), tokenize the documents
    the runs name, as the loader does, and return them in the runs' order."""
    wanted: dict[tuple[int, int], set[int]] = {}
    for r in runs:
        if not r.inline:
            assert r.tag is not None and r.ids is not None
            wanted.setdefault((r.tag[1], r.tag[2]), set()).update(int(i) for i in r.ids)
    texts: dict[tuple[int, int], dict[int, str]] = {}
    for _ in range(len(wanted)):
        batch = next(batches, None)
        if batch is None or not getattr(batch, "replay", False):
            raise LoaderError("the stream did not read the resume state's row groups again first")
        key = (batch.shard, batch.row_group)
        docs = batch.texts
        beyond = [i for i in wanted[key] if i >= len(docs)]
        if beyond:
            raise LoaderError(f"the resume state names document {max(beyond)} of shard {key[0]}, row group "
                              f"{key[1]}, which has {len(docs)}: a state of other data? resume with the same files")
        texts[key] = {i: docs[i] for i in wanted[key]}
    order = [texts[(r.tag[1], r.tag[2])][int(i)] for r in runs if not r.inline  # type: ignore[index]
             for i in r.ids]  # type: ignore[union-attr]
    tokens, lengths = doc_arrays(tokenizer, order, dtype)
    out, doc, tok = [], 0, 0
    for r in runs:
        tag = Position(*r.tag) if r.tag is not None else None
        if r.inline:
            out.append((tag, np.asarray(r.tokens, dtype=dtype), np.asarray(r.lengths, dtype=np.int64), None))
            continue
        n = len(r)
        size = int(lengths[doc:doc + n].sum())
        out.append((tag, tokens[tok:tok + size], lengths[doc:doc + n], np.asarray(r.ids, dtype=np.int64)))
        doc, tok = doc + n, tok + size
    return Restored(out)


class Seam:
    """Yielded by a source between the run's own data and what may follow it (``TokenDataset``: the
    next epochs, to make up a rank's batch count). The tokenize thread reads on past it only once
    the assembly thread, having packed every document before it, sets the pipeline's ``go`` event
    (``close()`` sets it too, so a thread waiting there stops at once)."""


def _tokenize_ahead(open_source: Callable[[], Iterator[Any]], tokenizer: Tokenizer, dtype: np.dtype,
                    q: queue.Queue, stop: threading.Event, go: threading.Event, skip: int,
                    shared: ThreadPoolExecutor | None = None, restore: Sequence[Run] = ()) -> None:
    """Thread body: hands ``(position, first, tokens, lengths, taken)`` per piece of ``PIECE_DOCS``
    documents to the assembly thread, in order; ``first`` is the number of the piece's first
    document in its row group, ``taken`` counts the row group's documents handed over so far,
    None on its last piece. The first ``skip`` documents of the first row group are dropped (a
    resume inside it). With ``restore``, a ``Restored`` item comes first (``_restored``).

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
            return _put(q, stop, (position, taken, np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64), None))
        for i, task in enumerate(tasks):
            pieces = task.result()
            for j, (tokens, lens) in enumerate(pieces):
                first, taken = taken, taken + len(lens)
                last = i == len(tasks) - 1 and j == len(pieces) - 1
                if not _put(q, stop, (position, first, tokens, lens, None if last else taken)):
                    return False
        return True

    try:
        source = open_source()
        batches = iter(source)
        if restore and not _put(q, stop, _restored(restore, batches, tokenizer, dtype)):
            return
        for batch in batches:
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
    """One source's resume point at a batch boundary (``buffer`` references immutable arrays: no copies;
    ``runs``: the buffer of a resumed feed not rebuilt yet, as the state described it)."""

    position: Position | None  # stream position of the last row group moved into the buffer whole
    skip: int  # documents of the row group after it moved into the buffer already ...
    partial: Position | None  # ... that row group, when ``skip`` > 0
    buffer: BufferSnapshot
    stats: dict[str, int]  # ``PackStats`` counters
    buffered_docs: int
    runs: tuple[Run, ...] | None = None


class Feed:
    """A source's tokenize thread, the queue of its tokenized pieces, and its packer."""

    def __init__(self, open_source: Callable[[], Iterator[Any]], tokenizer: Tokenizer, dtype: np.dtype,
                 packer: BestFitPacker, *, prefetch: int, position: Position | None, skip: int = 0,
                 partial: Position | None = None, restore: Sequence[Run] = (), stats: PackStats | None = None) -> None:
        """``restore``: the runs to rebuild the buffer from first; ``stats``: the counters to go on from
        once they are in (None: count the restored documents as new ones, as an elastic resume does)."""
        self.packer = packer
        self._restore: tuple[Run, ...] | None = tuple(restore) if restore else None
        self._stats = stats if stats is not None else PackStats()
        self._keep_counts = stats is None
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
                                       args=(open_source, tokenizer, dtype, tokens, stop, self.go, self.skip, pool,
                                             self._restore or ()))
        self.thread.start()

    def prime(self) -> None:
        """On the assembly thread, before the first batch: move the restored buffer into the packer."""
        if self._restore is None:
            return
        assert self.thread is not None
        item = _get(self.tokens, self._stop, self.thread, "tokenizer")
        if isinstance(item, _End):
            self.tokens.put(item)  # refill() reports it
            if item.error is not None:
                raise item.error
            raise LoaderError("the data ended before the resume state's documents were read again")
        assert isinstance(item, Restored)
        for tag, tokens, lengths, ids in item.runs:
            self.packer.add(tokens, lengths, tag, ids)
        if not self._keep_counts:
            self.packer.stats = self._stats
        self._restore = None

    def part(self) -> Part:
        p = self.packer
        if self._restore is not None:  # not rebuilt yet: the state it was loaded from
            stats = self._stats.as_dict()
            return Part(self.position, self.skip, self.partial if self.skip else None, BufferSnapshot([]), stats,
                        sum(len(r) for r in self._restore), self._restore)
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
        position, first, tokens, lengths, taken = item
        # tagged: which row group each document came from, and its number there
        self.packer.add(tokens, lengths, position, np.arange(first, first + len(lengths), dtype=np.int64))
        if taken is None:
            self.position, self.skip = position, 0
        else:
            self.skip, self.partial = taken, position
        return True
