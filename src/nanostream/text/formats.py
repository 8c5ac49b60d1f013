"""The tokenizer files: nanostream's own folder (``ranks.tiktoken`` and ``tokenizer.json``, laid out in
docs/tokenizer.md) written and read, the readers every format shares, and nanochat's ``tokenizer.pkl``, read
without running pickle code (``read_encoding_state``: only an ``Encoding``'s opcodes and global)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import pickle
import pickletools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import TokenizerError
from ..shards import write_bytes

BOS = "<|bos|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS,)  # nanostream's tokenizers have these, right after the ranks
FORMAT, FORMAT_VERSION = "nanostream-bpe", 1
CONFIG_NAME, RANKS_NAME = "tokenizer.json", "ranks.tiktoken"
RETRAIN = "save the tokenizer again (BPETokenizer.save)"


def ranks_text(ranks: Mapping[bytes, int]) -> bytes:
    """``ranks`` as a ``.tiktoken`` file: ``base64(token) rank`` lines in rank order."""
    return "".join(f"{base64.b64encode(tok).decode('ascii')} {rank}\n"
                   for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])).encode("ascii")


def parse_ranks(data: bytes, path: Path, hint: str) -> dict[bytes, int]:
    """A ``.tiktoken`` file's lines as ``{token bytes: rank}``; a TokenizerError naming ``path`` and ending
    with ``hint`` for a line that is not ``base64 rank``."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as exc:
            raise TokenizerError(f"{path} line {lineno} is not `base64 rank` (truncated or corrupt: {exc}); "
                                 f"{hint}") from exc
    return ranks


def read_file(path: Path) -> bytes:
    """``path``'s bytes; a TokenizerError naming it if they cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from exc


def read_tiktoken(path: Path, published_sha256: str | None = None) -> dict[bytes, int]:
    """A ``.tiktoken`` file's ranks, its bytes checked against ``published_sha256`` (OpenAI's) if given."""
    data, hint = read_file(path), "copy the rank file again"
    if published_sha256 is not None and hashlib.sha256(data).hexdigest() != published_sha256:
        raise TokenizerError(f"{path} does not match the published sha256 of {path.stem} (truncated or modified); "
                             f"{hint}")
    ranks = parse_ranks(data, path, hint)
    if not ranks:
        raise TokenizerError(f"{path} holds no ranks (empty or truncated): {hint}")
    return ranks


def read_json(path: Path, hint: str) -> Any:
    """``path`` parsed as JSON; a TokenizerError naming it and ending with ``hint`` if it cannot be."""
    try:
        return json.loads(read_file(path).decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise TokenizerError(f"{path} is not valid JSON (truncated or corrupt: {exc}); {hint}") from exc


def save_folder(directory: Path, ranks: Mapping[bytes, int], pattern: str, special_tokens: Mapping[str, int],
                vocab_size: int) -> Path:
    """Write ``ranks.tiktoken``, then ``tokenizer.json`` (the commit point), each atomically, into ``directory``."""
    data = ranks_text(ranks)
    config = {"format": FORMAT, "version": FORMAT_VERSION, "pattern": pattern,
              "special_tokens": dict(special_tokens), "vocab_size": vocab_size, "num_ranks": len(ranks),
              "ranks_file": RANKS_NAME, "ranks_sha256": hashlib.sha256(data).hexdigest()}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_bytes(directory / RANKS_NAME, data)
        write_bytes(directory / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
    except OSError as exc:
        raise TokenizerError(f"cannot save the tokenizer to {directory}: {exc}") from exc
    return directory


FIELDS = {"pattern": str, "special_tokens": dict, "vocab_size": int, "num_ranks": int, "ranks_file": str,
          "ranks_sha256": str}


def read_folder(config: Any, config_path: Path) -> tuple[dict[bytes, int], str]:
    """The ranks and split pattern of the folder whose ``tokenizer.json`` at ``config_path`` parsed as
    ``config``, every field and the ranks' sha256 checked; a TokenizerError naming the file if one is wrong."""

    def bad(why: str) -> TokenizerError:
        return TokenizerError(f"{config_path}{why}; {RETRAIN}")

    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise bad(" is not a nanostream BPE tokenizer file")
    if config.get("version") != FORMAT_VERSION:
        raise bad(f" has format version {config.get('version')!r}, this nanostream reads version {FORMAT_VERSION}")
    for key, kind in FIELDS.items():
        if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool):
            raise bad(f": field {key!r} is missing or not a {kind.__name__}")
    pattern, specials, vocab_size, num_ranks, ranks_file, sha = (config[key] for key in FIELDS)
    if Path(ranks_file).name != ranks_file or ranks_file.startswith("."):
        raise bad(f": ranks_file {ranks_file!r} must be a plain file name")
    ranks_path = config_path.parent / ranks_file
    try:
        data = read_file(ranks_path)
    except TokenizerError as exc:
        raise bad(f": {exc}") from exc
    if hashlib.sha256(data).hexdigest() != sha:
        raise bad(f": {ranks_path} does not match its sha256 (truncated or modified)")
    ranks = parse_ranks(data, ranks_path, RETRAIN)
    expected = {tok: num_ranks + i for i, tok in enumerate(SPECIAL_TOKENS)}
    if len(ranks) != num_ranks or specials != expected or vocab_size != num_ranks + len(expected):
        raise bad(f" does not agree with {ranks_path} (num_ranks {num_ranks}, {len(ranks)} ranks read, "
                  f"vocab_size {vocab_size}, special_tokens {specials})")
    return ranks, pattern


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
    state = obj.state
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
