"""``load_tokenizer`` and ``as_tokenizer``: the one way in for every tokenizer a user has (a file, a folder or
an object); each format is read in its own module (``saved.py``, ``pickled.py``, ``hf.py``), a ``.tiktoken``
rank file here."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tiktoken

from ..errors import TokenizerError
from .hf import HFTokenizer
from .pickled import read_encoding_state
from .saved import BOS, CONFIG_NAME, RANKS_NAME, RETRAIN, parse_ranks, read_folder, read_json
from .schemes import ENDOFTEXT, OPENAI_SHA256, OPENAI_SPECIALS, split_pattern
from .tokenizer import BPETokenizer, ByteTokenizer, Tokenizer

PICKLE_NAME = "tokenizer.pkl"
EXPECTED = ("a nanostream tokenizer folder, nanochat's tokenizer folder or tokenizer.pkl, a Hugging Face "
            'tokenizer.json, a .tiktoken rank file, or "byte"')


def load_tokenizer(path: Any, *, bos: str | None = None, scheme: str | None = None,
                   num_threads: int | None = None, encoder: str = "auto") -> Tokenizer:
    """The tokenizer at ``path``: ``"byte"``, a folder holding ``tokenizer.json`` (nanostream's or Hugging
    Face's) or nanochat's ``tokenizer.pkl``, one of those files, or a ``.tiktoken`` rank file; or an object
    (``as_tokenizer``). ``bos``: the BOS token's text where the format has no ``<|bos|>``; ``scheme``: a
    ``.tiktoken`` file's split regex or its name in ``schemes.PATTERNS``; ``encoder``: ``"auto"``,
    ``"gigatoken"`` or ``"tiktoken"`` (``FastOrReference._choose_encoder``)."""
    kw: dict[str, Any] = {"num_threads": num_threads, "encoder": encoder}
    if isinstance(path, str) and path == "byte":
        return ByteTokenizer()
    if not isinstance(path, (str, os.PathLike)):
        return as_tokenizer(path, bos=bos, **kw)
    p = Path(path).expanduser()
    if p.is_dir():
        found = [p / name for name in (CONFIG_NAME, PICKLE_NAME) if (p / name).is_file()]
        if not found:
            rank_files = sorted(q.name for q in p.glob("*.tiktoken") if q.name != RANKS_NAME)
            raise TokenizerError(f"no tokenizer in {p}: expected {CONFIG_NAME} (nanostream's or Hugging Face's) or "
                                 f"nanochat's {PICKLE_NAME}; " + (f"to read {rank_files[0]}, pass its path and "
                                                                   "scheme=" if rank_files else RETRAIN))
        p = found[0]
    elif not p.exists():
        raise TokenizerError(f"no tokenizer at {p} (it does not exist): pass {EXPECTED}")
    if p.suffix == ".pkl":
        state = read_encoding_state(p)
        return BPETokenizer(state["mergeable_ranks"], pattern=state["pat_str"],
                            special_tokens=state["special_tokens"], bos=bos or BOS, origin=str(p), **kw)
    if p.suffix == ".tiktoken":
        return _tiktoken_file(p, bos, scheme, kw)
    if p.suffix == ".json":
        return _json_file(p, bos, kw)
    raise TokenizerError(f"{p} is not a tokenizer file this nanostream reads: pass {EXPECTED}")


def _json_file(path: Path, bos: str | None, kw: dict[str, Any]) -> Tokenizer:
    ours = (path.parent / RANKS_NAME).is_file()  # beside nanostream's ranks: a folder of ours
    config = read_json(path, RETRAIN if ours else "copy it again")
    if ours or (isinstance(config, dict) and "format" in config):
        ranks, pattern = read_folder(config, path)
        try:
            return BPETokenizer(ranks, pattern=pattern, bos=bos or BOS, origin=str(path.parent), **kw)
        except TokenizerError as exc:
            raise TokenizerError(f"{exc}; {RETRAIN}") from exc
    if isinstance(config, dict) and "model" in config:
        return HFTokenizer(path.read_text(encoding="utf-8"), bos=bos, encoder=kw["encoder"], origin=str(path))
    raise TokenizerError(f"{path} is neither a nanostream tokenizer.json (no \"format\") nor a Hugging Face one "
                         f"(no \"model\"): pass {EXPECTED}")


def _tiktoken_file(path: Path, bos: str | None, scheme: str | None, kw: dict[str, Any]) -> Tokenizer:
    """A ``.tiktoken`` rank file: OpenAI's (checked against its published sha256, with its special tokens),
    or any other with BOS given the id after the ranks."""
    name = path.name.removesuffix(".tiktoken")
    pattern = split_pattern(scheme, name, path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from exc
    hint = "copy the rank file again"
    if name in OPENAI_SHA256 and hashlib.sha256(data).hexdigest() != OPENAI_SHA256[name]:
        raise TokenizerError(f"{path} does not match the published sha256 of {name} (truncated or modified); {hint}")
    ranks = parse_ranks(data, path, hint)
    if not ranks:
        raise TokenizerError(f"{path} holds no ranks (empty or truncated): {hint}")
    if name in OPENAI_SPECIALS:
        specials, bos = OPENAI_SPECIALS[name], bos or ENDOFTEXT
    else:
        specials, bos = {bos or BOS: len(ranks)}, bos or BOS
    return BPETokenizer(ranks, pattern=pattern, special_tokens=specials, bos=bos, origin=str(path), **kw)


class CallTokenizer:
    """An object with nanochat's tokenizer methods (``get_bos_token_id``, ``get_vocab_size``,
    ``encode(texts)``, ``decode``) as a ``Tokenizer``; its ``encode`` decides how text is split."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.bos_id, self.vocab_size = int(obj.get_bos_token_id()), int(obj.get_vocab_size())

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.obj.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self.obj.decode(list(ids))


def as_tokenizer(obj: Any, *, bos: str | None = None, num_threads: int | None = None,
                 encoder: str = "auto") -> Tokenizer:
    """``obj`` as a ``Tokenizer`` (what ``TokenDataset`` calls): a path goes to ``load_tokenizer``; a
    ``Tokenizer`` stays as it is; a ``tiktoken.Encoding``, nanochat's tokenizer object (its ``.enc``) and a
    ``tokenizers.Tokenizer`` get nanostream's encoders; any other object with nanochat's methods is called
    as it is (``CallTokenizer``). A TokenizerError for anything else."""
    if isinstance(obj, (str, os.PathLike)):
        return load_tokenizer(obj, bos=bos, num_threads=num_threads, encoder=encoder)
    if all(hasattr(obj, n) for n in ("bos_id", "vocab_size", "encode_batch")):
        return obj
    kw: dict[str, Any] = {"num_threads": num_threads, "encoder": encoder, "origin": type(obj).__name__}
    enc = obj if isinstance(obj, tiktoken.Encoding) else getattr(obj, "enc", None)
    if isinstance(enc, tiktoken.Encoding) and hasattr(enc, "_mergeable_ranks"):
        specials = dict(enc._special_tokens)
        if enc is not obj and callable(getattr(obj, "get_bos_token_id", None)):  # nanochat's RustBPETokenizer
            names = {i: s for s, i in specials.items()}
            bos = names.get(int(obj.get_bos_token_id()), bos)
        elif bos is None:
            bos = BOS if BOS in specials else ENDOFTEXT
        return BPETokenizer(enc._mergeable_ranks, pattern=enc._pat_str, special_tokens=specials, bos=bos or BOS, **kw)
    if type(obj).__module__.partition(".")[0] == "tokenizers" and hasattr(obj, "to_str"):
        return HFTokenizer(obj.to_str(), bos=bos, encoder=encoder, origin=kw["origin"])
    if all(callable(getattr(obj, n, None)) for n in ("get_bos_token_id", "get_vocab_size", "encode")):
        return CallTokenizer(obj)
    raise TokenizerError(f"a {type(obj).__name__!r} object is not a tokenizer nanostream can use: pass {EXPECTED}, a "
                         "tiktoken Encoding, a tokenizers.Tokenizer, nanochat's tokenizer object, or an object with "
                         "bos_id, vocab_size and encode_batch (nanostream.text.tokenizer.Tokenizer)")
