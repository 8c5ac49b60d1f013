"""Split schemes: the pre-split regexes nanostream knows by name, and which fast-encoder scheme runs each.

A BPE vocabulary (a ``.tiktoken`` rank file, a pickled ``tiktoken.Encoding``) is ranks plus a
split regex. ``PATTERNS`` names the regexes of the public encodings (``gpt2``/``r50k_base``,
``cl100k_base``, ``o200k_base``) and of nanostream and nanochat; ``OPENAI_SPECIALS`` the special
tokens OpenAI's rank files leave out. ``fast_scheme(pattern)`` says which gigatoken pre-tokenizer
gives the same pieces as ``pattern`` (None: no fast encoder for it), and whether runs of 3 or more
``\\p{N}`` characters must first be cut into pairs (nanochat's ``\\p{N}{1,2}`` on the GPT-4
scheme's ``\\p{N}{1,3}``: ``digit_pieces``). Whatever this table says, the encoder is checked
against tiktoken on a fixed sample when a tokenizer is loaded (``identity.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import regex

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
ENDOFTEXT, ENDOFPROMPT = "<|endoftext|>", "<|endofprompt|>"
OPENAI_SPECIALS = {
    "r50k_base": {ENDOFTEXT: 50256},
    "gpt2": {ENDOFTEXT: 50256},
    "cl100k_base": {ENDOFTEXT: 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                    "<|fim_suffix|>": 100260, ENDOFPROMPT: 100276},
    "o200k_base": {ENDOFTEXT: 199999, ENDOFPROMPT: 200018},
}
# regex -> (gigatoken pre-tokenizer, cut digit runs into pairs first)
_FAST = {R50K: ("gpt2", False), CL100K: ("gpt4", False), NANOSTREAM: ("gpt4", False), O200K: ("o200k", False),
         NANOCHAT: ("gpt4", True)}

_RUN = regex.compile(r"\p{N}{3,}")


def fast_scheme(pattern: str) -> tuple[str, bool] | None:
    """(gigatoken scheme, cut digit runs) that splits text as ``pattern`` does, or None."""
    return _FAST.get(pattern)


def digit_pieces(texts: Sequence[str]) -> tuple[list[str], list[int]] | None:
    """``texts`` with every run of 3+ ``\\p{N}`` characters cut after its 2nd, 4th, ... character
    (the run's first two stay with the text before it), and each text's number of pieces; None
    when no text has such a run. Encoding each piece with ``\\p{N}{1,3}`` and joining a text's
    pieces gives its ``\\p{N}{1,2}`` encoding: a piece never ends in whitespace, and no other
    alternative of the pattern consumes or looks past a number character."""
    pieces: list[str] = []
    counts: list[int] = []
    cut_any = False
    search = _RUN.search
    for text in texts:
        m = search(text)
        if m is None:
            pieces.append(text)
            counts.append(1)
            continue
        cut_any = True
        n0, last = len(pieces), 0
        while m is not None:
            a, b = m.span()
            for cut in range(a + 2, b, 2):
                pieces.append(text[last:cut])
                last = cut
            m = search(text, b)
        pieces.append(text[last:])
        counts.append(len(pieces) - n0)
    return (pieces, counts) if cut_any else None
