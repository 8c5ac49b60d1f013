"""The split regexes by name, and the fast encoder: gigatoken (imported here only, no special token ever
registered) as flat arrays, rebuilt every ``REBUILD_CHARS`` characters to bound its cache, used only where a
load-time check on a fixed sample gives the reference library's ids."""

from __future__ import annotations

import ctypes
import random
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import regex

REBUILD_CHARS = 32_000_000  # characters encoded between two rebuilds of the encoder (bounds its cache)

# GPT-4-style pre-split of nanostream's and nanochat's trainer (rustbpe's default): contractions,
# letter runs, 1-3 digit groups, punctuation runs, whitespace.
NANOSTREAM = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# nanochat's tokenizer.py: the same with 1-2 digit groups
NANOCHAT = NANOSTREAM.replace(r"\p{N}{1,3}", r"\p{N}{1,2}")
# tiktoken_ext.openai_public (the patterns of OpenAI's public encodings)
R50K = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
CL100K = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$"""
          r"""|\s*[\r\n]|\s+(?!\S)|\s""")
O200K = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""", r"""\s+""",
])
PATTERNS = {"gpt2": R50K, "r50k_base": R50K, "cl100k_base": CL100K, "o200k_base": O200K,
            "nanostream": NANOSTREAM, "nanochat": NANOCHAT}
# regex -> (gigatoken pre-tokenizer, cut digit runs into pairs first: ``digit_pieces``)
FAST_SCHEMES = {R50K: ("gpt2", False), CL100K: ("gpt4", False), NANOSTREAM: ("gpt4", False),
                O200K: ("o200k", False), NANOCHAT: ("gpt4", True)}
_RUN = regex.compile(r"\p{N}{3,}")


def from_ranks(ranks_file: bytes, scheme: str) -> Any:
    """A gigatoken encoder for ``ranks_file`` (``.tiktoken`` contents) split by ``scheme``, no special tokens."""
    import gigatoken

    with tempfile.TemporaryDirectory(prefix="nanostream-ranks-") as tmp:
        path = Path(tmp) / "ranks.tiktoken"
        path.write_bytes(ranks_file)
        return gigatoken.Tokenizer.from_tiktoken(str(path), pretokenizer=scheme, special_tokens=None).backend


def from_json(data: str) -> Any:
    """A gigatoken encoder for a ``tokenizer.json`` (already stripped of its special added tokens)."""
    import gigatoken

    return gigatoken.Tokenizer.from_json(data).backend


# glibc's malloc_trim: a freed encode cache goes back to the OS instead of staying resident
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform.startswith("linux") else None


class FastEncoder:
    """A gigatoken encoder made by ``build()`` (``partial(from_ranks, ...)`` or ``partial(from_json, ...)``),
    rebuilt every ``rebuild_chars`` characters; thread-safe. ``digit_cut``: cut digit runs into pairs first
    (``digit_pieces``). Pickles as its builder."""

    def __init__(self, build: Callable[[], Any], *, digit_cut: bool = False,
                 rebuild_chars: int = REBUILD_CHARS) -> None:
        self._build, self.digit_cut, self.rebuild_chars = build, digit_cut, rebuild_chars
        self._lock = threading.Lock()
        self._backend: Any = build()  # built now: a broken vocabulary fails at load time
        self._chars = 0
        self.builds = 1

    def _current(self, chars: int) -> Any:
        with self._lock:
            if self._chars >= self.rebuild_chars:
                self._backend, self._chars = None, 0  # the old encoder and its cache are freed here ...
                self._backend = self._build()
                self.builds += 1
                if _MALLOC_TRIM is not None:
                    _MALLOC_TRIM(0)  # ... and handed back to the OS, not kept by the allocator
            self._chars += chars
            return self._backend

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every text's ids in one ``uint32`` array, and ``offsets`` (``int64``, ``len(texts) + 1``)."""
        import awkward as ak

        texts = texts if isinstance(texts, list) else list(texts)
        cut = digit_pieces(texts) if self.digit_cut else None
        pieces = texts if cut is None else cut[0]
        backend = self._current(sum(map(len, pieces)))  # on the caller's thread: it releases the GIL
        layout = ak.to_layout(backend.encode_batch(pieces, parallel=False))
        tokens, offsets = np.asarray(layout.content.data), np.asarray(layout.offsets.data)
        if cut is not None:  # each text's pieces are consecutive: keep the offsets at text boundaries
            ends = np.cumsum(np.asarray(cut[1], dtype=np.int64))
            offsets = np.concatenate([offsets[:1], offsets[ends]])
        return tokens, offsets

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return partial(FastEncoder, digit_cut=self.digit_cut, rebuild_chars=self.rebuild_chars), (self._build,)


def digit_pieces(texts: Sequence[str]) -> tuple[list[str], list[int]] | None:
    """``texts`` with every run of 3+ ``\\p{N}`` characters cut after its 2nd, 4th, ... character (the
    run's first two stay with the text before it), and each text's number of pieces; None when no text
    has such a run. The pieces encoded with ``\\p{N}{1,3}`` give the texts' ``\\p{N}{1,2}`` ids."""
    pieces: list[str] = []
    counts: list[int] = []
    for text in texts:
        cuts = [cut for m in _RUN.finditer(text) for cut in range(m.start() + 2, m.end(), 2)]
        pieces.extend(text[a:b] for a, b in pairwise([0, *cuts, len(text)]))
        counts.append(len(cuts) + 1)
    return (pieces, counts) if len(pieces) > len(texts) else None


# -- the identity check: texts on which split patterns and encoders disagree ------------------------
_NUMBERS = [
    "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678901234567890",
    "3.14159", "1e-9", "0xDEADBEEF", "2024-12-07", "1,234,567.89", "$1000000", "v1.2.3", "+33 1 23 45 67 89",
    "abc123def", "a1b22c333d4444", "x²³ y⁴⁵⁶", "١٢٣٤٥ ٦٧", "०१२३४५६७", "৩৪৫৬", "１２３４５", "½¾⅞ Ⅻ Ⅳ ⑩⑪⑫",
    "𝟘𝟙𝟚𝟛", "10²³ atoms", "١2٣4٥", "9 99 999 9999 99999",
]
_SPACES = [
    "", " ", "  ", "\n", "\n\n", "a \n ", "a\n\n  ", "x  ", "end \t\n\t", " \n \n ", "\r\n", "a\r\n\r\nb",
    "tabs\tand\nnewlines\r\n\n  indented   spaces   ", "  123", " 1234", "\t\t12345", "a  1234 b", "\n 123\n",
    "nbsp\u00a0\u00a0123", "line\u2028sep\u2029para", "ideo\u3000graphic\u3000 space",
]
_WORDS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "don't DON'T I'm I'M we'll WE'LL they've THEY'VE you're YOU'RE he'd HE'D it's IT'S o'clock ’s ’S",
    "naïve café — Ünïcödé ß ø 你好，世界 こんにちは Привет مرحبا नमस्ते क्षत्रिय",
    "emoji 😀👍🏽👨‍👩‍👧 flags 🇫🇷 and a lone combining mark e\u0301 and ǅ Ǆ ǆ",
    "punctuation!!! ... ??? --- *** ((())) [[x]] {y} <z> 'quoted' \"double\" `back`",
    "code: def f(x): return x**2 + 1  # comment\n    if x: pass\n",
    "\x00\x01 control chars \x7f \x1b[31m",
    "x" * 3000, " " * 300 + "y", "1" * 200, "ab" * 700, "\n" * 50,
]
_SPECIAL_TEXT = ["<|bos|>", "<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>", "<s>", "</s>", "<unk>",
                 "<|im_start|>", "<|user_start|>", "<|fim_prefix|>", "[CLS]", "<pad>"]


def _generated(n: int, seed: int = 0) -> list[str]:
    atoms = [*list("aZé ß\t\n\r '’sStTdDlL.,!?-_/\\|()0123456789²³١٢٣४½Ⅻ\u00a0\u2028\u3000\u0301中😀"),
             "'s", "'LL", "\r\n", " \n ", "\n\n", "  ", "123", "4567", "<|bos|>", "<|endoftext|>", " the", "ing"]
    rng = random.Random(seed)
    return ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 60))) for _ in range(n)]


SAMPLE: tuple[str, ...] = tuple(
    [*_NUMBERS, *_SPACES, *_WORDS, *_SPECIAL_TEXT,
     " ".join(_NUMBERS), "".join(_NUMBERS), " ".join(_SPECIAL_TEXT), "".join(_SPECIAL_TEXT),
     *(f"text {s} text{s}{s} {s}" for s in _SPECIAL_TEXT), *_generated(400)])


def exact_encoder(build: Callable[[], FastEncoder], reference: Callable[[list[str]], Sequence[Sequence[int]]],
                  specials: Iterable[str], reference_name: str) -> tuple[FastEncoder | None, str | None]:
    """``(build(), None)`` if it gives ``reference``'s ids on ``SAMPLE`` plus each of ``specials`` alone and in
    a sentence; else ``(None, why not)``."""
    try:
        enc = build()
    except ImportError:
        return None, "gigatoken is not installed"
    except Exception as exc:  # noqa: BLE001  (gigatoken raises plain errors for what it cannot encode)
        return None, f"gigatoken cannot load it ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    texts = [*SAMPLE, *(t for s in specials for t in (s, f"a {s} in text{s}{s}."))]
    tokens, offsets = enc.encode_flat(texts)
    for i, ids in enumerate(reference(texts)):
        if not np.array_equal(tokens[offsets[i]:offsets[i + 1]], np.asarray(ids, dtype=np.int64)):
            whose = reference_name + ("'" if reference_name.endswith("s") else "'s")
            return None, f"gigatoken's ids differ from {whose} on {texts[i][:40]!r}"
    return enc, None
