"""Documents as BOS-first flat token arrays: how a tokenizer's output becomes what the packer takes (numpy only).
``encoding`` picks how: ``encode_flat`` arrays, tiktoken text by text (``DocBytes``), or ``encode_batch`` lists."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..errors import LoaderError
from ..text.tokenizer import BPETokenizer, Tokenizer, flat_of

FLAT_TASK_PIECES = 4  # pieces encoded as one task by a flat encoder (fewer, larger calls)


def bos_first(tokens: np.ndarray, offsets: np.ndarray, bos_id: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Documents given flat (``tokens``, ``offsets`` of ``len + 1``) as ``(tokens, lengths)`` with BOS in
    front of each (``lengths`` count it), in ``dtype``; ValueError if an id does not fit in it."""
    dtype = np.dtype(dtype)
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(offsets) and offsets[0]:
        tokens, offsets = tokens[offsets[0]:offsets[-1]], offsets - offsets[0]
    if tokens.size:
        info = np.iinfo(dtype)
        low, high = int(tokens.min()), int(tokens.max())
        if low < info.min or high > info.max:
            raise ValueError(f"id {high if high > info.max else low} does not fit in {dtype}")
    lengths = np.diff(offsets) + 1
    out = np.empty(len(tokens) + len(lengths), dtype=dtype)
    starts = offsets[:-1] + np.arange(len(lengths))  # where each document's BOS goes
    out[starts] = bos_id
    body = np.ones(len(out), dtype=bool)
    body[starts] = False
    out[body] = tokens
    return out, lengths


class DocBytes:
    """``doc_bytes(ids)``: the bytes of ``[bos_id, *ids]`` as native-order ``dtype`` (uint16 or int32) values,
    for ``join_docs``. Thread-safe; a bounded cache of ``struct.Struct`` objects per document length."""

    MAX_CACHED = 4096

    def __init__(self, bos_id: int, dtype: np.dtype) -> None:
        dtype = np.dtype(dtype)
        codes = {np.dtype(np.uint16): "H", np.dtype(np.int32): "i"}
        if dtype not in codes:
            raise ValueError(f"token dtype must be uint16 or int32, got {dtype}")
        self.bos_id, self.dtype, self._code = bos_id, dtype, codes[dtype]
        self._structs: dict[int, struct.Struct] = {}

    def __call__(self, ids: Sequence[int]) -> bytes:
        n = len(ids) + 1
        packer = self._structs.get(n)
        if packer is None:
            if len(self._structs) >= self.MAX_CACHED:
                self._structs.clear()
            packer = self._structs[n] = struct.Struct(f"={n}{self._code}")
        try:
            return packer.pack(self.bos_id, *ids)
        except struct.error as exc:
            raise ValueError(f"a token id does not fit in {self.dtype} ({exc}): "
                             f"ids must be integers in 0..{np.iinfo(self.dtype).max}") from exc


def join_docs(parts: Sequence[bytes], lengths: Sequence[int], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``DocBytes`` outputs of consecutive documents and their lengths (BOS included) as ``(tokens, lengths)``
    arrays; ``tokens`` is read-only."""
    return np.frombuffer(b"".join(parts), dtype=dtype), np.array(lengths, dtype=np.int64).reshape(-1)


Encode = Callable[[list[str]], list[tuple[np.ndarray, np.ndarray]]]


def encoding(tokenizer: Tokenizer, dtype: np.dtype, piece_docs: int) -> tuple[Encode, int, int]:
    """How to encode (module docstring): (a task's texts -> its pieces' BOS-first ``(tokens, lengths)``,
    documents per task, encoding threads). Tasks are ``piece_docs`` documents, or ``FLAT_TASK_PIECES``
    pieces for flat encoders (fewer calls; still handed over piece by piece)."""
    cls = type(tokenizer)
    threads = max(1, int(getattr(tokenizer, "num_threads", 1) or 1))
    if (isinstance(tokenizer, BPETokenizer) and tokenizer.fast is None and cls.encode_batch is BPETokenizer.encode_batch
            and cls.encode is BPETokenizer.encode):
        encode, to_bytes = tokenizer.encode, DocBytes(tokenizer.bos_id, dtype)
        return (lambda texts: [_doc_bytes(map(encode, texts), to_bytes, len(texts))]), piece_docs, threads
    flat = getattr(tokenizer, "encode_flat", None)
    bos = tokenizer.bos_id
    if flat is None or not _flat_is_current(cls):
        return (lambda texts: _pieces(flat_of(_checked_lists(tokenizer.encode_batch(texts), texts)), bos, dtype, piece_docs)), \
            piece_docs, 1
    return (lambda texts: _pieces(_checked_flat(flat(texts), texts), bos, dtype, piece_docs)), piece_docs * FLAT_TASK_PIECES, \
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
    encode, task, _ = encoding(tokenizer, dtype, 128)
    parts = [p for a in range(0, len(texts), task) for p in encode(texts[a:a + task])]
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


def _pieces(flat: tuple[np.ndarray, np.ndarray], bos: int, dtype: np.dtype,
            piece_docs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A task's ``(tokens, offsets)`` as BOS-first ``(tokens, lengths)`` per piece of ``piece_docs`` documents."""
    tokens, offsets = flat
    try:
        arrays = bos_first(tokens, offsets, bos, dtype)
    except ValueError as exc:
        raise LoaderError(f"the tokenizer returned an id outside the token dtype ({exc}); check its "
                          "vocab_size") from exc
    out, lengths = arrays
    ends = np.cumsum(lengths)
    cuts = list(range(piece_docs, len(lengths), piece_docs))
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
