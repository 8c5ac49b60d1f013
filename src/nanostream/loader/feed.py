"""One source of a ``TokenDataset`` pass (``Feed``, on the assembly thread): its stream, its tokenizing read-ahead,
its packing buffer and its resume point (a ``resume.Part``). A resumed feed rebuilds its buffer from the row groups
the state names, which its stream reads again first. Nothing here imports torch."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..concurrency import LoopThread
from ..errors import LoaderError
from ..streaming.order import Cursor
from ..streaming.plan import Position
from ..streaming.streams import BatchIterator
from ..text.tokenizer import Tokenizer
from .docrefs import Run
from .encode import doc_arrays, encoding
from .packing import BestFitPacker, PackStats
from .resume import Part

PIECE_DOCS = 128  # documents moved into the packing buffer at a time (and encoded as one task by tiktoken)


SEAM = object()  # yielded by a source between the run's own epochs and the ones after them; the feed stops there


class Feed:
    """A source's stream, its encoding tasks queued ahead, and its packer (assembly thread only)."""

    def __init__(self, open_source: Callable[[], Generator[Any]], tokenizer: Tokenizer, dtype: np.dtype,
                 packer: BestFitPacker, *, ahead: int, start: Part, elastic: bool = False) -> None:
        """``start``: where to go on from, its ``runs`` the buffer to rebuild first; ``elastic``: count those
        documents as new ones instead of going on from its counters."""
        self.packer, self._open, self._tokenizer, self._dtype = packer, open_source, tokenizer, dtype
        self._encode, self._task_docs, self.threads = encoding(tokenizer, dtype, PIECE_DOCS)
        self._ahead = ahead  # row groups whose encoding is queued: the one handed over next, and those after it
        self._start: Part | None = start  # until ``start()``: the part this feed reports
        self._elastic = elastic
        self.position, self.skip, self.partial = start.position, start.skip, start.partial
        self._first_skip = start.skip  # documents of the first row group read that are in the buffer already
        self._batches: Generator[Any] | None = None
        self._queued: deque[list[Any]] = deque()  # per row group: [position, documents handed, its tasks]
        self._pieces: deque[tuple[Position, int, np.ndarray, np.ndarray, bool]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self.at_seam = False  # met and not passed: refill says "no more data"
        self._ended = False
        self._error: BaseException | None = None  # the stream's, raised once what came before it is packed

    def start(self, pool: ThreadPoolExecutor, loop: LoopThread) -> None:
        """Open the stream on ``loop`` and rebuild a resumed buffer (on the assembly thread, before the first batch)."""
        self._pool = pool
        self._batches = self._open(loop=loop)
        start, self._start = self._start, None
        if start.runs:
            for tag, tokens, lengths, ids in _restored(start.runs, self._batches, self._tokenizer, self._dtype):
                self.packer.add(tokens, lengths, tag, ids)
        if not self._elastic:
            self.packer.stats = PackStats(**start.stats)

    def close(self) -> None:
        """Close the stream (the encoding pool's shutdown cancels the queued tasks)."""
        if self._batches is not None:
            self._batches.close()

    def part(self) -> Part:
        if self._start is not None:
            return self._start
        p = self.packer
        return Part(self.position, self.skip, self.partial if self.skip else None, p.snapshot(), p.stats.as_dict(),
                    p.n_docs)

    def restore(self, part: Part) -> None:
        """Go back to ``part``, one this feed made since it started (a batch the data ended in is undone)."""
        self.packer.restore(part.buffer, part.stats)
        self.position, self.skip, self.partial = part.position, part.skip, part.partial

    def refill(self) -> bool:
        """Move the next tokenized piece into the packer; False at the end of the data (or at the SEAM)."""
        while not self._pieces:
            if not self._next_task():
                return False
        position, first, tokens, lengths, last = self._pieces.popleft()
        self.packer.add(tokens, lengths, position, np.arange(first, first + len(lengths), dtype=np.int64))
        if last:
            self.position, self.skip = position, 0
        else:
            self.skip, self.partial = first + len(lengths), position
        return True

    def _next_task(self) -> bool:
        """Wait for the oldest row group's next encoding task and hold its pieces; False if none is left."""
        self._queue_ahead()
        if not self._queued:
            if self._error is not None:
                raise self._error
            return False
        head = self._queued[0]  # [position, documents handed so far, tasks]
        tasks = head[2]
        pieces = tasks.popleft().result() if tasks else []
        last = not tasks
        if last:
            self._queued.popleft()
            if not pieces:  # an empty row group still moves the position on
                pieces = [(np.zeros(0, dtype=self._dtype), np.zeros(0, dtype=np.int64))]
        for i, (tokens, lengths) in enumerate(pieces):
            self._pieces.append((head[0], head[1], tokens, lengths, last and i == len(pieces) - 1))
            head[1] += len(lengths)
        return True

    def _queue_ahead(self) -> None:
        """Read row groups and queue their encoding until ``ahead`` are queued, the data ends or the SEAM comes."""
        while len(self._queued) < self._ahead and not self.at_seam and not self._ended:
            try:
                batch = next(self._batches, None)
            except Exception as exc:  # noqa: BLE001  (raised in order, by _next_row_group)
                self._error, batch = exc, None
            if batch is None:
                self._ended = True
            elif batch is SEAM:
                self.at_seam = True
            else:
                skip, self._first_skip = self._first_skip, 0
                texts = list(batch.texts)[skip:]
                tasks = deque(self._pool.submit(self._encode, texts[a:a + self._task_docs])
                              for a in range(0, len(texts), self._task_docs))
                self._queued.append([batch.position, skip, tasks])


def source_batches(ds: Any, k: int, layout: tuple[int, int, int], start: Position | Cursor | None,
                   epochs: int | None = None, replay: tuple[tuple[int, int], ...] = (), *,
                   loop: LoopThread) -> Iterator[Any]:
    """Source ``k``'s batches for reader ``layout``, from ``start``, on ``loop`` (the iterator's)."""
    with BatchIterator(ds._stream(k, layout, start, epochs, replay), loop) as it:
        yield from it


def single_source(ds: Any, layout: tuple[int, int, int], start: Position | Cursor | None, partial: Position | None,
                  replay: tuple[tuple[int, int], ...] = (), *, loop: LoopThread) -> Iterator[Any]:
    """One source's batches for a run: its epochs, ``SEAM``, then the next epochs' order (which only a
    reader whose data ran short reads on into)."""
    epochs, at = ds.epochs, start
    if epochs is not None and (at is None or at.epoch < epochs):
        if partial is None or partial.epoch < epochs:  # else stopped past the run's epochs: the SEAM was passed
            yield from source_batches(ds, 0, layout, at, epochs=epochs, replay=replay, loop=loop)
            replay = ()
            yield SEAM
        at = Cursor(epochs, shards=len(ds._stream(0).plan.shards))
    yield from source_batches(ds, 0, layout, at, replay=replay, loop=loop)


def _restored(runs: Sequence[Run], batches: Iterator[Any], tokenizer: Tokenizer,
              dtype: np.dtype) -> list[tuple[Position, np.ndarray, np.ndarray, np.ndarray]]:
    """Read the replayed row groups from ``batches`` (the stream yields them first) and tokenize the documents
    the runs name: ``(tag, tokens, lengths, ids)`` per run, in the runs' order."""
    wanted: dict[tuple[int, int], set[int]] = {}
    for r in runs:
        wanted.setdefault((r.tag[1], r.tag[2]), set()).update(r.ids.tolist())
    texts: dict[tuple[int, int], dict[int, str]] = {}
    for _ in range(len(wanted)):
        batch = next(batches, None)
        if batch is None or not getattr(batch, "replay", False):
            raise LoaderError("the stream did not read the resume state's row groups again first")
        key, docs = (batch.shard, batch.row_group), batch.texts
        beyond = [i for i in wanted[key] if i >= len(docs)]
        if beyond:
            raise LoaderError(f"the resume state names document {max(beyond)} of shard {key[0]}, row group "
                              f"{key[1]}, which has {len(docs)}: a state of other data? resume with the same files")
        texts[key] = {i: docs[i] for i in wanted[key]}
    order = [texts[(r.tag[1], r.tag[2])][i] for r in runs for i in r.ids.tolist()]
    tokens, lengths = doc_arrays(tokenizer, order, dtype)
    lens = np.split(lengths, np.cumsum([len(r) for r in runs[:-1]], dtype=np.int64))
    toks = np.split(tokens, np.cumsum([int(n.sum()) for n in lens[:-1]], dtype=np.int64))
    return [(Position(*r.tag), t, n, r.ids) for r, t, n in zip(runs, toks, lens, strict=True)]
