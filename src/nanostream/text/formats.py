"""The formats other than nanostream's own folder: a Hugging Face ``tokenizer.json`` (``HFTokenizer``, its
reference the ``tokenizers`` library) and nanochat's ``tokenizer.pkl``, read without running pickle code
(``read_encoding_state``: only an ``Encoding``'s opcodes and global, bound to a plain record class)."""

from __future__ import annotations

import io
import json
import pickle
import pickletools
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import TokenizerError
from .fast import FastEncoder, from_json
from .saved import read_file
from .tokenizer import FastOrReference, missing_bos

DEFAULT_BOS = ("<|bos|>", "<|begin_of_text|>", "<|endoftext|>", "<s>")
INSTALL = "reading a Hugging Face tokenizer.json needs the `tokenizers` package: pip install tokenizers"


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
        import tokenizers

        self.__dict__.update(state)
        self._ref = tokenizers.Tokenizer.from_str(state["_ref"])
        self._ref.encode_special_tokens = True


# -- nanochat's tokenizer.pkl -------------------------------------------------------------------
_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET",
    "GLOBAL", "STACK_GLOBAL", "NEWOBJ", "BUILD", "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_TUPLE",
    "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
    "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
})
_ENCODING = ("tiktoken.core", "Encoding")
_KEYS = {"name", "pat_str", "mergeable_ranks", "special_tokens"}
WHAT = "nanochat's tokenizer.pkl holds a pickled tiktoken Encoding"


class _EncodingState:
    """Stands in for ``tiktoken.core.Encoding`` while unpickling: keeps the state it is given."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == _ENCODING:
            return _EncodingState
        raise pickle.UnpicklingError(f"global {module}.{name}")


def _refused(path: Path, why: str) -> TokenizerError:
    return TokenizerError(f"{path} is not a pickled tiktoken Encoding ({why}): {WHAT}, and nanostream refuses to "
                          "run anything else from a pickle; pass nanochat's tokenizer.pkl as tok_train.py wrote it")


def read_encoding_state(path: Path) -> dict[str, Any]:
    """The ``Encoding`` state pickled in ``path``: name, pat_str, mergeable_ranks, special_tokens."""
    data = read_file(path)
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name not in _OPCODES:
                raise _refused(path, f"it uses the pickle opcode {op.name}")
            if op.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                if (module, name) != _ENCODING:
                    raise _refused(path, f"it names the global {module}.{name}")
    except (ValueError, EOFError) as exc:  # pickletools: truncated or not a pickle
        raise TokenizerError(f"{path} is truncated or not a pickle ({exc}): {WHAT}; copy it again, or run "
                             "nanochat's tok_train.py again") from exc
    try:
        obj = _Unpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise _refused(path, f"it asks for {exc}") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise TokenizerError(f"{path} is truncated or corrupt ({exc}): {WHAT}; copy it again") from exc
    if not isinstance(obj, _EncodingState):
        raise _refused(path, f"it holds a {type(obj).__name__}")
    return _checked(obj.state, path)


def _checked(state: Any, path: Path) -> dict[str, Any]:
    if isinstance(state, str):
        raise TokenizerError(f"{path} names tiktoken's registered encoding {state!r} instead of holding its ranks: "
                             f"pass that encoding's .tiktoken file, e.g. load_tokenizer('{state}.tiktoken')")
    if not isinstance(state, dict) or set(state) != _KEYS:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise _refused(path, f"its state is {keys}, an Encoding's is {sorted(_KEYS)}")
    ranks, specials = state["mergeable_ranks"], state["special_tokens"]
    ok = (isinstance(state["name"], str) and isinstance(state["pat_str"], str)
          and isinstance(ranks, dict) and isinstance(specials, dict)
          and all(type(k) is bytes and type(v) is int for k, v in ranks.items())
          and all(type(k) is str and type(v) is int for k, v in specials.items()))
    if not ok:
        raise _refused(path, "its state does not hold str, bytes and int where an Encoding's does")
    return state
