"""A packing buffer as document references (numpy only): *runs* of documents of one row group, named by its
``(epoch, shard, row_group)`` and their numbers in it; ``pack`` makes them one ASCII string, ``unpack`` reads it."""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import LoaderError


@dataclass(frozen=True)
class Run:
    """Buffered documents of one row group ``tag`` (``(epoch, shard, row_group)``), ``ids`` ascending."""

    tag: tuple[int, int, int]
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def pack(runs: Sequence[Run]) -> str:
    """The runs as one ASCII string. A run that continues the one before it (same row group, higher numbers)
    is joined to it. Layout: per run epoch, shard, row group and count, then the numbers (delta-coded within
    each run); each column bit-packed at the width its largest value needs; zlib; base64."""
    tags: list[tuple[int, int, int]] = []
    counts: list[int] = []
    ids: list[np.ndarray] = []
    for r in runs:
        if not len(r.ids):
            continue
        if tags and tags[-1] == tuple(r.tag) and r.ids[0] > ids[-1][-1]:
            counts[-1] += len(r.ids)
        else:
            tags.append(tuple(r.tag))
            counts.append(len(r.ids))
        ids.append(r.ids)
    flat = np.concatenate(ids).astype(np.int64, copy=False) if ids else np.zeros(0, np.int64)
    count = np.array(counts, dtype=np.int64)
    starts = np.cumsum(count) - count
    deltas = np.diff(flat, prepend=0)
    deltas[starts] = flat[starts]  # each run's first number as it is, then steps
    steps = np.ones(len(flat), dtype=bool)
    steps[starts] = False
    if (deltas[steps] <= 0).any() or (flat < 0).any():
        raise ValueError("a run's document numbers must ascend")
    tag = np.array(tags, dtype=np.uint64).reshape(len(tags), 3)
    columns = [*tag.T, count.astype(np.uint64), deltas.astype(np.uint64)]
    raw = np.array([len(counts)], dtype="<u4").tobytes() + b"".join(_bits(c) for c in columns)
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def unpack(text: str) -> list[Run]:
    """The runs of a ``pack`` string; LoaderError if it is not one."""
    try:
        raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
        n, at, head = int(np.frombuffer(raw[:4], dtype="<u4")[0]), 4, []
        for _ in range(4):
            col, at = _unbits(raw, at, n)
            head.append(col.astype(np.int64))
        deltas, at = _unbits(raw, at, int(head[3].sum()))
        if at != len(raw):
            raise ValueError(f"{len(raw) - at} bytes left over")
        runs, i = [], 0
        for k in range(n):
            c = int(head[3][k])
            tag = (int(head[0][k]), int(head[1][k]), int(head[2][k]))
            runs.append(Run(tag, np.cumsum(deltas[i:i + c].astype(np.int64))))
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
