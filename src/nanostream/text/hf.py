"""A Hugging Face ``tokenizer.json`` (GPT-2, Llama 3, Qwen, one trained with ``tokenizers``) as a tokenizer.

The reference is the ``tokenizers`` library, called as a data loader must: no post-processor (the
loader places BOS) and special added tokens encoded as the text they are. gigatoken gets the same
file without its special added tokens (their ids stay reserved).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from typing import Any

from ..errors import TokenizerError
from .fast import FastEncoder, from_json
from .tokenizer import FastOrReference

DEFAULT_BOS = ("<|bos|>", "<|begin_of_text|>", "<|endoftext|>", "<s>")
INSTALL = "reading a Hugging Face tokenizer.json needs the `tokenizers` package: pip install tokenizers"


def _without_specials(data: str) -> str:
    config = json.loads(data)
    config["added_tokens"] = [t for t in config.get("added_tokens") or [] if not t.get("special")]
    return json.dumps(config)


class HFTokenizer(FastOrReference):
    """A ``tokenizers.Tokenizer`` made from ``tokenizer.json`` text ``data``, with BOS ``bos`` (default: the
    first of ``DEFAULT_BOS`` in its vocabulary); ``encoder`` as ``BPETokenizer`` takes it (``"tiktoken"``,
    the reference, meaning ``tokenizers`` here)."""

    reference_name = "tokenizers"

    def __init__(self, data: str, *, bos: str | None = None, encoder: str = "auto",
                 origin: str = "tokenizer.json") -> None:
        try:
            import tokenizers
        except ImportError as exc:
            raise TokenizerError(f"{origin}: {INSTALL}") from exc
        try:
            self._ref = tokenizers.Tokenizer.from_str(data)
        except Exception as exc:
            raise TokenizerError(f"{origin} is not a Hugging Face tokenizer.json tokenizers can load ({exc})") from exc
        self._ref.encode_special_tokens = True  # a special token's text in a document is text
        self.origin = origin
        added = json.loads(data).get("added_tokens") or []
        self.special_tokens = {t["content"]: t["id"] for t in added if t.get("special")}
        candidates = (bos,) if bos is not None else DEFAULT_BOS
        found = [(b, i) for b in candidates if (i := self._ref.token_to_id(b)) is not None]
        if not found:
            raise TokenizerError(f"{origin}: BOS token {' or '.join(map(repr, candidates))} is not in its vocabulary "
                                 f"(its special tokens: {', '.join(self.special_tokens) or 'none'}); pass bos= "
                                 "one of them")
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
        import tokenizers

        self.__dict__.update(state)
        self._ref = tokenizers.Tokenizer.from_str(state["_ref"])
        self._ref.encode_special_tokens = True
