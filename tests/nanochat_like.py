"""A tokenizer built, saved and called exactly as nanochat's ``nanochat/tokenizer.py`` does it.

nanochat is not installable in CI, so this is an object of the same shape as its
``RustBPETokenizer`` (``.enc``, ``get_bos_token_id``, ``get_vocab_size``, ``encode(text or texts,
prepend=, num_threads=)``, ``decode``), written for these tests (not copied): rustbpe trains the
merges with nanochat's split pattern, a ``tiktoken.Encoding(name="rustbpe", ...)`` with its nine
special tokens after the ranks encodes, and ``save`` is ``pickle.dump(enc)`` to ``tokenizer.pkl``.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Iterable

import rustbpe
import tiktoken

# nanochat's split pattern: GPT-4's with \p{N}{1,2} instead of \p{N}{1,3}
NANOCHAT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                    r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
NANOCHAT_SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                     "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]


class NanochatLikeTokenizer:
    def __init__(self, enc: tiktoken.Encoding, bos_token: str) -> None:
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(bos_token)

    @classmethod
    def train_from_iterator(cls, texts: Iterable[str], vocab_size: int) -> NanochatLikeTokenizer:
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(iter(texts), vocab_size - len(NANOCHAT_SPECIALS), pattern=NANOCHAT_PATTERN)
        ranks = {bytes(k): v for k, v in trainer.get_mergeable_ranks()}
        specials = {name: len(ranks) + i for i, name in enumerate(NANOCHAT_SPECIALS)}
        enc = tiktoken.Encoding(name="rustbpe", pat_str=trainer.get_pattern(), mergeable_ranks=ranks,
                                special_tokens=specials)
        return cls(enc, "<|bos|>")

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode(self, text, prepend=None, num_threads=8):
        prepend_id = None if prepend is None else (prepend if isinstance(prepend, int)
                                                    else self.enc.encode_single_token(prepend))
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return ids if prepend_id is None else [prepend_id, *ids]
        rows = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
        return rows if prepend_id is None else [[prepend_id, *row] for row in rows]

    def decode(self, ids) -> str:
        return self.enc.decode(ids)

    def save(self, tokenizer_dir: str | os.PathLike) -> None:
        os.makedirs(tokenizer_dir, exist_ok=True)
        with open(os.path.join(tokenizer_dir, "tokenizer.pkl"), "wb") as f:
            pickle.dump(self.enc, f)


def number_docs(n: int = 300, seed: int = 0) -> list[str]:
    """Documents full of numbers: runs of 1-13 digits, ASCII and not, next to words, spaces and marks."""
    rng = random.Random(seed)
    tails = [" apples", "\n", "  ", ",", "x", "²³", "١٢٣٤", "०१२", " ", ".5", "\t", "-"]
    return [" ".join(str(rng.randint(0, 10 ** rng.randint(1, 12))) + rng.choice(tails) for _ in range(50))
            for _ in range(n)]
