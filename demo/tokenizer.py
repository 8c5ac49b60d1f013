"""The demo's BPE trainer, built the way nanochat builds its tokenizer: rustbpe learns the merges on text,
nanostream's ``BPETokenizer`` (tiktoken, or gigatoken where exact) encodes with them. Tests and benches that
need a trained tokenizer use ``train_tokenizer``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import rustbpe

from nanostream.errors import ConfigError, NanostreamError, TokenizerError
from nanostream.text.formats import SPECIAL_TOKENS
from nanostream.text.tokenizer import SPLIT_PATTERN, BPETokenizer

log = logging.getLogger(__name__)

MIN_VOCAB_SIZE = 256 + 1 + len(SPECIAL_TOKENS)  # the bytes, at least one merge, the specials
MAX_VOCAB_SIZE = 1 << 20


def _compact(pairs: Iterable[tuple[bytes, int]]) -> dict[bytes, int]:
    """Ranks renumbered 0..n-1 in merge order, keeping the first of any duplicate token."""
    ranks: dict[bytes, int] = {}
    for token, _ in sorted(pairs, key=lambda p: p[1]):
        ranks.setdefault(bytes(token), len(ranks))
    return ranks


def train_with_stats(texts: Iterable[str], *, vocab_size: int = 8192, max_chars: int = 20_000_000,
                     num_threads: int | None = None) -> tuple[BPETokenizer, int]:
    """``train_tokenizer`` that also returns how many characters it trained on."""
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ConfigError(f"vocab size {vocab_size} is out of range: use {MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE} "
                          f"(256 bytes + merges + {len(SPECIAL_TOKENS)} special token)")
    if max_chars <= 0:
        raise ConfigError(f"max chars must be > 0, got {max_chars}")
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
