"""ByteTokenizer, BPE encoding (trained by the demo's rustbpe trainer), the saved format and its error cases."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import random
import re
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import tiktoken.load
from demo.tokenizer import train_tokenizer, train_with_stats

from nanostream.errors import ConfigError, TokenizerError
from nanostream.shards import shard_name
from nanostream.text.formats import BOS, CONFIG_NAME, RANKS_NAME, RETRAIN
from nanostream.text.load import load_tokenizer
from nanostream.text.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, _balanced_chunks

from datagen import make_shards

TRICKY = [
    "",
    " ",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "naïve café — Ünïcödé ß ø 你好，世界 こんにちは Привет مرحبا",
    "emoji 😀👍🏽👨‍👩‍👧 flags 🇫🇷 and a lone combining mark e\u0301",
    "tabs\tand\nnewlines\r\n\n  indented   spaces   ",
    "a literal <|bos|> special token in the text <|endoftext|>",
    "digits 1234567890 3.14159 1e-9 0xDEADBEEF",
    "\x00\x01 control chars \x7f",
    "x" * 5000,
]


def shard_texts(paths) -> list[str]:
    return [t for p in paths for t in pq.read_table(p, columns=["text"]).column(0).to_pylist() if t]


def rich_texts(n: int = 400, seed: int = 0) -> list[str]:
    """Pseudo-random 'words' over a mixed alphabet: plenty of pairs for a full vocabulary."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzéüß你好😀"
    out = []
    for _ in range(n):
        words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))) for _ in range(60)]
        out.append(" ".join(words) + f". {rng.randint(0, 10**6)}")
    return out


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    make_shards(folder, 3, row_groups=4, rows=64, words=30)
    return folder


@pytest.fixture(scope="module")
def tok(shard_dir: Path) -> BPETokenizer:
    paths = [shard_dir / shard_name(i) for i in (0, 1)]
    texts = shard_texts(paths) + rich_texts()
    return train_tokenizer(texts, vocab_size=1000)


@pytest.fixture()
def saved(tok: BPETokenizer, tmp_path: Path) -> Path:
    return tok.save(tmp_path / "tok")


def test_byte_tokenizer_round_trip() -> None:
    bt = ByteTokenizer()
    assert isinstance(bt, Tokenizer)
    assert (bt.bos_id, bt.vocab_size) == (256, 257)
    ids = bt.encode_batch(TRICKY)
    for text, doc in zip(TRICKY, ids, strict=True):
        assert all(0 <= i < 256 for i in doc)
        assert bt.decode(doc) == text
        assert bt.decode([bt.bos_id, *doc]) == text  # BOS is dropped
    assert bt.encode_batch(["é"]) == [[0xC3, 0xA9]]


def test_bpe_trains_on_generated_shards(shard_dir: Path) -> None:
    texts = shard_texts(shard_dir / shard_name(i) for i in (0, 1))
    assert len(texts) == 2 * 4 * 64
    tok, used = train_with_stats(texts, vocab_size=512)
    assert used == sum(map(len, texts))
    assert isinstance(tok, Tokenizer)
    assert 300 < tok.vocab_size <= 512  # the tiny generated vocabulary caps the merges
    assert tok.bos_id == tok.vocab_size - 1
    for text in texts[:50]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert len(ids) < len(text.encode()) / 2  # the merges compress the generated text


def test_vocab_size_and_bos(tok: BPETokenizer) -> None:
    assert tok.vocab_size == 1000
    assert tok.bos_id == 999
    assert len(tok.ranks) == 999
    assert tok.decode([tok.bos_id]) == BOS
    assert max(max(tok.encode(t), default=0) for t in rich_texts(50, seed=1)) < tok.bos_id


@pytest.mark.parametrize("text", TRICKY)
def test_bpe_round_trips_arbitrary_text(tok: BPETokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.bos_id not in ids
    assert tok.decode(ids) == text


def test_encode_batch_equals_per_doc_encode(tok: BPETokenizer) -> None:
    docs = TRICKY + rich_texts(200, seed=2)
    threads_before = threading.active_count()
    expected = [tok.encode(d) for d in docs]
    default = tok.num_threads
    try:
        for threads in (1, 2, 4):
            tok.num_threads = threads
            assert tok.encode_batch(docs) == expected
    finally:
        tok.num_threads = default
    assert tok.encode_batch([]) == []
    assert tok.encode_batch(tuple(docs[:1])) == expected[:1]
    assert threading.active_count() == threads_before  # the encoding threads are joined


def test_balanced_chunks_keep_order_and_balance() -> None:
    texts = ["x" * n for n in [500, 1, 1, 1, 1, 1, *range(200)]]
    for n in (2, 3, 8):
        chunks = _balanced_chunks(texts, n)
        assert [t for c in chunks for t in c] == texts
        assert 1 < len(chunks) <= n and all(chunks)
    assert _balanced_chunks(["a"], 4) == [["a"]]
    sizes = [sum(map(len, c)) for c in _balanced_chunks(["y" * 10] * 1024, 4)]
    assert sizes == [2560] * 4


def test_save_load_identical_ids(tok: BPETokenizer, saved: Path) -> None:
    loaded = load_tokenizer(saved, num_threads=2)
    assert isinstance(loaded, BPETokenizer)
    assert (loaded.vocab_size, loaded.bos_id) == (tok.vocab_size, tok.bos_id)
    assert loaded.ranks == tok.ranks
    docs = TRICKY + rich_texts(100, seed=3)
    assert loaded.encode_batch(docs) == tok.encode_batch(docs)
    by_file = load_tokenizer(str(saved / CONFIG_NAME))
    assert by_file.encode_batch(docs) == tok.encode_batch(docs)
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)


def test_saved_files_are_plain_text(tok: BPETokenizer, saved: Path) -> None:
    assert sorted(os.listdir(saved)) == [RANKS_NAME, CONFIG_NAME]
    config = json.loads((saved / CONFIG_NAME).read_text(encoding="utf-8"))
    assert config["format"] == "nanostream-bpe" and config["version"] == 1
    assert config["vocab_size"] == tok.vocab_size == config["num_ranks"] + 1
    assert config["special_tokens"] == {BOS: tok.bos_id}
    raw = (saved / RANKS_NAME).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == config["ranks_sha256"]
    lines = raw.decode("ascii").splitlines()
    assert all(re.fullmatch(r"[A-Za-z0-9+/]+=* \d+", line) for line in lines)
    assert [int(line.split()[1]) for line in lines] == list(range(len(lines)))
    for path in saved.iterdir():
        assert not path.read_bytes().startswith(b"\x80")  # no pickle protocol header
    # tiktoken's own reader understands the ranks file
    assert tiktoken.load.load_tiktoken_bpe(str(saved / RANKS_NAME)) == tok.ranks


def test_tokenizer_pickles_for_worker_processes(tok: BPETokenizer) -> None:
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode_batch(TRICKY) == tok.encode_batch(TRICKY)


def _rewrite_ranks(folder: Path, data: bytes, *, fix_sha: bool) -> None:
    (folder / RANKS_NAME).write_bytes(data)
    if fix_sha:
        config = json.loads((folder / CONFIG_NAME).read_text())
        config["ranks_sha256"] = hashlib.sha256(data).hexdigest()
        (folder / CONFIG_NAME).write_text(json.dumps(config))


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / CONFIG_NAME).read_text())
    config.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def _tamper(folder: Path) -> None:
    data = bytearray((folder / RANKS_NAME).read_bytes())
    data[-3] = ord("1") if data[-3] != ord("1") else ord("2")  # same length, different rank
    (folder / RANKS_NAME).write_bytes(bytes(data))


BREAKAGES = {
    "missing config": lambda d: (d / CONFIG_NAME).unlink(),
    "missing ranks": lambda d: (d / RANKS_NAME).unlink(),
    "truncated ranks": lambda d: _rewrite_ranks(d, (d / RANKS_NAME).read_bytes()[:1000], fix_sha=False),
    "tampered ranks": _tamper,
    "truncated config": lambda d: (d / CONFIG_NAME).write_bytes((d / CONFIG_NAME).read_bytes()[:50]),
    "config not an object": lambda d: (d / CONFIG_NAME).write_text("[1, 2]"),
    "binary config": lambda d: (d / CONFIG_NAME).write_bytes(b"\x80\x04\x95pickle\xff"),
    "future version": lambda d: _edit_config(d, version=99),
    "wrong type": lambda d: _edit_config(d, vocab_size="1000"),
    "ranks outside folder": lambda d: _edit_config(d, ranks_file="../ranks.tiktoken"),
    "bad special id": lambda d: _edit_config(d, special_tokens={BOS: 5}),
    "malformed line, sha fixed": lambda d: _rewrite_ranks(d, b"AAA= 0\nnot base64!! x\n", fix_sha=True),
    "short ranks, sha fixed": lambda d: _rewrite_ranks(
        d, b"".join(base64.b64encode(bytes([i])) + b" %d\n" % i for i in range(200)), fix_sha=True),
    "bad pattern": lambda d: _edit_config(d, pattern="(unclosed"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_files_raise_tokenizer_error(saved: Path, breakage: str) -> None:
    BREAKAGES[breakage](saved)
    with pytest.raises(TokenizerError) as info:
        load_tokenizer(saved)
    message = str(info.value)
    assert str(saved) in message
    assert RETRAIN in message


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=re.escape(str(tmp_path / "nope"))):
        load_tokenizer(tmp_path / "nope")


@pytest.mark.parametrize(("vocab", "chars"), [(257, 100), (0, 100), (2**21, 100), (1000, 0), (1000, -5)])
def test_train_rejects_bad_arguments(vocab: int, chars: int) -> None:
    with pytest.raises(ConfigError):
        train_tokenizer(["some text"], vocab_size=vocab, max_chars=chars)


def test_train_needs_text() -> None:
    with pytest.raises(TokenizerError, match="no text"):
        train_tokenizer(["", ""], vocab_size=300)


def test_max_chars_caps_training_text() -> None:
    texts = rich_texts(50)
    tok, used = train_with_stats(iter(texts), vocab_size=300, max_chars=1234)
    assert used == 1234
    assert tok.vocab_size <= 300
