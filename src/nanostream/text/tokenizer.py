"""Tokenizers: the small protocol the loader needs, the dependency-free ByteTokenizer,
and the BPE tokenizer (tiktoken for encoding), its saved format and its loader.

Training lives in ``nanostream.text.bpe`` (rustbpe), which builds on this module.

Saved format (a folder, default ``$NANOSTREAM_BASE_DIR/tokenizer``), plain text, never pickle:

``ranks.tiktoken``
    One line per token, ``base64(token_bytes) rank``, ranks ``0..n-1`` in order;
    the 256 single bytes are always present. This is tiktoken's own ``.tiktoken``
    format, so ``tiktoken.load.load_tiktoken_bpe`` reads it too.
``tokenizer.json``
    ``{"format": "nanostream-bpe", "version": 1, "pattern": <split regex>,
    "special_tokens": {"<|bos|>": n}, "vocab_size": n + 1, "num_ranks": n,
    "ranks_file": "ranks.tiktoken", "ranks_sha256": <hex sha256 of ranks.tiktoken>}``.
    Special tokens take the ids right after the ranks; ``vocab_size`` counts them.

Both files are written atomically (temp file, fsync, ``os.replace``), ranks first,
so ``tokenizer.json`` is the commit point. Loading checks every field and the
sha256; a missing, truncated, modified or malformed file raises ``TokenizerError``
naming the file and telling you to run ``nanostream tokenizer train`` again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import tiktoken

from ..errors import TokenizerError
from ..shards import write_bytes

if TYPE_CHECKING:

    pass

# GPT-4-style pre-split: contractions, letter runs, 1-3 digit groups, punctuation runs, whitespace.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
BOS = "<|bos|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS,)
FORMAT, FORMAT_VERSION = "nanostream-bpe", 1
CONFIG_NAME, RANKS_NAME = "tokenizer.json", "ranks.tiktoken"
RETRAIN = "run `nanostream tokenizer train` to train it again"
MIN_TEXTS_PER_THREAD = 16  # fewer texts than this per thread: encode them on the calling thread


@runtime_checkable
class Tokenizer(Protocol):
    """What TokenDataset needs from a tokenizer."""

    @property
    def bos_id(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, BOS = 256, vocab 257. No dependencies, no training."""

    bos_id = 256
    vocab_size = 257

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def default_threads() -> int:
    """Encoding threads: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


class BPETokenizer:
    """Byte-level BPE: ``ranks`` (token bytes -> id) plus special tokens after them.

    ``encode``/``encode_batch`` never emit special tokens (a literal ``<|bos|>`` in the
    text is encoded as ordinary bytes) and add no BOS: the loader prepends ``bos_id``.
    ``decode`` renders special tokens as their names.
    """

    def __init__(self, ranks: Mapping[bytes, int], *, pattern: str = SPLIT_PATTERN,
                 num_threads: int | None = None) -> None:
        n = len(ranks)
        if sorted(ranks.values()) != list(range(n)):
            raise TokenizerError(f"BPE ranks must be exactly 0..{n - 1}")
        if any(ranks.get(bytes([b])) is None for b in range(256)):
            raise TokenizerError("BPE ranks must contain all 256 single bytes")
        self._ranks = dict(ranks)
        self.pattern = pattern
        self.special_tokens = {tok: n + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.num_threads = num_threads if num_threads is not None else default_threads()
        if self.num_threads < 1:
            raise TokenizerError(f"num_threads must be >= 1, got {self.num_threads}")
        try:
            self._enc = tiktoken.Encoding(FORMAT, pat_str=pattern, mergeable_ranks=self._ranks,
                                          special_tokens=self.special_tokens,
                                          explicit_n_vocab=n + len(self.special_tokens))
        except (ValueError, AssertionError) as exc:
            raise TokenizerError(f"invalid BPE tokenizer (pattern or ranks): {exc}") from exc

    @property
    def bos_id(self) -> int:
        return self.special_tokens[BOS]

    @property
    def vocab_size(self) -> int:
        return len(self._ranks) + len(self.special_tokens)

    @property
    def ranks(self) -> dict[bytes, int]:
        return dict(self._ranks)

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids (no BOS), in order, on up to ``num_threads`` threads.

        tiktoken releases the GIL while it encodes, so threads run in parallel. Each
        thread gets one contiguous run of texts of about equal total length (one task
        per thread, not per text: less GIL traffic than ``encode_ordinary_batch``).
        """
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
        """Write ``ranks.tiktoken`` then ``tokenizer.json`` into ``directory``; return it."""
        directory = Path(directory)
        ranks = "".join(f"{base64.b64encode(tok).decode('ascii')} {rank}\n"
                        for tok, rank in sorted(self._ranks.items(), key=lambda kv: kv[1])).encode("ascii")
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


def _field(config: dict[str, Any], key: str, kind: type, where: Path) -> Any:
    value = config.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TokenizerError(f"{where}: field {key!r} is missing or not a {kind.__name__}; {RETRAIN}")
    return value


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TokenizerError(f"no tokenizer at {path.parent} ({path.name} is missing); {RETRAIN}") from exc
    except OSError as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise TokenizerError(f"{path} is not valid JSON (truncated or corrupt: {exc}); {RETRAIN}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise TokenizerError(f"{path} is not a nanostream BPE tokenizer file; {RETRAIN}")
    if config.get("version") != FORMAT_VERSION:
        raise TokenizerError(f"{path} has format version {config.get('version')!r}, this nanostream reads "
                             f"version {FORMAT_VERSION}; {RETRAIN}")
    return config


def _parse_ranks(data: bytes, path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as exc:
            raise TokenizerError(f"{path} line {lineno} is not `base64 rank` ({exc}); {RETRAIN}") from exc
    return ranks


def load_tokenizer(path: Path | str, *, num_threads: int | None = None) -> Tokenizer:
    """The tokenizer saved in folder ``path`` (or its ``tokenizer.json``); ``"byte"`` gives ByteTokenizer."""
    if isinstance(path, str) and path == "byte":
        return ByteTokenizer()
    directory = Path(path).expanduser()
    if directory.name == CONFIG_NAME and directory.is_file():
        directory = directory.parent
    config_path = directory / CONFIG_NAME
    config = _read_config(config_path)
    pattern = _field(config, "pattern", str, config_path)
    specials = _field(config, "special_tokens", dict, config_path)
    vocab_size = _field(config, "vocab_size", int, config_path)
    num_ranks = _field(config, "num_ranks", int, config_path)
    ranks_file = _field(config, "ranks_file", str, config_path)
    sha = _field(config, "ranks_sha256", str, config_path)
    if Path(ranks_file).name != ranks_file or ranks_file.startswith("."):
        raise TokenizerError(f"{config_path}: ranks_file {ranks_file!r} must be a plain file name; {RETRAIN}")
    ranks_path = directory / ranks_file
    try:
        data = ranks_path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"cannot read {ranks_path} ({exc}); {RETRAIN}") from exc
    if hashlib.sha256(data).hexdigest() != sha:
        raise TokenizerError(f"{ranks_path} does not match the sha256 in {config_path} "
                             f"(truncated or modified); {RETRAIN}")
    ranks = _parse_ranks(data, ranks_path)
    expected = {tok: num_ranks + i for i, tok in enumerate(SPECIAL_TOKENS)}
    if len(ranks) != num_ranks or specials != expected or vocab_size != num_ranks + len(expected):
        raise TokenizerError(f"{config_path} does not agree with {ranks_path} (num_ranks {num_ranks}, "
                             f"{len(ranks)} ranks read, vocab_size {vocab_size}, special_tokens {specials}); "
                             f"{RETRAIN}")
    try:
        return BPETokenizer(ranks, pattern=pattern, num_threads=num_threads)
    except TokenizerError as exc:
        raise TokenizerError(f"{directory}: {exc}; {RETRAIN}") from exc
