"""Tokenizers: the protocol the loader needs, the dependency-free ByteTokenizer, and the BPE
tokenizer (ranks + split regex + special tokens) with its two encoders.

``BPETokenizer`` encodes with gigatoken (``fast.py``) where that gives tiktoken's ids on the
identity sample (``identity.py``) and with tiktoken otherwise, saying once why. Either way
document text never becomes a special token: no special token is registered with the fast
encoder, tiktoken is called through ``encode_ordinary``, and the loader places BOS itself.
Formats are read by ``load.py``; the nanostream folder format is ``saved.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import tiktoken

from ..errors import TokenizerError
from ..shards import write_bytes
from . import fast, identity
from .schemes import NANOSTREAM, fast_scheme

log = logging.getLogger(__name__)

SPLIT_PATTERN = NANOSTREAM
BOS = "<|bos|>"
FORMAT, FORMAT_VERSION = "nanostream-bpe", 1
CONFIG_NAME, RANKS_NAME = "tokenizer.json", "ranks.tiktoken"
SPECIAL_TOKENS: tuple[str, ...] = (BOS,)
ENCODERS = ("auto", "gigatoken", "tiktoken")
MIN_TEXTS_PER_THREAD = 16  # fewer texts than this per thread: encode them on the calling thread
_said: set[str] = set()


def say_once(message: str) -> None:
    """Log ``message`` as a warning the first time this process sees it."""
    if message not in _said:
        _said.add(message)
        log.warning("%s", message)


@runtime_checkable
class Tokenizer(Protocol):
    """What TokenDataset needs from a tokenizer.

    ``bos_id`` (placed by the loader before every document), ``vocab_size`` (ids are
    ``0..vocab_size-1``) and ``encode_batch(texts)`` (each text's ids, no BOS, never a special
    token for text that merely looks like one). Optional and faster: ``encode_flat(texts) ->
    (tokens, offsets)``, every text's ids in one integer array and ``offsets`` of length
    ``len(texts) + 1``; the loader uses it when present. ``decode`` is for people."""

    @property
    def bos_id(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def flat_of(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Id lists as ``(tokens, offsets)`` (int64)."""
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, lists), dtype=np.int64, count=len(lists)), out=offsets[1:])
    tokens = np.fromiter((i for ids in lists for i in ids), dtype=np.int64, count=int(offsets[-1]))
    return tokens, offsets


def lists_of(tokens: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    """``(tokens, offsets)`` back as one id list per text."""
    return [part.tolist() for part in np.split(tokens, offsets[1:-1])] if len(offsets) > 1 else []


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, BOS = 256, vocab 257. No dependencies, no training."""

    bos_id = 256
    vocab_size = 257

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [t.encode("utf-8") for t in texts]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)), out=offsets[1:])
        return np.frombuffer(b"".join(parts), dtype=np.uint8), offsets

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def default_threads() -> int:
    """Encoding threads: the CPUs this process may use, at most 8."""
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def ranks_text(ranks: Mapping[bytes, int]) -> bytes:
    """``ranks`` as a ``.tiktoken`` file: ``base64(token) rank`` lines in rank order."""
    return "".join(f"{base64.b64encode(tok).decode('ascii')} {rank}\n"
                   for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])).encode("ascii")


class BPETokenizer:
    """Byte-level BPE: ``ranks`` (token bytes -> id), a split ``pattern`` and ``special_tokens``
    (name -> id; default: ``<|bos|>`` right after the ranks), ``bos`` one of them.

    ``encoder``: ``"auto"`` (gigatoken if installed, its scheme fits ``pattern`` and its ids equal
    tiktoken's on the identity sample; else tiktoken, logged once), ``"gigatoken"`` (that or a
    TokenizerError) or ``"tiktoken"``. ``encoder_name`` says which runs. No encode method ever
    emits a special token, and none adds BOS: the loader prepends ``bos_id``.
    """

    def __init__(self, ranks: Mapping[bytes, int], *, pattern: str = SPLIT_PATTERN,
                 special_tokens: Mapping[str, int] | None = None, bos: str = BOS, num_threads: int | None = None,
                 encoder: str = "auto", origin: str = "BPE tokenizer") -> None:
        n = len(ranks)
        if sorted(ranks.values()) != list(range(n)):
            raise TokenizerError(f"{origin}: BPE ranks must be exactly 0..{n - 1}")
        if any(ranks.get(bytes([b])) is None for b in range(256)):
            raise TokenizerError(f"{origin}: BPE ranks must contain all 256 single bytes")
        if encoder not in ENCODERS:
            raise TokenizerError(f"unknown encoder {encoder!r}: use one of {', '.join(ENCODERS)}")
        self._ranks = dict(ranks)
        self.pattern, self.origin = pattern, origin
        self.special_tokens = dict(special_tokens) if special_tokens is not None else {BOS: n}
        if bos not in self.special_tokens:
            raise TokenizerError(f"{origin}: BOS token {bos!r} is not in its vocabulary (its special tokens: "
                                 f"{', '.join(self.special_tokens) or 'none'}); pass bos= one of them")
        self.bos = bos
        self.num_threads = num_threads if num_threads is not None else default_threads()
        if self.num_threads < 1:
            raise TokenizerError(f"num_threads must be >= 1, got {self.num_threads}")
        try:
            self._enc = tiktoken.Encoding("nanostream-bpe", pat_str=pattern, mergeable_ranks=self._ranks,
                                          special_tokens=self.special_tokens)
        except (ValueError, AssertionError) as exc:
            raise TokenizerError(f"{origin}: invalid BPE tokenizer (pattern or ranks): {exc}") from exc
        self.fast = None if encoder == "tiktoken" else self._fast_encoder(encoder == "gigatoken")
        self.encoder_name = "tiktoken" if self.fast is None else "gigatoken"

    def _fast_encoder(self, required: bool) -> fast.FastEncoder | None:
        scheme = fast_scheme(self.pattern)
        enc, reason = None, None
        if not fast.available():
            reason = "gigatoken is not installed"
        elif scheme is None:
            reason = "gigatoken has no scheme for its split pattern"
        else:
            try:
                enc = fast.FastEncoder(fast.FromRanks(ranks_text(self._ranks), scheme[0]), digit_cut=scheme[1])
            except Exception as exc:  # noqa: BLE001  (any failure of the optional encoder: use the reference)
                reason = f"gigatoken cannot load it ({exc})"
            else:
                diff = identity.first_difference(self._reference_batch, enc.encode_flat,
                                                  identity.sample([*self.special_tokens, self.bos]))
                if diff is not None:
                    enc, reason = None, f"gigatoken's ids differ from tiktoken's on {diff[:40]!r}"
        if reason is None:
            return enc
        if required:
            raise TokenizerError(f"{self.origin}: cannot encode with gigatoken: {reason}")
        say_once(f"{self.origin}: encoding with tiktoken, not gigatoken: {reason}")
        return None

    @property
    def bos_id(self) -> int:
        return self.special_tokens[self.bos]

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    @property
    def ranks(self) -> dict[bytes, int]:
        return dict(self._ranks)

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every text's ids in one array plus offsets (``len(texts) + 1``), no BOS."""
        if self.fast is not None:
            return self.fast.encode_flat(texts)
        return flat_of(self._reference_batch(texts))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids (no BOS), in order."""
        if self.fast is not None:
            return lists_of(*self.fast.encode_flat(texts))
        return self._reference_batch(texts)

    def _reference_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """tiktoken on up to ``num_threads`` threads: it releases the GIL while it encodes. Each
        thread gets one contiguous run of texts of about equal total length (one task per thread,
        not per text: less GIL traffic than ``encode_ordinary_batch``)."""
        texts = list(texts)
        threads = min(self.num_threads, len(texts) // MIN_TEXTS_PER_THREAD)
        if threads <= 1:
            return [self._enc.encode_ordinary(t) for t in texts]
        chunks = _balanced_chunks(texts, threads)
        with ThreadPoolExecutor(len(chunks), thread_name_prefix="nanostream-bpe") as pool:
            parts = list(pool.map(self._encode_all, chunks))
        return [ids for part in parts for ids in part]

    def _encode_all(self, texts: list[str]) -> list[list[int]]:
        return [self._enc.encode_ordinary(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return self._enc.decode(list(ids), errors="replace")
        except (KeyError, OverflowError, TypeError) as exc:
            raise TokenizerError(f"cannot decode ids outside 0..{self.vocab_size - 1}: {exc}") from exc

    def save(self, directory: Path | str) -> Path:
        """Write ``ranks.tiktoken`` then ``tokenizer.json`` (the nanostream folder format, read back by
        ``saved.py``) into ``directory``; return it."""
        directory = Path(directory)
        ranks = ranks_text(self._ranks)
        config = {
            "format": FORMAT, "version": FORMAT_VERSION, "pattern": self.pattern,
            "special_tokens": self.special_tokens, "vocab_size": self.vocab_size,
            "num_ranks": len(self._ranks), "ranks_file": RANKS_NAME,
            "ranks_sha256": hashlib.sha256(ranks).hexdigest(),
        }
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_bytes(directory / RANKS_NAME, ranks)
            write_bytes(directory / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
        except OSError as exc:
            raise TokenizerError(f"cannot save the tokenizer to {directory}: {exc}") from exc
        return directory


def _balanced_chunks(texts: list[str], n: int) -> list[list[str]]:
    """``texts`` cut into at most ``n`` contiguous runs of about equal total length."""
    bounds = [0]
    target, total = sum(map(len, texts)) / n, 0
    for i, text in enumerate(texts):
        total += len(text)
        if total >= target * len(bounds) and len(bounds) < n and i + 1 < len(texts):
            bounds.append(i + 1)
    bounds.append(len(texts))
    return [texts[a:b] for a, b in pairwise(bounds) if b > a]
