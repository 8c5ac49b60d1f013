"""The load-time identity check: the fast encoder must give the reference library's ids, text for text.

``SAMPLE`` is a fixed, deterministic set of texts that covers what split patterns disagree on:
numbers (ASCII and other scripts' digits, superscripts, fractions, runs of every length next
to letters, spaces and punctuation), whitespace at the end of a text and before a number,
contractions in both cases, special-token text (``<|bos|>``, ``<|endoftext|>``, ...), scripts
with combining marks, emoji, control characters and long repeats, plus 400 texts drawn from
those atoms by a seeded generator. ``first_difference`` encodes them (and the tokenizer's own
special-token and BOS texts, alone and in a sentence) both ways and returns the first text whose
ids differ, or None. Its cost at load time is measured in docs/tokenizer.md.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence

import numpy as np

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


def sample(specials: Iterable[str] = ()) -> list[str]:
    """``SAMPLE`` plus each of ``specials`` alone and inside a sentence."""
    extra = [t for s in specials for t in (s, f"a {s} in text{s}{s}.")]
    return [*SAMPLE, *extra]


def first_difference(reference: Callable[[list[str]], Sequence[Sequence[int]]],
                     fast: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
                     texts: list[str]) -> str | None:
    """The first of ``texts`` whose ids from ``fast`` (flat) differ from ``reference``'s, or None."""
    want = reference(texts)
    tokens, offsets = fast(texts)
    if len(offsets) != len(texts) + 1:
        return texts[0] if texts else None
    for i, ids in enumerate(want):
        got = tokens[offsets[i]:offsets[i + 1]]
        if len(got) != len(ids) or not np.array_equal(got, np.asarray(ids, dtype=np.int64)):
            return texts[i]
    return None
