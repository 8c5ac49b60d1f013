"""BOS-aligned best-fit packing of tokenized documents into fixed-length rows (``BestFitPacker``, nanochat's rule;
numpy only). A batch that cannot be finished is undone (``restore``)."""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..errors import LoaderError


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest array dtype holding every token id (uint16 up to 65536 ids, else int32)."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 31:
        return np.dtype(np.int32)
    raise LoaderError(f"vocab_size {vocab_size} does not fit in int32 token ids")


class _Chunk:
    """Documents sharing a flat token array; ``tag``: their row group's position, ``ids``: their numbers there."""

    __slots__ = ("alive", "frozen", "ids", "lengths", "n_alive", "serial", "starts", "tag", "tokens")

    def __init__(self, serial: int, tokens: np.ndarray, lengths: np.ndarray, tag: object = None,
                 ids: np.ndarray | None = None) -> None:
        self.serial = serial
        self.tag = tag
        self.ids = ids
        self.tokens = tokens
        self.lengths = lengths
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        self.starts: list[int] = starts.tolist()
        self.alive = np.ones(len(lengths), dtype=bool)
        self.frozen: BufferPart | None = None  # this chunk's part of a snapshot, until it changes
        self.n_alive = len(lengths)

    def part(self) -> BufferPart:
        """This chunk's buffered documents as a snapshot part (alive flags and ids copied once per change)."""
        if self.frozen is None:
            if self.n_alive == len(self.lengths):
                self.frozen = (self.tokens, self.lengths, None, self.tag, self.ids)
            else:
                alive = self.alive.copy()
                self.frozen = (self.tokens, self.lengths, alive, self.tag, None if self.ids is None else self.ids[alive])
        return self.frozen


@dataclass
class PackStats:
    """Counters since the start of the run (carried across resume)."""

    docs_in: int = 0  # documents that entered the buffer
    tokens_in: int = 0  # their tokens, BOS included
    docs_used: int = 0  # documents placed in a row (whole or cropped)
    docs_cropped: int = 0
    tokens_out: int = 0  # tokens written into rows
    tokens_cropped: int = 0  # tokens of cropped documents that were dropped

    @property
    def crop_fraction(self) -> float:
        """Share of the tokens taken from the buffer that were cropped away."""
        used = self.tokens_out + self.tokens_cropped
        return self.tokens_cropped / used if used else 0.0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)  # the int fields (asdict's deep copy costs more, once per batch)


# tokens, lengths, alive (None: all), tag, ids of the buffered documents (None: not numbered)
BufferPart = tuple[np.ndarray, np.ndarray, "np.ndarray | None", object, "np.ndarray | None"]


class BufferSnapshot(NamedTuple):
    """The buffered documents at one moment, as references to immutable chunk arrays, oldest first."""

    parts: list[BufferPart]

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """The buffered documents in arrival order: (flat tokens, lengths); a fresh packer given them packs the same."""
        toks, lens = [], []
        for tokens, lengths, alive, _, _ in self.parts:
            if alive is None:
                toks.append(tokens)
                lens.append(lengths)
            else:
                toks.append(tokens[np.repeat(alive, lengths)])
                lens.append(lengths[alive])
        if not toks:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        return np.concatenate(toks), np.concatenate(lens).astype(np.int64, copy=False)


class BestFitPacker:
    """A buffer of documents and the best-fit rule that fills rows from it. ``fill_row(out, refill)`` calls
    ``refill()`` (``add`` one chunk and return True, or False at the end of the data) whenever fewer than
    ``buffer_docs`` documents are buffered before a placement, as the reference loop does."""

    def __init__(self, buffer_docs: int, *, compact_slack: int = 1 << 18) -> None:
        self.buffer_docs = buffer_docs
        self.compact_slack = compact_slack
        self.stats = PackStats()
        self.n_docs = 0
        self.alive_tokens = 0  # tokens of the buffered documents
        self.held_tokens = 0  # tokens of the chunk arrays kept alive by them
        self.compactions = 0
        self._lens: list[int] = []  # distinct lengths with a non-empty FIFO, sorted
        self._fifo: dict[int, deque[tuple[_Chunk, int]]] = {}
        self._parts: dict[int, BufferPart] = {}  # each buffered chunk's snapshot part, in arrival order ...
        self._changed: list[_Chunk] = []  # ... but for these chunks', which changed since the last snapshot
        self._serial = 0
        self._snapshot: BufferSnapshot | None = None  # the buffer as it is, until it changes

    # -- buffer ------------------------------------------------------------------------------
    def add(self, tokens: np.ndarray, lengths: np.ndarray, tag: object = None, ids: np.ndarray | None = None) -> None:
        """Append documents (flat BOS-first ``tokens`` and their ``lengths``), tagged ``tag`` and numbered ``ids``."""
        if len(lengths) == 0:
            return
        self._insert(tokens, lengths, tag, ids)
        self.stats.docs_in += len(lengths)
        self.stats.tokens_in += len(tokens)

    def _insert(self, tokens: np.ndarray, lengths: np.ndarray, tag: object = None,
                ids: np.ndarray | None = None) -> None:
        chunk = _Chunk(self._serial, tokens, lengths, tag, ids)
        self._serial += 1
        self._snapshot = None
        self._parts[chunk.serial] = chunk.part()
        fifo, lens = self._fifo, self._lens
        for j, length in enumerate(lengths.tolist()):
            q = fifo.get(length)
            if q is None:
                q = fifo[length] = deque()
                insort(lens, length)
            q.append((chunk, j))
        self.n_docs += len(lengths)
        self.alive_tokens += len(tokens)
        self.held_tokens += len(tokens)

    def _rebuild(self, parts: list[BufferPart]) -> None:
        """Make the buffer hold exactly ``parts`` (a snapshot's, oldest first), each copied into a smaller array."""
        self._fifo, self._lens, self._snapshot = {}, [], None
        self._parts, self._changed = {}, []
        self.n_docs = self.alive_tokens = self.held_tokens = 0
        for part in parts:
            tokens, lengths = BufferSnapshot([part]).export()
            self._insert(tokens, lengths, part[3], part[4])

    def snapshot(self) -> BufferSnapshot:
        """A frozen view of the buffer, made once per change (the state of every batch and its rollback point)."""
        if self._snapshot is None:  # chunks are kept in arrival order (serials only grow)
            parts = self._parts
            for c in self._changed:
                if c.serial in parts:
                    parts[c.serial] = c.part()
            self._changed.clear()
            self._snapshot = BufferSnapshot(list(parts.values()))
        return self._snapshot

    # -- rows --------------------------------------------------------------------------------
    def fill_row(self, out: np.ndarray, refill: Callable[[], bool]) -> bool:
        """Fill ``out`` (1-D) completely; False if the data ran out first (``out`` is then partial)."""
        cap, pos = len(out), 0
        lens, fifo, parts, changed, exhausted = self._lens, self._fifo, self._parts, self._changed, False
        used = cropped = out_tokens = cropped_tokens = 0
        try:
            while pos < cap:
                while self.n_docs < self.buffer_docs and not exhausted:
                    exhausted = not refill()
                if self.n_docs == 0:
                    return False
                room = cap - pos
                i = bisect_right(lens, room) - 1
                crop = i < 0
                if crop:
                    i = 0
                length = lens[i]
                q = fifo[length]
                chunk, j = q.popleft()
                if not q:
                    del fifo[length]
                    del lens[i]
                n = room if crop else length
                start = chunk.starts[j]
                out[pos : pos + n] = chunk.tokens[start : start + n]
                pos += n
                # the document leaves the buffer
                chunk.alive[j] = False
                if chunk.frozen is not None:
                    chunk.frozen = None
                    changed.append(chunk)
                chunk.n_alive -= 1
                self.n_docs -= 1
                self.alive_tokens -= length
                if chunk.n_alive == 0:
                    del parts[chunk.serial]
                    self.held_tokens -= len(chunk.tokens)
                used += 1
                out_tokens += n
                if crop:
                    cropped += 1
                    cropped_tokens += length - n
            return True
        finally:
            if used:
                self._snapshot = None
                st = self.stats
                st.docs_used += used
                st.tokens_out += out_tokens
                st.docs_cropped += cropped
                st.tokens_cropped += cropped_tokens

    # -- between batches ---------------------------------------------------------------------
    def compact(self) -> None:
        """Copy the buffer into smaller arrays when the kept ones outweigh it (bounded memory)."""
        if self.held_tokens > 2 * self.alive_tokens + self.compact_slack:
            self._rebuild(self.snapshot().parts)
            self.compactions += 1

    def restore(self, buffer: BufferSnapshot, stats: dict[str, int]) -> None:
        """Go back to ``buffer`` (a ``snapshot()`` of this packer) and the counters ``stats``."""
        self._rebuild(buffer.parts)
        self.stats = PackStats(**stats)
