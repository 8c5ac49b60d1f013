"""BPE training: ``train_tokenizer`` (rustbpe learns the merges; tiktoken or gigatoken encode the result) and
``nanostream tokenizer train``, which reads a folder's train files, never its validation files."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import rustbpe

from ..errors import (
    ConfigError,
    CorruptShardError,
    DatasetError,
    MissingShardError,
    NanostreamError,
    TokenizerError,
)
from ..sources.resolve import pin_catalog, split_indices
from .saved import SPECIAL_TOKENS
from .tokenizer import SPLIT_PATTERN, BPETokenizer

if TYPE_CHECKING:
    import argparse

    from ..config import Config

log = logging.getLogger(__name__)

MIN_VOCAB_SIZE = 256 + 1 + len(SPECIAL_TOKENS)  # the bytes, at least one merge, the specials
MAX_VOCAB_SIZE = 1 << 20


def check_train_args(vocab_size: int, max_chars: int) -> None:
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ConfigError(f"vocab size {vocab_size} is out of range: use {MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE} "
                          f"(256 bytes + merges + {len(SPECIAL_TOKENS)} special token)")
    if max_chars <= 0:
        raise ConfigError(f"max chars must be > 0, got {max_chars}")


def _compact(pairs: Iterable[tuple[bytes, int]]) -> dict[bytes, int]:
    """Ranks renumbered 0..n-1 in merge order, keeping the first of any duplicate token."""
    ranks: dict[bytes, int] = {}
    for token, _ in sorted(pairs, key=lambda p: p[1]):
        ranks.setdefault(bytes(token), len(ranks))
    return ranks


def train_with_stats(texts: Iterable[str], *, vocab_size: int = 8192, max_chars: int = 20_000_000,
                     num_threads: int | None = None) -> tuple[BPETokenizer, int]:
    """``train_tokenizer`` that also returns how many characters it trained on."""
    check_train_args(vocab_size, max_chars)
    used = 0

    def capped() -> Iterator[str]:
        nonlocal used
        for text in texts:
            if not text:
                continue
            piece = text[: max_chars - used]
            used += len(piece)
            yield piece
            if used >= max_chars:
                return

    rust_log = logging.getLogger("rustbpe")  # ~100 INFO progress lines per run; keep them for -v
    if rust_log.level == logging.NOTSET and not log.isEnabledFor(logging.DEBUG):
        rust_log.setLevel(logging.WARNING)
    feed = capped()
    trainer = rustbpe.Tokenizer()
    try:
        trainer.train_from_iterator(feed, vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    except NanostreamError:
        raise  # e.g. a corrupt shard met while reading
    except Exception as exc:
        raise TokenizerError(f"BPE training failed: {exc}") from exc
    finally:
        feed.close()
    if used == 0:
        raise TokenizerError("no text to train the tokenizer on: every document was empty")
    tok = BPETokenizer(_compact(trainer.get_mergeable_ranks()), pattern=SPLIT_PATTERN, num_threads=num_threads)
    if tok.vocab_size < vocab_size:
        log.warning("only %d tokens could be learned from %d chars (asked for %d): vocab_size is %d",
                    tok.vocab_size - len(SPECIAL_TOKENS), used, vocab_size, tok.vocab_size)
    return tok, used


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 8192, max_chars: int = 20_000_000,
                    num_threads: int | None = None) -> BPETokenizer:
    """A byte-level BPE trained on the first ``max_chars`` characters of ``texts``: ``vocab_size`` tokens (the
    256 bytes, the merges, the special tokens), fewer (logged) if the text holds too few merges."""
    return train_with_stats(texts, vocab_size=vocab_size, max_chars=max_chars, num_threads=num_threads)[0]


def iter_shard_texts(paths: Iterable[Path], column: str = "text") -> Iterator[str]:
    """Non-empty texts of ``column`` from each shard, one row group in memory at a time."""
    for path in paths:
        try:
            with pq.ParquetFile(path) as pf:
                field = pf.schema_arrow.field(column) if column in pf.schema_arrow.names else None
                if field is None or not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
                    raise CorruptShardError(f"{path} has no string column {column!r}: it is not a text shard; "
                                            "delete it and fetch again", path=path)
                for i in range(pf.num_row_groups):
                    for text in pf.read_row_group(i, columns=[column]).column(0).to_pylist():
                        if text:
                            yield text
        except FileNotFoundError as exc:
            raise MissingShardError(f"shard {path} disappeared while reading it: fetch it again",
                                    path=path) from exc
        except (pa.ArrowException, OSError) as exc:
            raise CorruptShardError(f"cannot read shard {path} ({exc}): delete it and fetch again",
                                    path=path) from exc


def train_tokenizer_cli(args: argparse.Namespace, cfg: Config) -> int:
    """Train on the train shards of ``args.data_dir``, save, print one summary line."""
    check_train_args(args.vocab_size, args.max_chars)
    data_dir = Path(args.data_dir) if args.data_dir is not None else cfg.data_dir()
    out = Path(args.out) if args.out is not None else cfg.tokenizer_dir()
    if not data_dir.is_dir():
        raise MissingShardError(f"data folder {data_dir} does not exist: run `nanostream fetch` or "
                                "`nanostream sample` first", path=data_dir)
    cat = pin_catalog(dataset=None, folder=data_dir, config=cfg)  # its record, or the folder as it is
    try:
        train = split_indices(cat, data_dir, "train", None)  # the train files present: never validation
    except (MissingShardError, DatasetError) as exc:
        raise MissingShardError(f"no train files to train on in {data_dir} ({exc}): run `nanostream fetch` or "
                                "`nanostream sample` first", path=data_dir) from exc
    column = cat.text_column
    start = time.perf_counter()
    with closing(iter_shard_texts((data_dir / cat.files[i].path for i in train), column)) as texts:
        tok, used = train_with_stats(texts, vocab_size=args.vocab_size, max_chars=args.max_chars)
    seconds = time.perf_counter() - start
    tok.save(out)
    print(f"trained BPE tokenizer: vocab {tok.vocab_size} on {used:,} chars of {data_dir} "
          f"in {seconds:.1f} s, saved to {out}")
    return 0
