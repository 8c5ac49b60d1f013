"""Reading nanostream's own tokenizer folder, and the two file readers every format shares.

The folder (default ``$NANOSTREAM_BASE_DIR/tokenizer``), written by ``BPETokenizer.save``,
plain text, never pickle:

``ranks.tiktoken``
    One line per token, ``base64(token_bytes) rank``, ranks ``0..n-1`` in order;
    the 256 single bytes are always present. This is tiktoken's own ``.tiktoken``
    format, so ``tiktoken.load.load_tiktoken_bpe`` reads it too.
``tokenizer.json``
    ``{"format": "nanostream-bpe", "version": 1, "pattern": <split regex>,
    "special_tokens": {"<|bos|>": n}, "vocab_size": n + 1, "num_ranks": n,
    "ranks_file": "ranks.tiktoken", "ranks_sha256": <hex sha256 of ranks.tiktoken>}``.
    Special tokens take the ids right after the ranks; ``vocab_size`` counts them.

Both files are written atomically (temp file, fsync, ``os.replace``), ranks first,
so ``tokenizer.json`` is the commit point. Loading checks every field and the
sha256; a missing, truncated, modified or malformed file raises ``TokenizerError``
naming the file and telling you to run ``nanostream tokenizer train`` again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import TokenizerError
from .tokenizer import FORMAT, FORMAT_VERSION, SPECIAL_TOKENS, BPETokenizer

RETRAIN = "run `nanostream tokenizer train` to train it again"


def read_json(path: Path, hint: str) -> Any:
    """``path`` parsed as JSON; a TokenizerError naming it (and ending with ``hint``) if it cannot be."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TokenizerError(f"no tokenizer at {path.parent} ({path.name} is missing); {hint}") from exc
    except OSError as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise TokenizerError(f"{path} is not valid JSON (truncated or corrupt: {exc}); {hint}") from exc


def parse_ranks(data: bytes, path: Path, hint: str) -> dict[bytes, int]:
    """A ``.tiktoken`` file's ``base64 rank`` lines as ``{token bytes: rank}``."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as exc:
            raise TokenizerError(f"{path} line {lineno} is not `base64 rank` (truncated or corrupt: {exc}); "
                                 f"{hint}") from exc
    return ranks


def _field(config: dict[str, Any], key: str, kind: type, where: Path) -> Any:
    value = config.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TokenizerError(f"{where}: field {key!r} is missing or not a {kind.__name__}; {RETRAIN}")
    return value


def load_folder(config: Any, config_path: Path, **kwargs: Any) -> BPETokenizer:
    """The tokenizer whose ``tokenizer.json`` at ``config_path`` parsed as ``config``; ``kwargs`` go to BPETokenizer."""
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise TokenizerError(f"{config_path} is not a nanostream BPE tokenizer file; {RETRAIN}")
    if config.get("version") != FORMAT_VERSION:
        raise TokenizerError(f"{config_path} has format version {config.get('version')!r}, this nanostream reads "
                             f"version {FORMAT_VERSION}; {RETRAIN}")
    directory = config_path.parent
    pattern = _field(config, "pattern", str, config_path)
    specials = _field(config, "special_tokens", dict, config_path)
    vocab_size = _field(config, "vocab_size", int, config_path)
    num_ranks = _field(config, "num_ranks", int, config_path)
    ranks_file = _field(config, "ranks_file", str, config_path)
    sha = _field(config, "ranks_sha256", str, config_path)
    if Path(ranks_file).name != ranks_file or ranks_file.startswith("."):
        raise TokenizerError(f"{config_path}: ranks_file {ranks_file!r} must be a plain file name; {RETRAIN}")
    ranks_path = directory / ranks_file
    try:
        data = ranks_path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"cannot read {ranks_path} ({exc}); {RETRAIN}") from exc
    if hashlib.sha256(data).hexdigest() != sha:
        raise TokenizerError(f"{ranks_path} does not match the sha256 in {config_path} "
                             f"(truncated or modified); {RETRAIN}")
    ranks = parse_ranks(data, ranks_path, RETRAIN)
    expected = {tok: num_ranks + i for i, tok in enumerate(SPECIAL_TOKENS)}
    if len(ranks) != num_ranks or specials != expected or vocab_size != num_ranks + len(expected):
        raise TokenizerError(f"{config_path} does not agree with {ranks_path} (num_ranks {num_ranks}, "
                             f"{len(ranks)} ranks read, vocab_size {vocab_size}, special_tokens {specials}); "
                             f"{RETRAIN}")
    if kwargs.get("bos") is None:
        kwargs.pop("bos", None)
    try:
        return BPETokenizer(ranks, pattern=pattern, origin=str(directory), **kwargs)
    except TokenizerError as exc:
        raise TokenizerError(f"{exc}; {RETRAIN}") from exc

