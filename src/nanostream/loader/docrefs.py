"""A packing buffer as document references: which documents of which row groups, not their tokens (numpy only).

A resume state (``resume.py``) describes the buffer as *runs*, oldest first: consecutive
buffered documents of one row group, named by the row group's ``(epoch, shard, row_group)``
and the documents' numbers in it (their index in the row group as the stream yields it,
ascending). A resumed reader reads those row groups again and tokenizes those documents
(``feed.py``), which gives back the same tokens, in the same order: the packer's decisions
depend only on the documents' lengths and their order, so the resumed run packs the same
rows. That is a few kilobytes per reader where the tokens were megabytes (docs/loader.md).

Runs loaded from a state of version 2 or 3 (tokens, no numbers) stay *inline*: their tokens
travel in the state until those documents leave the buffer.

``pack`` turns the runs into one ASCII string (bit-packed columns, zlib, base64: ``json.dump``
writes it as it is; consecutive runs of one row group joined) and ``unpack`` back.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import LoaderError

FORMAT = 1  # the packed layout below; a string of another layout is refused
NO_TAG = 0xFFFFFFFF  # an inline run whose row group is not known (carried over from an old layout)


@dataclass(frozen=True)
class Run:
    """Consecutive buffered documents of one row group: ``tag`` is ``(epoch, shard, row_group)`` (None:
    unknown, inline runs only); ``ids`` their numbers in it, or ``tokens``/``lengths`` (inline)."""

    tag: tuple[int, int, int] | None
    ids: np.ndarray | None = None
    tokens: np.ndarray | None = None
    lengths: np.ndarray | None = None

    @property
    def inline(self) -> bool:
        return self.ids is None

    def __len__(self) -> int:
        return len(self.lengths if self.ids is None else self.ids)  # type: ignore[arg-type]


def pack(runs: list[Run]) -> str:
    """The runs as one ASCII string (``pack_columns``)."""
    runs = [r for r in runs if len(r)]
    if any(r.tag is None for r in runs if r.ids is not None):
        raise ValueError("a run of document numbers needs its row group")
    tags = [r.tag if r.tag is not None else (NO_TAG, NO_TAG, NO_TAG) for r in runs]
    return pack_columns([r.ids is None for r in runs], tags, [len(r) for r in runs],
                        [r.ids for r in runs if r.ids is not None], [r.lengths for r in runs if r.ids is None],
                        [r.tokens for r in runs if r.ids is None])


def pack_columns(inline: list[bool], tags: list[tuple[int, int, int]], counts: list[int], ids: list[np.ndarray],
                 lengths: list[np.ndarray], tokens: list[np.ndarray]) -> str:
    """Runs given as columns (per run: inline, tag, count; the numbers of the runs of numbers, the lengths
    and tokens of the inline ones, in order) as one ASCII string. A run that continues the one before it
    (same row group, higher numbers) is joined to it, which keeps the documents and their order.
    Layout: per run inline, epoch, shard, row group, count; then the numbers (delta-coded within each
    run), the inline lengths and tokens; each column bit-packed at the width its largest value needs;
    zlib; base64 (JSON writes it as it is)."""
    n = len(counts)
    is_inline = np.array(inline, dtype=bool).reshape(n)
    tag = np.array(tags, dtype=np.int64).reshape(n, 3)
    count = np.array(counts, dtype=np.int64).reshape(n)
    flat = np.concatenate(ids).astype(np.int64, copy=False) if ids else np.zeros(0, np.int64)
    firsts = np.zeros(n, dtype=np.int64)  # where each run's numbers start in ``flat`` (runs of numbers)
    refs = ~is_inline
    firsts[refs] = np.cumsum(count[refs]) - count[refs]
    deltas = np.diff(flat, prepend=0)
    starts = firsts[refs]
    deltas[starts] = flat[starts]  # each run's first number as it is, then steps
    steps = np.ones(len(flat), dtype=bool)
    steps[starts] = False
    if (deltas[steps] <= 0).any() or (flat < 0).any():
        raise ValueError("a run's document numbers must ascend")
    joins = np.zeros(n, dtype=bool)  # a run of numbers right after one of the same row group, above its last
    if n > 1:
        last = np.maximum(firsts[:-1] + count[:-1] - 1, 0)
        joins[1:] = refs[1:] & refs[:-1] & (tag[1:] == tag[:-1]).all(axis=1)
        joins[1:] &= flat[np.minimum(firsts[1:], max(len(flat) - 1, 0))] > flat[np.minimum(last, max(len(flat) - 1, 0))]
    deltas[firsts[joins]] = flat[firsts[joins]] - flat[firsts[joins] - 1]  # now a step of the run it joins
    group = np.cumsum(~joins) - 1
    count = np.bincount(group, weights=count, minlength=int((~joins).sum())).astype(np.int64)
    is_inline, tag = is_inline[~joins], tag[~joins]
    columns = [is_inline.astype(np.uint64), *tag.T.astype(np.uint64), count.astype(np.uint64), deltas.astype(np.uint64),
               *(np.concatenate(c).astype(np.uint64) if c else np.zeros(0, np.uint64) for c in (lengths, tokens))]
    raw = np.array([FORMAT, len(count)], dtype="<u4").tobytes() + b"".join(_bits(c) for c in columns)
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def unpack(text: str, dtype: np.dtype) -> list[Run]:
    """The runs of a ``pack`` string (inline tokens as ``dtype``); LoaderError if it is not one."""
    try:
        raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
        fmt, n = (int(x) for x in np.frombuffer(raw[:8], dtype="<u4"))
        if fmt != FORMAT:
            raise ValueError(f"layout {fmt}, expected {FORMAT}")
        at = 8
        head = []
        for _ in range(5):
            col, at = _unbits(raw, at, n)
            head.append(col)
        inline, counts = head[0].astype(bool), head[4].astype(np.int64)
        ids, at = _unbits(raw, at, int(counts[~inline].sum()))
        lengths, at = _unbits(raw, at, int(counts[inline].sum()))
        tokens, at = _unbits(raw, at, int(lengths.sum()))
        if at != len(raw):
            raise ValueError(f"{len(raw) - at} bytes left over")
        runs, i, j, t = [], 0, 0, 0
        for k in range(n):
            tag = _tag(head[1][k], head[2][k], head[3][k])
            c = int(counts[k])
            if inline[k]:
                lens = lengths[j:j + c].astype(np.int64)
                size = int(lens.sum())
                runs.append(Run(tag, None, tokens[t:t + size].astype(dtype), lens))
                j, t = j + c, t + size
            else:
                if tag is None:
                    raise ValueError("a run of document numbers without its row group")
                runs.append(Run(tag, np.cumsum(ids[i:i + c].astype(np.int64))))
                i += c
    except (ValueError, TypeError, IndexError, zlib.error, UnicodeEncodeError) as exc:
        raise LoaderError(f"the resume state's buffered documents are damaged ({exc}): pass the state as "
                          "state_dict() returned it") from exc
    return runs


def _bits(values: np.ndarray) -> bytes:
    """``values`` (uint64) as one byte of bit width, then each value in that many bits (little-endian)."""
    width = int(values.max()).bit_length() if len(values) else 0
    if not width:
        return bytes([0])
    bits = (values[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)
    return bytes([width]) + np.packbits(bits.astype(np.uint8).ravel(), bitorder="little").tobytes()


def _unbits(raw: bytes, at: int, count: int) -> tuple[np.ndarray, int]:
    """``count`` values written by ``_bits`` at byte ``at`` of ``raw``; (values, the byte after them)."""
    width = raw[at]
    at += 1
    if not width or not count:
        return np.zeros(count, dtype=np.uint64), at
    size = (count * width + 7) // 8
    if at + size > len(raw):
        raise ValueError("truncated")
    bits = np.unpackbits(np.frombuffer(raw, np.uint8, size, at), count=count * width, bitorder="little")
    values = bits.reshape(count, width).astype(np.uint64) << np.arange(width, dtype=np.uint64)
    return values.sum(axis=1, dtype=np.uint64), at + size


def _tag(epoch: np.uint64, shard: np.uint64, group: np.uint64) -> tuple[int, int, int] | None:
    return None if int(epoch) == NO_TAG else (int(epoch), int(shard), int(group))
