"""``load_tokenizer``, the one way in for every tokenizer a user has (file, folder, object); ``.tiktoken`` rank
files and the others are read by ``formats.py``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import regex
import tiktoken

from ..errors import TokenizerError
from . import formats
from .fast import PATTERNS
from .formats import BOS, CONFIG_NAME, RANKS_NAME, RETRAIN
from .tokenizer import BPETokenizer, ByteTokenizer, HFTokenizer, Tokenizer

ENDOFTEXT, ENDOFPROMPT = "<|endoftext|>", "<|endofprompt|>"
OPENAI_SPECIALS = {
    "r50k_base": {ENDOFTEXT: 50256},
    "gpt2": {ENDOFTEXT: 50256},  # r50k_base's other name
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
PICKLE_NAME = "tokenizer.pkl"
EXPECTED = ("a nanostream tokenizer folder, nanochat's tokenizer folder or tokenizer.pkl, a Hugging Face "
            'tokenizer.json, a .tiktoken rank file, or "byte"')


def load_tokenizer(path: Any, *, bos: str | None = None, scheme: str | None = None,
                   num_threads: int | None = None, encoder: str = "auto") -> Tokenizer:
    """The tokenizer at ``path`` (``EXPECTED``), or the object ``path`` (``_from_object``). ``bos``: its BOS where
    the format has no ``<|bos|>``; ``scheme``: a ``.tiktoken`` file's split regex or its name in ``PATTERNS``;
    ``encoder``: ``"auto"``, ``"gigatoken"`` or ``"tiktoken"``."""
    kw: dict[str, Any] = {"num_threads": num_threads, "encoder": encoder}
    if isinstance(path, str) and path == "byte":
        return ByteTokenizer()
    if not isinstance(path, (str, os.PathLike)):
        return _from_object(path, bos, kw)
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
        state = formats.read_encoding_state(p)
        return BPETokenizer(state["mergeable_ranks"], pattern=state["pat_str"],
                            special_tokens=state["special_tokens"], bos=bos or BOS, origin=str(p), **kw)
    if p.suffix == ".tiktoken":
        return _tiktoken_file(p, bos, scheme, kw)
    if p.suffix == ".json":
        return _json_file(p, bos, kw)
    raise TokenizerError(f"{p} is not a tokenizer file this nanostream reads: pass {EXPECTED}")


def _json_file(path: Path, bos: str | None, kw: dict[str, Any]) -> Tokenizer:
    ours = (path.parent / RANKS_NAME).is_file()  # beside nanostream's ranks: a folder of ours
    config = formats.read_json(path, RETRAIN if ours else "copy it again")
    if ours or (isinstance(config, dict) and "format" in config):
        ranks, pattern = formats.read_folder(config, path)
        try:
            return BPETokenizer(ranks, pattern=pattern, bos=bos or BOS, origin=str(path.parent), **kw)
        except TokenizerError as exc:
            raise TokenizerError(f"{exc}; {RETRAIN}") from exc
    if isinstance(config, dict) and "model" in config:
        return HFTokenizer(path.read_text(encoding="utf-8"), bos=bos, encoder=kw["encoder"], origin=str(path))
    raise TokenizerError(f"{path} is neither a nanostream tokenizer.json (no \"format\") nor a Hugging Face one "
                         f"(no \"model\"): pass {EXPECTED}")


def _tiktoken_file(path: Path, bos: str | None, scheme: str | None, kw: dict[str, Any]) -> Tokenizer:
    """A ``.tiktoken`` rank file: OpenAI's (its sha256 checked, its special tokens), or another with BOS after
    the ranks."""
    name = path.name.removesuffix(".tiktoken")
    pattern = split_pattern(scheme, name, path)
    ranks = formats.read_tiktoken(path, OPENAI_SHA256.get(name))
    if name in OPENAI_SPECIALS:
        specials, bos = OPENAI_SPECIALS[name], bos or ENDOFTEXT
    else:
        specials, bos = {bos or BOS: len(ranks)}, bos or BOS
    return BPETokenizer(ranks, pattern=pattern, special_tokens=specials, bos=bos, origin=str(path), **kw)


def split_pattern(scheme: str | None, name: str, path: Path) -> str:
    """The split regex of the ``.tiktoken`` file ``path`` named ``name``: ``scheme``'s, else OpenAI's for its name."""
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


def _from_object(obj: Any, bos: str | None, kw: dict[str, Any]) -> Tokenizer:
    """``obj`` as a ``Tokenizer``: a ``Tokenizer`` is kept, a ``tiktoken.Encoding``, nanochat's object or a
    ``tokenizers.Tokenizer`` gets nanostream's encoders, another with nanochat's methods is called."""
    if all(hasattr(obj, n) for n in ("bos_id", "vocab_size", "encode_batch")):
        return obj
    kw = {**kw, "origin": type(obj).__name__}
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
        return HFTokenizer(obj.to_str(), bos=bos, encoder=kw["encoder"], origin=kw["origin"])
    if all(callable(getattr(obj, n, None)) for n in ("get_bos_token_id", "get_vocab_size", "encode")):
        return CallTokenizer(obj)
    raise TokenizerError(f"a {type(obj).__name__!r} object is not a tokenizer nanostream can use: pass {EXPECTED}, a "
                         "tiktoken Encoding, a tokenizers.Tokenizer, nanochat's tokenizer object, or an object with "
                         "bos_id, vocab_size and encode_batch (nanostream.text.tokenizer.Tokenizer)")
