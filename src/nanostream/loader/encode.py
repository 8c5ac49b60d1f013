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
    front of each (``lengths`` count it), in ``dtype``; LoaderError if an id does not fit in it."""
    dtype = np.dtype(dtype)
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(offsets) and offsets[0]:
        tokens, offsets = tokens[offsets[0]:offsets[-1]], offsets - offsets[0]
    if tokens.size:
        info = np.iinfo(dtype)
        low, high = int(tokens.min()), int(tokens.max())
        if low < info.min or high > info.max:
            raise LoaderError(f"the tokenizer returned an id outside the token dtype (id {high if high > info.max else low} "
                              f"does not fit in {dtype}); check its vocab_size")
    lengths = np.diff(offsets) + 1
    out = np.empty(len(tokens) + len(lengths), dtype=dtype)
    starts = offsets[:-1] + np.arange(len(lengths))  # where each document's BOS goes
    out[starts] = bos_id
    body = np.ones(len(out), dtype=bool)
    body[starts] = False
    out[body] = tokens
    return out, lengths


class DocBytes:
    """``doc_bytes(ids)``: the bytes of ``[bos_id, *ids]`` as native-order ``dtype`` (uint16 or int32) values
    (LoaderError if an id does not fit)."""

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
            raise LoaderError(f"the tokenizer returned an id outside the token dtype ({exc}: a token id does not fit "
                              f"in {self.dtype}); check its vocab_size") from exc


def join_docs(ids_of: Iterable[Sequence[int]], to_bytes: DocBytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` documents' ids as one BOS-first ``(tokens, lengths)`` (``tokens`` read-only)."""
    parts = [to_bytes(ids) for ids in ids_of]
    if len(parts) != n:
        raise LoaderError(f"the tokenizer returned {len(parts)} id lists for {n} texts")
    lengths = np.array([len(p) for p in parts], dtype=np.int64) // to_bytes.dtype.itemsize
    return np.frombuffer(b"".join(parts), dtype=to_bytes.dtype), lengths


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
        return (lambda texts: [join_docs(map(encode, texts), to_bytes, len(texts))]), piece_docs, threads
    flat = getattr(tokenizer, "encode_flat", None)
    bos = tokenizer.bos_id
    if flat is None or not _flat_is_current(cls):
        return (lambda texts: _pieces(flat_of(tokenizer.encode_batch(texts)), len(texts), bos, dtype, piece_docs)), \
            piece_docs, 1
    return (lambda texts: _pieces(flat(texts), len(texts), bos, dtype, piece_docs)), piece_docs * FLAT_TASK_PIECES, \
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


def _pieces(flat: tuple[np.ndarray, np.ndarray], n: int, bos: int, dtype: np.dtype,
            piece_docs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A task's ``(tokens, offsets)`` for ``n`` texts as BOS-first ``(tokens, lengths)`` per ``piece_docs``."""
    tokens, offsets = flat
    if len(offsets) != n + 1:
        raise LoaderError(f"the tokenizer returned {len(offsets) - 1} id lists for {n} texts")
    out, lengths = bos_first(tokens, offsets, bos, dtype)
    ends = np.cumsum(lengths)
    cuts = list(range(piece_docs, len(lengths), piece_docs))
    bounds = [0, *(int(ends[c - 1]) for c in cuts), len(out)]
    docs = [0, *cuts, len(lengths)]
    return [(out[bounds[i]:bounds[i + 1]], lengths[docs[i]:docs[i + 1]]) for i in range(len(docs) - 1)]
