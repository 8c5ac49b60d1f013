"""Weighted mixes of sources: token-exact shares, the same on every rank and in every process, each
source's own order and epochs, exact and elastic resume, and every error naming the source."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanostream import ByteTokenizer, Ranks, Source, TokenDataset, iter_batches, stream
from nanostream.errors import ConfigError, DatasetError
from nanostream.shards import shard_name
from nanostream.sources.catalog import numbered_catalog, write_catalog
from nanostream.streaming.streams import Schedule

WORDS = "the of and data model train token shard stream mix code web text page loop".split()


def write_source(folder: Path, tag: str, shards: int, *, row_groups: int = 4, rows: int = 16,
                 words: int = 20) -> Path:
    """``shards`` files (the last one validation) of documents ``tag:shard:rg:row ...`` of about
    ``words`` words each (documents of a source differ in length by up to 50%)."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        texts = []
        for g in range(row_groups):
            for r in range(rows):
                h = int(hashlib.blake2b(f"{tag}{s}{g}{r}".encode(), digest_size=4).hexdigest(), 16)
                n = words // 2 + h % (words + 1)
                texts.append(f"{tag}:{s}:{g}:{r} " + " ".join(WORDS[(h >> (i % 24)) % len(WORDS)] for i in range(n)))
        pq.write_table(pa.table({"text": texts}), folder / shard_name(s), row_group_size=rows)
    write_catalog(folder, numbered_catalog(str(folder), "", shards))
    return folder


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Web-like documents and code-like ones three times as long."""
    root = tmp_path_factory.mktemp("mix")
    return write_source(root / "web", "web", 5, words=20), write_source(root / "code", "code", 4, words=60)


def mix_of(two: tuple[Path, Path], w: tuple[float, float] = (0.7, 0.3)) -> list[Source]:
    return [Source(two[0], weight=w[0]), Source(two[1], weight=w[1])]


def make(two, **kw) -> TokenDataset:
    args = {"ranks": Ranks(0, 1), "buffer_docs": 16, "data": mix_of(two)}
    args.update(kw)
    return TokenDataset("train", ByteTokenizer(), args.pop("batch_size", 8), args.pop("seq_len", 256), **args)


def source_of(x: torch.Tensor) -> list[str]:
    """Which source each row came from (every row is packed from one source; its first document's tag)."""
    out = []
    for row in x.tolist():
        text = bytes(t for t in row[1:] if t < 256).decode("utf-8", "replace")
        out.append(text.split(":", 1)[0])
    return out


# -- shares ------------------------------------------------------------------------------------------
def test_token_shares_hold_over_the_run_and_in_every_window(two) -> None:
    """0.7/0.3 of sources whose documents differ 3x in length: within 2 points over 600k tokens and within
    5 points in every window of 50 batches of (8, 256); a row is one source's, so shares are in rows of
    tokens, exact to within one row."""
    ds = make(two, epochs=None)
    rows: list[str] = []
    for n, (x, _) in enumerate(ds):
        rows += source_of(x)
        if (n + 1) * 8 * 256 >= 600_000:
            break
    total = Counter(rows)
    assert abs(total["web"] / len(rows) - 0.7) <= 0.02
    for a in range(0, len(rows) - 400 + 1, 8):  # every window of 50 batches
        window = Counter(rows[a:a + 400])
        assert abs(window["web"] / 400 - 0.7) <= 0.05
    st = ds.stats()  # tokens per source, as the dataset counts them
    assert [s["source"] for s in st["sources"]] == [str(two[0]), str(two[1])]
    assert abs(st["sources"][0]["share"] - 0.7) <= 0.01


async def test_stream_shares_are_in_text_bytes(two) -> None:
    got: Counter[int] = Counter()
    async with stream("train", data=mix_of(two), epochs=None) as s:
        async for b in s:
            got[b.source] += sum(len(t.encode()) for t in b.texts)
            if sum(got.values()) > 400_000:
                break
    assert abs(got[0] / sum(got.values()) - 0.7) <= 0.02


def test_schedule_takes_the_source_furthest_below_its_share() -> None:
    s = Schedule((0.5, 0.25, 0.25))
    picks = []
    for _ in range(8):
        k = s.next()
        picks.append(k)
        s.add(k, 1)
    assert picks == [0, 1, 2, 0, 0, 1, 2, 0]


# -- the same everywhere -----------------------------------------------------------------------------
DIGEST = r"""
import hashlib, sys
from nanostream import ByteTokenizer, Ranks, Source, TokenDataset
a, b, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
ds = TokenDataset("train", ByteTokenizer(), 4, 128, data=[Source(a, weight=2), Source(b)],
                  ranks=Ranks(rank, 2), buffer_docs=16, shuffle=True, seed=4, epochs=1)
h = hashlib.sha256()
for x, y in ds:
    h.update(x.numpy().tobytes())
print(len(ds), h.hexdigest())
"""


def test_the_same_batches_in_every_process_and_equal_counts_on_every_rank(two) -> None:
    runs = [subprocess.run([sys.executable, "-c", DIGEST, str(two[0]), str(two[1]), str(r)], capture_output=True,
                           text=True, timeout=100, check=True).stdout.split() for r in (0, 0, 1)]
    assert runs[0] == runs[1]  # two processes, one rank: identical batches
    assert runs[0][0] == runs[2][0] and runs[0][1] != runs[2][1]  # both ranks len(ds) batches, their own data
    for r in (0, 1):  # and as many as len(ds) says, in this process too
        ds = make(two, ranks=Ranks(r, 2), shuffle=True, seed=4, epochs=1)
        assert sum(1 for _ in ds) == len(ds) > 0


def test_each_source_keeps_its_own_deal_on_every_node(two) -> None:
    """2 nodes x 1 rank: each node reads its own piece of each source's epoch (disjoint, and together all of it)."""
    seen = [set(), set()]
    for r in (0, 1):
        with iter_batches("train", data=mix_of(two), ranks=Ranks(r, 2, 1), epochs=1) as it:
            for b in it:
                if b.epoch == 0:
                    seen[r].add((b.source, b.shard, b.row_group))
    assert not seen[0] & seen[1]
    for k, shards in ((0, 4), (1, 3)):
        assert {(s, g) for src, s, g in seen[0] | seen[1] if src == k} == {(s, g) for s in range(shards)
                                                                           for g in range(4)}


# -- epochs ------------------------------------------------------------------------------------------
def test_a_small_source_is_upsampled_and_len_is_known_before(two) -> None:
    """The code source has fewer documents than its share needs: it starts its next epoch (its own next
    order) while the web source finishes its one; the run is len(ds) batches."""
    ds = make(two, epochs=1, data=mix_of(two, (0.3, 0.7)))
    n = len(ds)
    rows = [src for x, _ in ds for src in source_of(x)]
    assert len(rows) == n * 8
    ids = Counter()
    for x, _ in make(two, epochs=1, data=mix_of(two, (0.3, 0.7)), batch_size=8):
        for row in x.tolist():
            text = bytes(t for t in row if t < 256).decode("utf-8", "replace")
            ids.update(w for w in text.split() if w.startswith("code:"))
    assert max(ids.values()) > 1  # code documents read twice: upsampled


async def test_stream_mix_ends_once_every_source_completed_its_epochs(two) -> None:
    epochs: dict[int, set[int]] = {0: set(), 1: set()}
    async with stream("train", data=mix_of(two), epochs=2) as s:
        async for b in s:
            epochs[b.source].add(b.epoch)
    assert min(epochs[0]) == 0 and max(epochs[0]) >= 1 and max(epochs[1]) >= 1


# -- resume ------------------------------------------------------------------------------------------
def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("k", [1, 7])
def test_exact_resume_mid_run(two, k: int) -> None:
    full = [x for x, _ in make(two, epochs=1, shuffle=True, seed=2)]
    ds = make(two, epochs=1, shuffle=True, seed=2)
    it = iter(ds)
    head = [next(it)[0] for _ in range(k)]
    state = roundtrip(ds.state_dict())
    it.close()
    again = make(two, epochs=1, shuffle=True, seed=2)
    again.load_state_dict(state)
    rest = [x for x, _ in again]
    assert len(head) + len(rest) == len(full)
    assert all(torch.equal(a, b) for a, b in zip(head + rest, full, strict=True))


def test_elastic_resume_from_two_ranks_to_one_skips_nothing(two) -> None:
    states = []
    for r in (0, 1):
        ds = make(two, ranks=Ranks(r, 2), epochs=1)
        it = iter(ds)
        for _ in range(2 + 3 * r):  # not level
            next(it)
        states.append(roundtrip(ds.state_dict()))
        it.close()
    one = make(two, epochs=1)
    one.load_state_dict(states)
    n = len(one)
    got = [x for x, _ in one]
    assert len(got) == n > 0
    for k in (0, 1):  # each source restarts at the smallest of its own cursors
        cursors = [st["sources"][k]["cursor"] for st in states]
        smallest = min(cursors, key=lambda c: c[2])  # [epoch, spans, consumed, shards]
        assert one._origins[k].to_list() == smallest


def test_changed_weights_at_resume_go_on_from_every_cursor(two, caplog: pytest.LogCaptureFixture) -> None:
    ds = make(two, epochs=None)
    it = iter(ds)
    for _ in range(5):
        next(it)
    state = ds.state_dict()
    it.close()
    again = make(two, epochs=None, data=mix_of(two, (0.2, 0.8)))
    again.load_state_dict(state)
    rows = []
    with caplog.at_level("INFO", logger="nanostream.loader.pipeline"):
        for n, (x, _) in enumerate(again):
            rows += source_of(x)
            if n == 49:
                break
    assert "weights changed" in caplog.text
    assert abs(Counter(rows)["web"] / len(rows) - 0.2) <= 0.02  # the new shares, from the resume on


async def test_stream_mix_resumes_exactly_from_its_state(two) -> None:
    async with stream("train", data=mix_of(two), epochs=1) as s:
        full = [(b.source, b.shard, b.row_group, b.epoch) async for b in s]
    async with stream("train", data=mix_of(two), epochs=1) as s:
        head = []
        async for b in s:
            head.append((b.source, b.shard, b.row_group, b.epoch))
            if len(head) == 6:
                state = json.loads(json.dumps(s.state_dict()))
                break
    async with stream("train", data=mix_of(two), epochs=1, resume=state) as s:
        rest = [(b.source, b.shard, b.row_group, b.epoch) async for b in s]
    assert head + rest == full


def test_validation_mixes_each_sources_validation_files(two) -> None:
    ds = TokenDataset("val", ByteTokenizer(), 4, 128, data=mix_of(two), ranks=Ranks(0, 1), buffer_docs=16,
                      epochs=1)
    x = torch.cat([x for x, _ in ds])
    tags = Counter(source_of(x))
    assert set(tags) == {"web", "code"}


# -- errors ------------------------------------------------------------------------------------------
def test_every_bad_mix_is_one_error_naming_the_source(two, tmp_path: Path) -> None:
    web, code = two
    with pytest.raises(ConfigError, match="a mix needs two or more"):
        stream("train", data=[Source(web)])
    for bad in (0, -1, float("nan"), "0.5", True):
        with pytest.raises(ConfigError, match=f"source {code}: weight must be a positive number"):
            stream("train", data=[Source(web), Source(code, weight=bad)])
    with pytest.raises(ConfigError, match="resolve to the same data folder"):
        stream("train", data=[Source(web), Source(web, weight=2)])
    with pytest.raises(ConfigError, match=r"takes its MixStream\.state_dict"):
        stream("train", data=mix_of(two), resume={"ranks": [0, 1, 1, True], "position": None, "cursor": None})
    only_train = tmp_path / "only"
    only_train.mkdir()
    pq.write_table(pa.table({"text": ["a b c"] * 4}), only_train / "train-00000.parquet")
    with pytest.raises(DatasetError, match=f"mix source 1 \\({only_train}\\)"):
        stream("val", data=[Source(web), Source(only_train)])
    with pytest.raises(ConfigError, match="a mix needs two or more"):
        TokenDataset("train", ByteTokenizer(), 4, 128, data=[Source(web)])


def test_a_mix_resumes_only_a_mix_state(two) -> None:
    single = TokenDataset("train", ByteTokenizer(), 8, 256, data=two[0], ranks=Ranks(0, 1), buffer_docs=16)
    with pytest.raises(Exception, match="different TokenDataset config"):
        make(two).load_state_dict(single.state_dict())


def test_iter_batches_mix_closes_cleanly(two) -> None:
    it = iter_batches("train", data=mix_of(two), epochs=None)
    assert {next(it).source for _ in range(4)} == {0, 1}
    it.close()
    asyncio.run(asyncio.sleep(0))


async def test_stream_mix_resumes_at_another_world_size_skipping_nothing(two) -> None:
    """One rank takes 5 batches; two ranks resume from its state (each source from its global cursor), and
    every row group of each source's first epoch is read."""
    async with stream("train", data=mix_of(two), epochs=1, ranks=Ranks(0, 1, drop_last=False)) as s:
        seen = set()
        async for b in s:
            seen.add((b.source, b.shard, b.row_group, b.epoch))
            if len(seen) == 5:
                state = s.state_dict()
                break
    for r in (0, 1):
        async with stream("train", data=mix_of(two), epochs=1, ranks=Ranks(r, 2, drop_last=False),
                          resume=state) as s:  # (pad: drop_last would leave out up to one row group)
            seen |= {(b.source, b.shard, b.row_group, b.epoch) async for b in s}
    for k, shards in ((0, 4), (1, 3)):
        assert {(sh, g) for src, sh, g, e in seen if src == k and e == 0} == \
            {(sh, g) for sh in range(shards) for g in range(4)}
