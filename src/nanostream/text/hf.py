"""A Hugging Face ``tokenizer.json`` (GPT-2, Llama 3, Qwen, one trained with ``tokenizers``) as a nanostream tokenizer.

The reference is the ``tokenizers`` library itself, called as a data loader must: no
post-processor (``add_special_tokens=False``: the loader places BOS) and special added tokens
encoded as the text they are (``encode_special_tokens = True``), so a document containing
``<|endoftext|>`` never gets its id. gigatoken encodes the same ``tokenizer.json`` with its
special added tokens removed (their ids stay reserved: ``vocab_size`` is the reference's);
it is used where it loads the file and gives the reference's ids on the identity sample, and
otherwise ``tokenizers`` encodes, said once. Non-special added tokens are matched in text by
both, as ``tokenizers`` does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import TokenizerError
from . import fast, identity
from .tokenizer import ENCODERS, flat_of, lists_of, say_once

DEFAULT_BOS = ("<|bos|>", "<|begin_of_text|>", "<|endoftext|>", "<s>")
INSTALL = "reading a Hugging Face tokenizer.json needs the `tokenizers` package: pip install tokenizers"


def _strip_special(data: str) -> str:
    config = json.loads(data)
    config["added_tokens"] = [t for t in config.get("added_tokens") or [] if not t.get("special")]
    return json.dumps(config)


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (from ``tokenizer.json`` text) with BOS ``bos`` (default: the first
    of ``DEFAULT_BOS`` in its vocabulary) and ``encoder`` as ``BPETokenizer`` has it (``"tiktoken"``
    there meaning the reference library, here ``tokenizers``)."""

    def __init__(self, data: str, *, bos: str | None = None, encoder: str = "auto",
                 origin: str = "tokenizer.json") -> None:
        try:
            import tokenizers
        except ImportError as exc:
            raise TokenizerError(f"{origin}: {INSTALL}") from exc
        if encoder not in ENCODERS:
            raise TokenizerError(f"unknown encoder {encoder!r}: use one of {', '.join(ENCODERS)}")
        try:
            self._ref = tokenizers.Tokenizer.from_str(data)
        except Exception as exc:
            raise TokenizerError(f"{origin} is not a Hugging Face tokenizer.json tokenizers can load ({exc})") from exc
        self._ref.encode_special_tokens = True
        self.origin = origin
        added = json.loads(data).get("added_tokens") or []
        self.special_tokens = {t["content"]: t["id"] for t in added if t.get("special")}
        candidates = (bos,) if bos is not None else DEFAULT_BOS
        found = [(b, self._ref.token_to_id(b)) for b in candidates]
        found = [(b, i) for b, i in found if i is not None]
        if not found:
            raise TokenizerError(f"{origin}: BOS token {' or '.join(map(repr, candidates))} is not in its vocabulary "
                                 f"(its special tokens: {', '.join(self.special_tokens) or 'none'}); pass bos= "
                                 "one of them")
        self.bos, self.bos_id = found[0]
        self.vocab_size = self._ref.get_vocab_size(with_added_tokens=True)
        self.fast = None if encoder == "tiktoken" else self._fast_encoder(data, encoder == "gigatoken")
        self.encoder_name = "tokenizers" if self.fast is None else "gigatoken"

    def _fast_encoder(self, data: str, required: bool) -> fast.FastEncoder | None:
        enc, reason = None, None
        if not fast.available():
            reason = "gigatoken is not installed"
        else:
            try:
                enc = fast.FastEncoder(fast.FromJson(_strip_special(data)))
            except Exception as exc:  # noqa: BLE001  (gigatoken raises plain errors for what it cannot encode)
                reason = f"gigatoken cannot load it ({str(exc).splitlines()[0]})"
            else:
                diff = identity.first_difference(self._reference_batch, enc.encode_flat,
                                                  identity.sample([*self.special_tokens, self.bos]))
                if diff is not None:
                    enc, reason = None, f"gigatoken's ids differ from tokenizers' on {diff[:40]!r}"
        if reason is None:
            return enc
        if required:
            raise TokenizerError(f"{self.origin}: cannot encode with gigatoken: {reason}")
        say_once(f"{self.origin}: encoding with tokenizers, not gigatoken: {reason}")
        return None

    def _reference_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._ref.encode_batch(list(texts), add_special_tokens=False)]

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.fast is not None:
            return self.fast.encode_flat(texts)
        return flat_of(self._reference_batch(texts))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.fast is not None:
            return lists_of(*self.fast.encode_flat(texts))
        return self._reference_batch(texts)

    def decode(self, ids: Sequence[int]) -> str:
        return self._ref.decode([int(i) for i in ids], skip_special_tokens=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ref"] = self._ref.to_str()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import tokenizers

        self.__dict__.update(state)
        self._ref = tokenizers.Tokenizer.from_str(state["_ref"])
        self._ref.encode_special_tokens = True
