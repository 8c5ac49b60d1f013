"""TokenDataset: batch contract, packing on real shards, striding over ranks/workers, resume, errors."""

from __future__ import annotations

import gc
import io
import itertools
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from nanostream import ByteTokenizer, Ranks, ReadAhead, TokenDataset
from nanostream.errors import ConfigError, CorruptShardError, LoaderError, NanostreamError, TokenizerError
from nanostream.loader import feed
from nanostream.loader.dataset import fix_rows_per_row_group
from nanostream.loader.docrefs import unpack
from nanostream.loader.encode import FLAT_TASK_PIECES, encoding
from nanostream.text.tokenizer import BPETokenizer

from datagen import doc_id, doc_text, make_shards

BOS = ByteTokenizer.bos_id
PIN_WARNING = "ignore:'pin_memory' argument is set as true but no accelerator:UserWarning"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    make_shards(folder, 4, row_groups=8, rows=12)  # 3 train shards x 8 row groups x 12 docs, shard 3 = val
    return folder


def make(data: Path, rows_per_row_group: int | None = None, **kw) -> TokenDataset:
    args = {"batch_size": 4, "seq_len": 96, "data": data, "ranks": Ranks(0, 1), "buffer_docs": 16}
    args.update(kw)
    ds = TokenDataset(kw.pop("split", "train"), ByteTokenizer(), **{k: v for k, v in args.items() if k != "split"})
    return ds if rows_per_row_group is None else fix_rows_per_row_group(ds, rows_per_row_group)


def rows_of(x: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    full = torch.cat([x, y[:, -1:]], dim=1)
    return [full[i].tolist() for i in range(full.shape[0])]


def segments(batches) -> list[str]:
    """Every document (or cropped document head) placed in the batches, decoded."""
    out = []
    for x, y in batches:
        for row in rows_of(x, y):
            assert row[0] == BOS
            cur: list[int] = []
            for t in [*row[1:], BOS]:
                if t == BOS:
                    out.append(bytes(cur).decode("utf-8", errors="replace"))
                    cur = []
                else:
                    cur.append(t)
    return out


def ids_of(segs: list[str]) -> list[tuple[int, int, int]]:
    ids = []
    for s in segs:
        try:
            ids.append(doc_id(s))
        except ValueError:  # a crop shorter than its id
            pass
    return ids


def assert_same_batches(got, want) -> None:
    """Every (inputs, targets) pair equal, and as many of them."""
    assert len(got) == len(want)
    for (x, y), (ex, ey) in zip(got, want, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def run_ahead(it, timeout: float = 5) -> None:
    """Let the iterator's producer threads run ahead: batches assembled and row groups tokenized
    ahead of the last batch returned (or the data finished)."""
    pipe = it
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pipe._thread.is_alive() and len(pipe._out._items) < pipe._out._size:
        time.sleep(0.01)


def our_threads() -> list[str]:
    """Threads started by nanostream (tokenizer, encoder, stream loop/reader) still running."""
    return [t.name for t in threading.enumerate() if t.name.startswith("nanostream")]


def test_batch_contract(data: Path) -> None:
    ds = make(data, epochs=1)
    batches = list(ds)
    assert len(batches) > 5
    for x, y in batches:
        assert x.shape == y.shape == (4, 96)
        assert x.dtype == y.dtype == torch.int64
        assert x.is_contiguous() and y.is_contiguous()
        assert (x[:, 0] == BOS).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
    for seg in segments(batches):  # every piece is a whole document or the head of one
        s, g, r = doc_id(seg) if seg.startswith("doc:") and seg.count(" ") else (None, None, None)
        if s is not None:
            assert doc_text(s, g, r).startswith(seg)
    st = ds.stats()
    assert st["batches"] == len(batches)
    assert 0 < st["crop_fraction"] < 1
    assert st["tokens_out"] == len(batches) * 4 * 97


def test_equal_batches_on_every_rank(data: Path) -> None:
    """Finite epochs: every rank yields exactly len(ds) batches, known before it starts; documents
    are used at most once, except those the buffer took from the next epoch's order at the end."""
    counts, seen = set(), []
    docs_in = used = left = 0
    for r in range(4):  # 8 row groups a shard: 6 per rank and epoch
        ds = make(data, ranks=Ranks(r, 4), epochs=1)
        n = len(ds)
        assert n == ds.epoch_batches(0) == 6 * ds.rows_per_row_group() // 4
        assert len(make(data, ranks=Ranks(r, 4), epochs=2, rows_per_row_group=5)) == 2 * (6 * 5 // 4)
        batches = list(ds)
        counts.add((n, len(batches)))
        segs = segments(batches)
        ids = ids_of(segs)
        assert all(g % 4 == r for _, g, _ in ids)
        assert len(ids) - len(set(ids)) <= 16 + 12  # buffer_docs + one row group read past the epoch
        seen += set(ids)
        st = ds.stats()
        docs_in, used, left = docs_in + st["docs_in"], used + st["docs_used"], left + st["buffered_docs"]
        assert st["docs_used"] == len(segs)
    assert len(counts) == 1 and len({n for pair in counts for n in pair}) == 1
    assert len(seen) == len(set(seen)) > 0.7 * 3 * 8 * 12
    assert used + left == docs_in


def test_a_rank_without_data_fails(data: Path) -> None:
    with pytest.raises(ConfigError, match="reads no row group"):
        len(make(data, ranks=Ranks(0, 32), epochs=1))  # 24 row groups for 32 ranks
    with pytest.raises(ConfigError, match="no batch"):
        len(make(data, batch_size=100, ranks=Ranks(0, 4), epochs=1))  # 6 * 11 rows


@pytest.mark.filterwarnings(PIN_WARNING)
def test_workers_and_ranks_disjoint(data: Path) -> None:
    """2 ranks x 2 workers through DataLoader: the same batches as the 4 folded strides in-process,
    and len(loader) batches in all on every rank."""
    all_ids: list[tuple[int, int, int]] = []
    for rank in range(2):
        ds = make(data, ranks=Ranks(rank, 2), epochs=1)
        loader = DataLoader(ds, batch_size=None, num_workers=2, pin_memory=True)
        got = [(x.clone(), y.clone()) for x, y in loader]
        assert len(got) == len(loader) == len(ds) == make(data, ranks=Ranks(1 - rank, 2), epochs=1).__len__()
        expect = [list(itertools.islice(make(data, ranks=Ranks(rank * 2 + w, 4)), 10)) for w in range(2)]
        # DataLoader takes batches from its workers in turn (up to the ends of their data, the same)
        merged = [b for pair in zip(*expect, strict=True) for b in pair]
        assert_same_batches(got[:20], merged)
        ids = ids_of(segments(got))
        assert all(g % 4 in (2 * rank, 2 * rank + 1) for _, g, _ in ids)  # folded stride r*k+w of W*k
        all_ids += set(ids)
    assert len(all_ids) == len(set(all_ids)) > 0.7 * 3 * 8 * 12


@pytest.mark.parametrize(("k", "epochs"), [(0, 1), (1, 1), (5, 1), (13, 2), (29, 2), (62, 1), (127, 2)])
def test_resume_exact(data: Path, k: int, epochs: int) -> None:
    full = list(make(data, epochs=epochs))
    assert len(full) > k
    ds = make(data, epochs=epochs)
    it = iter(ds)
    head = [next(it) for _ in range(k)]
    run_ahead(it)
    state = ds.state_dict()
    it.close()
    if k:  # documents of partly used row groups are carried in the state, by reference
        assert sum(len(r) for r in unpack(state["docs"])) > 0
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert json.loads(json.dumps(state)) == state  # plain values: json writes it as it is
    fresh = make(data, epochs=epochs)
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert_same_batches(head + rest, full)
    assert fresh.stats()["tokens_cropped"] == make_stats(data, epochs)["tokens_cropped"]


def test_resume_exact_inside_a_row_group(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The buffer refills in pieces (here 5 documents of a 12-document row group): a state taken
    with part of a row group buffered says so (``skip``), and the resumed run reads that row group
    without those documents -- the same batches as a run never stopped."""
    monkeypatch.setattr(feed, "PIECE_DOCS", 5)
    full = list(make(data, epochs=2))
    skips = set()
    for k in (1, 2, 3, 5, 8, 13, 21):
        ds = make(data, epochs=2)
        it = iter(ds)
        head = [next(it) for _ in range(k)]
        run_ahead(it)
        state = torch_roundtrip(ds.state_dict())
        it.close()
        skips.add(state["skip"])
        assert (state["skip"] > 0) == (state["partial"] is not None)
        fresh = make(data, epochs=2)
        fresh.load_state_dict(state)
        assert_same_batches(head + list(fresh), full)
    assert skips - {0} and skips <= {0, 5, 10}


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("short")
    make_shards(folder, 4, row_groups=4, rows=12)
    return folder


def test_resume_exact_at_every_batch_across_the_seam(short: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A count set above what the data packs (``rows_per_row_group=14``) makes the run read on past
    its epoch (``feed.SEAM``); with pieces of 5 some states are taken inside the first row group
    past it while their position is still before it. A resume at every batch is exact."""
    monkeypatch.setattr(feed, "PIECE_DOCS", 5)

    def mk() -> TokenDataset:
        return make(short, batch_size=2, seq_len=64, buffer_docs=8, epochs=1, rows_per_row_group=14)

    full = list(mk())
    ds = mk()
    it = iter(ds)
    states = []
    for _ in range(len(full) - 1):
        next(it)
        states.append(torch_roundtrip(ds.state_dict()))
    it.close()
    straddle = [k for k, st in enumerate(states, 1) if st["partial"] is not None and st["partial"][0] >= 1
                and st["position"][0] < 1]
    assert straddle  # the case this test is for
    for k, st in enumerate(states, 1):
        fresh = mk()
        fresh.load_state_dict(st)
        assert_same_batches(full[:k] + list(fresh), full)


def make_stats(data: Path, epochs: int) -> dict:
    ds = make(data, epochs=epochs)
    for _ in ds:
        pass
    return ds.stats()


def test_snapshot_and_hold_for_read_ahead_consumers(data: Path) -> None:
    """A consumer that reads one batch ahead (CudaPrefetcher) holds the state of what it handed out."""
    full = list(make(data, epochs=1))
    ds = make(data, epochs=1)
    it = iter(ds)
    head = [next(it) for _ in range(4)]
    snap = it.snapshot()
    head.append(next(it))  # read ahead: the training loop has only seen 4 batches
    it.hold(snap)
    state = ds.state_dict()
    assert state["batches"] == 4
    it.close()
    assert ds.state_dict()["batches"] == 4  # also the final state kept after close
    fresh = make(data, epochs=1)
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert len(rest) == len(full) - 4
    assert_same_batches(head[:4] + rest, full)


def test_resume_with_other_config_or_stride_fails(data: Path) -> None:
    ds = make(data, epochs=1)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    it.close()
    with pytest.raises(LoaderError, match="seq_len"):
        make(data, seq_len=128, epochs=1).load_state_dict(state)
    with pytest.raises(LoaderError, match="shuffle"):
        make(data, shuffle=True, epochs=1).load_state_dict(state)
    longer = make(data, epochs=3)  # more epochs is fine: training goes on past the old end
    longer.load_state_dict(state)
    assert len(list(longer)) > len(list(make(data, epochs=1)))
    with pytest.raises(LoaderError, match="not a TokenDataset state"):
        make(data, epochs=1).load_state_dict({"foo": 1})
    other = make(data, ranks=Ranks(1, 2), epochs=1)  # another layout: resumes from the global cursor
    other.load_state_dict(state)
    assert ids_of(segments(other)) and other.stats()["batches"] == len(other)


@pytest.mark.parametrize(("kw", "error"), [({"batch_size": 0}, LoaderError), ({"seq_len": 0}, LoaderError),
                                           ({"split": "test"}, ConfigError), ({"buffer_docs": 0}, LoaderError),
                                           ({"rows_per_row_group": 0}, LoaderError)])
def test_bad_arguments(data: Path, kw: dict, error: type) -> None:
    with pytest.raises(error):
        make(data, **kw)
    with pytest.raises(ConfigError, match="ReadAhead"):
        make(data, read_ahead=ReadAhead(batches=0))


def test_val_split_and_missing_folder(data: Path, tmp_path: Path) -> None:
    ids = ids_of(segments(make(data, split="val", epochs=1)))
    assert ids and {s for s, _, _ in ids} == {3}
    with pytest.raises(NanostreamError):
        make(tmp_path / "nope")


def test_early_break_leaves_no_thread(data: Path) -> None:
    ds = make(data)  # epochs=None: endless
    for i, _ in enumerate(ds):
        if i == 3:
            assert our_threads()
            break
    gc.collect()
    assert not our_threads()
    it = iter(ds)
    next(it)
    it.close()
    assert not our_threads()
    with pytest.raises(StopIteration):
        next(it)


@pytest.fixture
def corrupt(tmp_path: Path) -> Path:
    make_shards(tmp_path, 4, row_groups=4, rows=12)
    path = tmp_path / "shard_00001.parquet"  # its data zeroed, its footer kept (read before the epoch)
    raw = path.read_bytes()
    footer = int.from_bytes(raw[-8:-4], "little") + 8
    path.write_bytes(raw[:4] + bytes(len(raw) - footer - 4) + raw[-footer:])
    return tmp_path


def test_stream_error_propagates_and_state_stays_exact(corrupt: Path) -> None:
    ds = make(corrupt, epochs=1)
    got = []
    with pytest.raises(CorruptShardError):
        for b in ds:
            got.append(b)
            state = ds.state_dict()
    assert got
    assert not our_threads()
    after = ds.state_dict()  # the failed batch left no trace
    assert after == state


@pytest.mark.filterwarnings(PIN_WARNING)
def test_stream_error_through_workers(corrupt: Path) -> None:
    loader = DataLoader(make(corrupt, epochs=1), batch_size=None, num_workers=2, pin_memory=True)
    with pytest.raises(CorruptShardError):
        for _ in loader:
            pass


class _FailingTokenizer(ByteTokenizer):
    def __init__(self, after: int) -> None:
        self.calls, self.after = 0, after

    def encode_batch(self, texts):
        self.calls += 1
        if self.calls > self.after:
            raise TokenizerError("boom: tokenizer failed on purpose")
        return super().encode_batch(texts)


def test_tokenizer_error_propagates_and_threads_stop(data: Path) -> None:
    ds = TokenDataset("train", _FailingTokenizer(after=3), 4, 96, data=data, ranks=Ranks(0, 1),
                      buffer_docs=16)
    n = 0
    with pytest.raises(TokenizerError, match="on purpose"):
        for _ in ds:
            n += 1
    assert n > 0
    assert not our_threads()


def test_pickles_without_live_iterator(data: Path) -> None:
    ds = make(data, epochs=1)
    it = iter(ds)
    next(it)
    clone = pickle.loads(pickle.dumps(ds))
    it.close()
    assert next(iter(clone))[0].shape == (4, 96)


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on new torch
def test_stateful_dataloader_resume(data: Path) -> None:
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    for workers in (0, 2):
        full = [(x.clone(), y.clone()) for x, y in
                sdl.StatefulDataLoader(make(data, epochs=1), batch_size=None, num_workers=workers)]
        loader = sdl.StatefulDataLoader(make(data, epochs=1), batch_size=None, num_workers=workers)
        it = iter(loader)
        head = [next(it) for _ in range(7)]
        state = loader.state_dict()
        del it
        again = sdl.StatefulDataLoader(make(data, epochs=1), batch_size=None, num_workers=workers)
        again.load_state_dict(state)
        rest = list(again)
        assert_same_batches(head + rest, full)


@pytest.mark.slow
def test_torchrun_two_ranks_gloo(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(Path(__file__).with_name("ddp_worker.py")),
           str(data), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    ids = [tuple(i) for r in result["ranks"] for i in r["ids"]]
    assert len(set(ids)) > 0.7 * 3 * 8 * 12
    assert len({(r["batches"], r["len"]) for r in result["ranks"]}) == 1  # equal, and as len(loader) said
    assert result["ranks"][0]["batches"] == result["ranks"][0]["len"]
    for r in result["ranks"]:
        rank = r["rank"]
        assert r["world_size"] == 2 and all(g % 4 in (2 * rank, 2 * rank + 1) for _, g, _ in r["ids"])
        assert r["states_distinct"]
    elastic = result["elastic"]  # the two ranks' states resumed by one: the rest of the epoch
    assert elastic["batches"] == elastic["len"] > 0
    assert {g % 2 for _, g, _ in elastic["ids"]} == {0, 1}


# -- BPETokenizer: the loader drives its threads text by text ----------------------------------

MERGES = [b"th", b"he", b"the", b" t", b" the", b"in", b"er", b"an", b"on", b"re", b" a", b"or", b"es"]


def small_bpe(num_threads: int = 2, encoder: str = "auto") -> BPETokenizer:
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({m: 256 + i for i, m in enumerate(MERGES)})
    return BPETokenizer(ranks, num_threads=num_threads, encoder=encoder)


class _BatchOnlyBPE(BPETokenizer):
    """Overrides encode_batch, so the loader must call it per row group (the generic path)."""

    def encode_batch(self, texts):
        return super().encode_batch(texts)


@pytest.fixture(scope="module")
def big_groups(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("big_groups")
    make_shards(folder, 3, row_groups=3, rows=80)  # 80 docs per row group: one piece, or 4 with pieces of 20
    return folder


def make_bpe(data: Path, tok, **kw) -> TokenDataset:
    args = {"data": data, "ranks": Ranks(0, 1), "buffer_docs": 40, "epochs": 2}
    args.update(kw)
    return TokenDataset("train", tok, 4, 64, **args)


def test_bpe_flat_and_text_by_text_give_the_same_batches(big_groups: Path) -> None:
    """gigatoken's flat arrays, tiktoken driven text by text, and one encode_batch per task: same batches."""
    fast, by_text = small_bpe(), small_bpe(encoder="tiktoken")
    plain = _BatchOnlyBPE(small_bpe().ranks, num_threads=2, encoder="tiktoken")
    assert fast.encoder_name == "gigatoken" and by_text.encoder_name == "tiktoken"
    dt = np.dtype(np.uint16)
    assert encoding(fast, dt, 128)[1:] == (128 * FLAT_TASK_PIECES, 2)
    assert encoding(by_text, dt, 128)[1:] == (128, 2) and encoding(plain, dt, 128)[1:] == (128, 1)
    assert encoding(small_bpe(num_threads=1, encoder="tiktoken"), dt, 128)[2] == 1
    got, want = list(make_bpe(big_groups, fast)), list(make_bpe(big_groups, plain))
    assert len(got) == len(want) > 10
    assert_same_batches(got, want)
    assert_same_batches(list(make_bpe(big_groups, by_text)), want)
    texts = [fast.decode(row[1:]) for x, y in got for row in rows_of(x, y)]
    assert all(t.startswith("doc:") for t in texts)  # rows start at a document, BOS first
    assert (torch.stack([x[:, 0] for x, _ in got]) == fast.bos_id).all()


@pytest.mark.parametrize(("k", "pieces"), [(1, 128), (7, 128), (40, 128), (3, 20), (7, 20)])
def test_bpe_resume_exact(big_groups: Path, k: int, pieces: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "PIECE_DOCS", pieces)
    tok = small_bpe()
    full = list(make_bpe(big_groups, tok))
    ds = make_bpe(big_groups, tok)
    it = iter(ds)
    head = [next(it) for _ in range(k)]
    run_ahead(it)  # batches assembled ahead, row groups queued and in encoding
    state = ds.state_dict()
    it.close()
    assert not our_threads()
    fresh = make_bpe(big_groups, tok)
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert_same_batches(head + rest, full)


def test_bpe_early_break_joins_encoding_threads(big_groups: Path) -> None:
    ds = make_bpe(big_groups, small_bpe(), epochs=None)
    for i, _ in enumerate(ds):
        if i == 2:
            assert any(n.startswith("nanostream-encode") for n in our_threads())
            break
    gc.collect()
    assert not our_threads()


class _WideIdTokenizer(ByteTokenizer):
    def encode_batch(self, texts):
        return [[70_000] for _ in texts]  # does not fit the uint16 tokens of a 257-id vocabulary


class _DroppingTokenizer(ByteTokenizer):
    def encode_batch(self, texts):
        return super().encode_batch(texts)[1:]


@pytest.mark.parametrize(("tok", "match"), [(_WideIdTokenizer(), "outside the token dtype"),
                                            (_DroppingTokenizer(), "11 id lists for 12 texts")])
def test_bad_tokenizer_output_raises_loader_error(data: Path, tok, match: str) -> None:
    ds = TokenDataset("train", tok, 4, 96, data=data, ranks=Ranks(0, 1), buffer_docs=16)
    with pytest.raises(LoaderError, match=match):
        next(iter(ds))
    gc.collect()
    assert not our_threads()


# -- elastic resume: another world size, nodes or worker count ---------------------------------

def torch_roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def buffered_ids(state: dict) -> set[tuple[int, int, int]]:
    """The documents a state's buffer names (datagen's ids are ``(shard, row group, number)`` too)."""
    return {(r.tag[1], r.tag[2], int(i)) for r in unpack(state["docs"]) for i in r.ids}


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wide")
    make_shards(folder, 5, row_groups=16, rows=12)  # 4 train shards x 16 row groups
    return folder


@pytest.mark.parametrize(("before", "after", "pieces"), [((4, 2), (2, 1), 128), ((2, 1), (4, 2), 128),
                                                       ((4, 2), (2, 1), 5)])
def test_elastic_resume_loses_nothing(wide: Path, before: tuple[int, int], after: tuple[int, int], pieces: int,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """4 ranks on 2 nodes -> 2 ranks on 2 nodes, and back: the old readers' states (a list) give every
    new rank the smallest global cursor; the old buffers are carried over, nothing is lost, and only
    the row groups some old readers took beyond that cursor are read twice (with pieces of 5, also
    the row groups a reader was in the middle of, whose buffered documents are not carried)."""
    from nanostream import Ranks, stream
    from nanostream.streaming.order import Cursor

    monkeypatch.setattr(feed, "PIECE_DOCS", pieces)

    kw = {"shuffle": True, "seed": 3, "epochs": 1}
    (w0, l0), (w1, l1) = before, after
    states, taken_groups = [], set()
    for r in range(w0):
        ds = make(wide, ranks=Ranks(r, w0, l0), **kw)
        it = iter(ds)
        for _ in range(1 + 2 * r):  # the ranks are not level: each has taken another number of row groups
            next(it)
        states.append(ds.state_dict())
        it.close()
        pos = states[-1]["position"]
        assert pos[0] == 0
        seq = stream("train", data=wide, ranks=Ranks(r, w0, l0), **kw).settled_deal(0).sequence(r)
        taken_groups |= set(seq[:pos[3]])
    cursors = [tuple(map(str, st["cursor"])) for st in states]
    cursor = Cursor.from_list(min((st["cursor"] for st in states), key=lambda c: c[2]))
    plan = stream("train", data=wide, ranks=Ranks(0, 1), **kw).settled_deal(0)
    deal = plan.deal
    consumed = {(s, deal.row_group(p, g, plan.counts[s])) for p, s in enumerate(deal.order)
                for g in range(plan.counts[s]) if cursor.covers(p, g)}
    assert len(consumed) == cursor.consumed
    assert len(set(cursors)) > 1 and consumed <= taken_groups  # nothing skipped ...
    twice = taken_groups - consumed  # ... and what is read again: the spread between the old readers
    assert 0 < len(twice) <= sum(st["position"][3] for st in states) - w0 * min(st["position"][3] for st in states)
    partial = {tuple(st["partial"][1:3]) for st in states if st["partial"] is not None}
    assert bool(partial) == (pieces < 12)
    assert not partial & {tuple(item) for item in consumed}  # a row group left in the middle is read again whole
    old_buffers = set().union(*(buffered_ids(st) for st in states))
    new_ids, counts = [], set()
    for r in range(w1):
        ds = make(wide, ranks=Ranks(r, w1, l1), **kw)
        ds.load_state_dict(states)
        if r == 0:  # saved again before the first batch, the loaded states are kept
            saved = torch_roundtrip(ds.state_dict())
            ds = make(wide, ranks=Ranks(r, w1, l1), **kw)
            ds.load_state_dict(saved)
        n = len(ds)
        got = list(ds)
        counts.add((n, len(got)))
        new_ids += ids_of(segments(got))
        if r == w1 - 1:  # a run that started from a cursor resumes exactly at its own layout
            again = make(wide, ranks=Ranks(r, w1, l1), **kw)
            again.load_state_dict(states)
            it = iter(again)
            head = [next(it) for _ in range(3)]
            state = again.state_dict()
            it.close()
            rest = make(wide, ranks=Ranks(r, w1, l1), **kw)
            rest.load_state_dict(state)
            assert len(rest) == n
            assert_same_batches(head + list(rest), got)
    assert len({n for pair in counts for n in pair}) == 1  # every new rank: len(ds) batches
    assert len(old_buffers & set(new_ids)) > 0.5 * len(old_buffers)  # the carried documents are used


EARLY_EXIT = r"""
import sys

from nanostream import ByteTokenizer, TokenDataset, iter_batches
ds = TokenDataset("train", ByteTokenizer(), 2, 64, data=sys.argv[1], epochs=2)
it = iter(ds)
for _ in range(int(sys.argv[2])):
    next(it)
blocking = iter_batches("train", data=sys.argv[1], epochs=None)
next(blocking)
print("done")  # and exit with both iterators still open: no close(), no del
"""


@pytest.mark.parametrize("batches", [1, 60])
def test_a_script_that_stops_early_exits_cleanly(data: Path, batches: int) -> None:
    """Interpreter exit with a TokenDataset iterator (and a blocking stream) left open: nothing on stderr
    (closing at exit computes no state and reads no footer; it only stops threads)."""
    proc = subprocess.run([sys.executable, "-W", "error", "-c", EARLY_EXIT, str(data), str(batches)],
                          capture_output=True, text=True, timeout=100)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "done\n", "")
