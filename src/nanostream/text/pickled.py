"""Reading nanochat's ``tokenizer.pkl`` (``pickle.dump`` of a ``tiktoken.Encoding``) without running pickle code.

``read_encoding_state`` accepts only the opcodes and the one global (``tiktoken.core.Encoding``) such a
pickle holds, checked before unpickling, binds that global to a plain record class (so not even
tiktoken's ``__setstate__`` runs), and checks the state's types.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path
from typing import Any

from ..errors import TokenizerError

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
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from exc
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
