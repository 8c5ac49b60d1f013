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

``pack`` turns the runs into one ASCII string (uint32 columns, zlib, base64: ``json.dump``
writes it as it is) and ``unpack`` back. ``merged`` joins consecutive runs of one row group.
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


def merged(runs: list[Run]) -> list[Run]:
    """``runs`` with each run that continues the one before it (same row group, higher numbers) joined to
    it: the documents and their order stay the same."""
    out: list[Run] = []
    for run in runs:
        if len(run) == 0:
            continue
        last = out[-1] if out else None
        if (last is not None and not run.inline and not last.inline and run.tag == last.tag
                and int(run.ids[0]) > int(last.ids[-1])):  # type: ignore[index]
            out[-1] = Run(last.tag, np.concatenate([last.ids, run.ids]))  # type: ignore[list-item]
        else:
            out.append(run)
    return out


def pack(runs: list[Run]) -> str:
    """The runs as one ASCII string: uint32 columns (per run: inline, epoch, shard, row group, count),
    then the numbers (delta-coded within each run), the inline lengths and tokens; zlib; base64."""
    head = np.zeros((5, len(runs)), dtype=np.uint32)
    ids, lengths, tokens = [], [], []
    for k, run in enumerate(runs):
        tag = run.tag if run.tag is not None else (NO_TAG, NO_TAG, NO_TAG)
        if run.tag is None and not run.inline:
            raise ValueError("a run of document numbers needs its row group")
        head[:, k] = (int(run.inline), *tag, len(run))
        if run.inline:
            lengths.append(np.asarray(run.lengths, dtype=np.uint32))
            tokens.append(np.asarray(run.tokens).astype(np.uint32))
        else:
            numbers = np.asarray(run.ids, dtype=np.int64)
            ids.append(np.diff(numbers, prepend=0).astype(np.uint32))
    body = [np.array([FORMAT, len(runs)], dtype=np.uint32), head.ravel(), *ids, *lengths, *tokens]
    raw = np.concatenate(body).astype("<u4").tobytes()
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def unpack(text: str, dtype: np.dtype) -> list[Run]:
    """The runs of a ``pack`` string (inline tokens as ``dtype``); LoaderError if it is not one."""
    try:
        flat = np.frombuffer(zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True)), dtype="<u4")
        fmt, n = (int(x) for x in flat[:2])
        if fmt != FORMAT:
            raise ValueError(f"layout {fmt}, expected {FORMAT}")
        head = flat[2:2 + 5 * n].reshape(5, n)
        at = 2 + 5 * n
        runs: list[Run | None] = [None] * n
        for k in range(n):  # the numbers of every referenced run first, then the inline lengths and tokens
            if not head[0, k]:
                count = int(head[4, k])
                runs[k] = Run(_tag(head[1:4, k]), np.cumsum(flat[at:at + count].astype(np.int64)))
                at += count
        inline = [k for k in range(n) if head[0, k]]
        sizes = []
        for k in inline:
            count = int(head[4, k])
            sizes.append(flat[at:at + count].astype(np.int64))
            at += count
        for k, lens in zip(inline, sizes, strict=True):
            total = int(lens.sum())
            runs[k] = Run(_tag(head[1:4, k]), None, flat[at:at + total].astype(dtype), lens)
            at += total
        if at != len(flat):
            raise ValueError(f"{len(flat) - at} values left over")
    except (ValueError, TypeError, IndexError, zlib.error, UnicodeEncodeError) as exc:
        raise LoaderError(f"the resume state's buffered documents are damaged ({exc}): pass the state as "
                          "state_dict() returned it") from exc
    return [r for r in runs if r is not None]


def _tag(values: np.ndarray) -> tuple[int, int, int] | None:
    epoch, shard, group = (int(v) for v in values)
    return None if epoch == NO_TAG else (epoch, shard, group)
