"""Tokenizers: the ``Tokenizer`` protocol the loader needs, ``ByteTokenizer``, and the BPE encoders,
``BPETokenizer`` (ranks, a split regex, special tokens) and ``HFTokenizer`` (a ``tokenizer.json``), each encoded
by gigatoken where that gives its reference library's ids (tiktoken, ``tokenizers``), else by that library."""

from __future__ import annotations

import json
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import tiktoken

from ..errors import TokenizerError
from ..sources.catalog import say_once
from .fast import FAST_SCHEMES, NANOSTREAM, FastEncoder, exact_encoder, from_json, from_ranks
from .formats import BOS, ranks_text, save_folder

SPLIT_PATTERN = NANOSTREAM
ENCODERS = ("auto", "gigatoken", "tiktoken")


@runtime_checkable
class Tokenizer(Protocol):
    """What TokenDataset needs from a tokenizer (the contract and the optional ``encode_flat``: tokenizer.md)."""

    @property
    def bos_id(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _offsets(parts: Sequence[Sized]) -> np.ndarray:
    """Where each part starts in their concatenation, and its total length at the end (int64)."""
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)), out=offsets[1:])
    return offsets


def flat_of(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Id lists as ``(tokens, offsets)`` (int64)."""
    offsets = _offsets(lists)
    return np.fromiter((i for ids in lists for i in ids), dtype=np.int64, count=int(offsets[-1])), offsets


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, BOS = 256, vocab 257. No dependencies, no training."""

    bos_id = 256
    vocab_size = 257

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [t.encode("utf-8") for t in texts]
        return np.frombuffer(b"".join(parts), dtype=np.uint8), _offsets(parts)

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class FastOrReference:
    """Base of ``BPETokenizer`` and ``HFTokenizer``: encodes with ``fast`` (gigatoken) where it gives the
    reference library's ids, else with ``_reference_batch``."""

    reference_name = "tiktoken"
    fast: FastEncoder | None = None

    def _choose_encoder(self, encoder: str, build: Callable[[], FastEncoder], specials: Iterable[str],
                        unfit: str | None = None) -> None:
        """Set ``fast`` for ``encoder``: ``"auto"`` (gigatoken where exact, else the reference, said once),
        ``"gigatoken"`` (or a TokenizerError) or ``"tiktoken"``; ``unfit``: why gigatoken cannot encode it."""
        if encoder not in ENCODERS:
            raise TokenizerError(f"unknown encoder {encoder!r}: use one of {', '.join(ENCODERS)}")
        self.fast, why = None, unfit
        if encoder != "tiktoken" and why is None:
            self.fast, why = exact_encoder(build, self._reference_batch, specials, self.reference_name)
        if encoder == "gigatoken" and why is not None:
            raise TokenizerError(f"{self.origin}: cannot encode with gigatoken: {why}")
        if encoder == "auto" and why is not None:
            say_once(f"encoder:{self.origin}:{why}", f"{self.origin}: encoding with {self.reference_name}, "
                     f"not gigatoken: {why}")
        self.encoder_name = self.reference_name if self.fast is None else "gigatoken"

    def _reference_batch(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every text's ids in one array plus offsets (``len(texts) + 1``), no BOS."""
        if self.fast is not None:
            return self.fast.encode_flat(texts)
        return flat_of(self._reference_batch(texts))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids (no BOS), in order."""
        if self.fast is None:
            return self._reference_batch(texts)
        tokens, offsets = self.fast.encode_flat(texts)
        return [part.tolist() for part in np.split(tokens, offsets[1:-1])] if len(offsets) > 1 else []


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity on Linux, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def missing_bos(origin: str, candidates: Sequence[str], specials: Iterable[str]) -> TokenizerError:
    """The error for a BOS token (one of ``candidates``) that a tokenizer's vocabulary lacks."""
    return TokenizerError(f"{origin}: BOS token {' or '.join(map(repr, candidates))} is not in its vocabulary "
                          f"(its special tokens: {', '.join(specials) or 'none'}); pass bos= one of them")


class BPETokenizer(FastOrReference):
    """Byte-level BPE: ``ranks`` (token bytes -> id), a split ``pattern``, ``special_tokens`` (default: ``<|bos|>``
    after the ranks) and ``bos`` one of them; tiktoken encodes on up to ``num_threads`` threads (default: the
    usable CPUs, at most 8)."""

    def __init__(self, ranks: Mapping[bytes, int], *, pattern: str = SPLIT_PATTERN,
                 special_tokens: Mapping[str, int] | None = None, bos: str = BOS, num_threads: int | None = None,
                 encoder: str = "auto", origin: str = "BPE tokenizer") -> None:
        n = len(ranks)
        if sorted(ranks.values()) != list(range(n)):
            raise TokenizerError(f"{origin}: BPE ranks must be exactly 0..{n - 1}")
        if any(ranks.get(bytes([b])) is None for b in range(256)):
            raise TokenizerError(f"{origin}: BPE ranks must contain all 256 single bytes")
        self.ranks = dict(ranks)
        self.pattern, self.origin = pattern, origin
        self.special_tokens = dict(special_tokens) if special_tokens is not None else {BOS: n}
        if bos not in self.special_tokens:
            raise missing_bos(origin, [bos], self.special_tokens)
        self.bos, self.bos_id = bos, self.special_tokens[bos]
        self.num_threads = num_threads if num_threads is not None else max(1, min(8, usable_cpus()))
        if self.num_threads < 1:
            raise TokenizerError(f"num_threads must be >= 1, got {self.num_threads}")
        try:
            self._enc = tiktoken.Encoding("nanostream-bpe", pat_str=pattern, mergeable_ranks=self.ranks,
                                          special_tokens=self.special_tokens)
        except (ValueError, AssertionError) as exc:
            raise TokenizerError(f"{origin}: invalid BPE tokenizer (pattern or ranks): {exc}") from exc
        self.vocab_size = self._enc.n_vocab
        scheme = FAST_SCHEMES.get(pattern)
        self._choose_encoder(
            encoder, lambda: FastEncoder(partial(from_ranks, ranks_text(self.ranks), scheme[0]), digit_cut=scheme[1]),
            [*self.special_tokens, bos], unfit=None if scheme else "gigatoken has no scheme for its split pattern")

    def encode(self, text: str) -> list[int]:
        """One text's ids on tiktoken (no BOS, no special token)."""
        return self._enc.encode_ordinary(text)

    def _reference_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """tiktoken on up to ``num_threads`` threads (it releases the GIL), one run of texts of about equal
        length each: fewer hand-offs than ``encode_ordinary_batch``."""
        texts, encode = list(texts), self._enc.encode_ordinary
        threads = min(self.num_threads, len(texts) // 16)  # 16+ texts a thread, else this thread
        if threads <= 1:
            return [encode(t) for t in texts]
        with ThreadPoolExecutor(threads, thread_name_prefix="nanostream-bpe") as pool:
            parts = pool.map(lambda run: [encode(t) for t in run], _balanced_chunks(texts, threads))
            return [ids for part in parts for ids in part]

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return self._enc.decode(list(ids), errors="replace")
        except (KeyError, OverflowError, TypeError) as exc:
            raise TokenizerError(f"cannot decode ids outside 0..{self.vocab_size - 1}: {exc}") from exc

    def save(self, directory: Path | str) -> Path:
        """Write nanostream's tokenizer folder (``formats.py``) into ``directory``; return it."""
        return save_folder(Path(directory), self.ranks, self.pattern, self.special_tokens, self.vocab_size)


def _balanced_chunks(texts: list[str], n: int) -> list[list[str]]:
    """``texts`` cut into at most ``n`` contiguous runs of about equal total length."""
    ends = list(accumulate(map(len, texts)))  # where each text ends in their concatenation
    cuts = [bisect_left(ends, ends[-1] * k / n) + 1 for k in range(1, n)]
    return [texts[a:b] for a, b in pairwise([0, *cuts, len(texts)]) if b > a]


DEFAULT_BOS = ("<|bos|>", "<|begin_of_text|>", "<|endoftext|>", "<s>")


def _reference(data: str) -> Any:
    """``tokenizers``' tokenizer for ``tokenizer.json`` text, encoding a special token's text in a document as text."""
    import tokenizers

    ref = tokenizers.Tokenizer.from_str(data)
    ref.encode_special_tokens = True
    return ref


def _without_specials(data: str) -> str:
    config = json.loads(data)
    config["added_tokens"] = [t for t in config.get("added_tokens") or [] if not t.get("special")]
    return json.dumps(config)


class HFTokenizer(FastOrReference):
    """``tokenizer.json`` text ``data`` on ``tokenizers`` (no post-processor, special tokens' text encoded as
    text) or gigatoken (the file without its special tokens); BOS ``bos``, default the first of ``DEFAULT_BOS``
    it has; ``encoder`` as ``BPETokenizer`` takes it (``"tiktoken"`` meaning ``tokenizers`` here)."""

    reference_name = "tokenizers"

    def __init__(self, data: str, *, bos: str | None = None, encoder: str = "auto",
                 origin: str = "tokenizer.json") -> None:
        try:
            self._ref = _reference(data)
        except ImportError as exc:
            raise TokenizerError(f"{origin}: reading a Hugging Face tokenizer.json needs the `tokenizers` package: "
                                 "pip install tokenizers") from exc
        except Exception as exc:
            raise TokenizerError(f"{origin} is not a Hugging Face tokenizer.json tokenizers can load ({exc})") from exc
        self.origin = origin
        added = json.loads(data).get("added_tokens") or []
        self.special_tokens = {t["content"]: t["id"] for t in added if t.get("special")}
        candidates = (bos,) if bos is not None else DEFAULT_BOS
        found = [(b, i) for b in candidates if (i := self._ref.token_to_id(b)) is not None]
        if not found:
            raise missing_bos(origin, candidates, self.special_tokens)
        self.bos, self.bos_id = found[0]
        self.vocab_size = self._ref.get_vocab_size(with_added_tokens=True)
        self._choose_encoder(encoder, lambda: FastEncoder(partial(from_json, _without_specials(data))),
                             [*self.special_tokens, self.bos])

    def _reference_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._ref.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._ref.decode([int(i) for i in ids], skip_special_tokens=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ref": self._ref.to_str()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _ref=_reference(state["_ref"]))
