"""Split schemes: the pre-split regexes of the public encodings, nanostream's and nanochat's, by name; the
special tokens and sha256 of OpenAI's rank files; and which gigatoken pre-tokenizer splits as each regex."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import regex

from ..errors import TokenizerError

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
# sha256 of the rank files OpenAI publishes (tiktoken_ext.openai_public): a truncated copy is caught
OPENAI_SHA256 = {
    "r50k_base": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
# regex -> (gigatoken pre-tokenizer, cut digit runs into pairs first: ``digit_pieces``)
FAST_SCHEMES = {R50K: ("gpt2", False), CL100K: ("gpt4", False), NANOSTREAM: ("gpt4", False), O200K: ("o200k", False),
         NANOCHAT: ("gpt4", True)}

_RUN = regex.compile(r"\p{N}{3,}")


def split_pattern(scheme: str | None, name: str, path: Path) -> str:
    """The split regex of the ``.tiktoken`` file ``path`` (named ``name``): ``scheme``'s (a name in
    ``PATTERNS`` or a regex), else its name's if OpenAI's; a TokenizerError if there is none."""
    names = ", ".join(PATTERNS)
    if scheme is None:
        if name in OPENAI_SPECIALS:
            return PATTERNS[name]
        raise TokenizerError(f"{path} does not say how to split text before BPE: pass scheme= one of {names}, or "
                             f"the split regex itself (e.g. load_tokenizer({str(path)!r}, scheme='cl100k_base'))")
    if scheme in PATTERNS:
        return PATTERNS[scheme]
    if regex.fullmatch(r"[\w.-]+", scheme):
        raise TokenizerError(f"unknown split scheme {scheme!r} for {path}: use one of {names}, or pass the split "
                             "regex itself")
    try:
        regex.compile(scheme)
    except regex.error as exc:
        raise TokenizerError(f"split scheme for {path} is neither one of {names} nor a valid regex ({exc})") from exc
    return scheme


def digit_pieces(texts: Sequence[str]) -> tuple[list[str], list[int]] | None:
    """``texts`` with every run of 3+ ``\\p{N}`` characters cut after its 2nd, 4th, ... character (the
    run's first two stay with the text before it), and each text's number of pieces; None when no text
    has such a run. The pieces encoded with ``\\p{N}{1,3}`` give the texts' ``\\p{N}{1,2}`` ids."""
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
