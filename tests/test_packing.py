"""Best-fit packer: same rows as the reference list-scanning loop, exact export/import, restore."""

from __future__ import annotations

import random

import numpy as np
import pytest

from nanostream.loader.encode import DocBytes, bos_first, join_docs
from nanostream.loader.packing import BestFitPacker, token_dtype

BOS = 1000


def flatten_docs(token_lists, bos_id: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The plain reference: documents as one array with BOS in front of each, and their lengths (BOS counted)."""
    tokens = [t for doc in token_lists for t in (bos_id, *doc)]
    return np.array(tokens, dtype=dtype), np.array([len(d) + 1 for d in token_lists], dtype=np.int64)


def reference_rows(groups: list[list[list[int]]], cap: int, n_rows: int, buffer_docs: int) -> list[list[int]]:
    """nanochat's loop, verbatim in spirit: scan the list for the longest fit, else crop the shortest."""
    it = iter(groups)
    buf: list[list[int]] = []
    rows = []
    exhausted = False
    for _ in range(n_rows):
        row: list[int] = []
        while len(row) < cap:
            while len(buf) < buffer_docs and not exhausted:
                g = next(it, None)
                if g is None:
                    exhausted = True
                else:
                    buf.extend([BOS, *d] for d in g)
            if not buf:
                return rows
            room = cap - len(row)
            best, best_len = -1, 0
            for i, d in enumerate(buf):
                if best_len < len(d) <= room:
                    best, best_len = i, len(d)
            if best >= 0:
                row.extend(buf.pop(best))
            else:
                short = min(range(len(buf)), key=lambda i: len(buf[i]))
                row.extend(buf.pop(short)[:room])
        rows.append(row)
    return rows


def random_groups(seed: int, n_groups: int, per_group: int, max_len: int) -> list[list[list[int]]]:
    rng = random.Random(seed)
    return [
        [[rng.randrange(BOS) for _ in range(rng.randrange(0, max_len))] for _ in range(per_group)]
        for _ in range(n_groups)
    ]


def packed_rows(groups, cap, n_rows, buffer_docs, packer=None, slack=0):
    packer = packer or BestFitPacker(buffer_docs, compact_slack=slack)
    it = iter(groups)

    def refill() -> bool:
        g = next(it, None)
        if g is None:
            return False
        packer.add(*flatten_docs(g, BOS, np.dtype(np.uint16)))
        return True

    rows = []
    for _ in range(n_rows):
        out = np.empty(cap, dtype=np.int64)
        saved = (packer.snapshot(), packer.stats.as_dict())
        if not packer.fill_row(out, refill):
            packer.restore(*saved)  # like the loader: an unfinished row (batch) leaves no trace
            break
        packer.compact()
        assert packer.held_tokens <= 2 * packer.alive_tokens + packer.compact_slack
        rows.append(out.tolist())
    return rows, packer, it


@pytest.mark.parametrize("slack", [0, 1 << 30])  # compact after every row / never
@pytest.mark.parametrize(("cap", "buffer_docs", "max_len"), [(65, 8, 40), (129, 50, 300), (33, 1, 20), (257, 200, 90)])
def test_same_rows_as_reference(cap: int, buffer_docs: int, max_len: int, slack: int) -> None:
    groups = random_groups(cap, 30, 17, max_len)
    want = reference_rows(groups, cap, 10_000, buffer_docs)
    got, packer, _ = packed_rows(groups, cap, 10_000, buffer_docs, slack=slack)
    if slack == 0:
        assert packer.compactions > 0
    assert got == want
    assert all(len(r) == cap and r[0] == BOS for r in got)
    st = packer.stats
    assert st.docs_in == 30 * 17
    assert st.tokens_out == cap * len(got)
    assert st.docs_used + packer.n_docs == st.docs_in
    assert 0.0 <= st.crop_fraction < 1.0


def test_crop_accounting() -> None:
    packer = BestFitPacker(1)
    packer.add(*flatten_docs([list(range(1, 10))], BOS, np.dtype(np.int32)))  # 10 tokens with BOS
    out = np.empty(4, dtype=np.int64)
    assert packer.fill_row(out, lambda: False)
    assert out.tolist() == [BOS, 1, 2, 3]
    st = packer.stats
    assert (st.docs_cropped, st.tokens_cropped, st.tokens_out) == (1, 6, 4)
    assert st.crop_fraction == pytest.approx(0.6)
    assert not packer.fill_row(out, lambda: False)


def test_export_reload_continues_identically() -> None:
    groups = random_groups(7, 40, 13, 120)
    cap, bd = 97, 30
    full, _, _ = packed_rows(groups, cap, 10_000, bd)
    first, packer, rest = packed_rows(groups, cap, 25, bd)
    tokens, lengths = packer.snapshot().export()
    assert lengths.sum() == len(tokens) and len(lengths) == packer.n_docs
    fresh = BestFitPacker(bd, compact_slack=0)
    fresh.add(tokens, lengths)
    second, _, _ = packed_rows(list(rest), cap, 10_000, bd, packer=fresh)
    assert first + second == full


def test_rollback_restores_everything() -> None:
    groups = random_groups(3, 12, 9, 60)
    cap, bd = 50, 10
    _, packer, rest = packed_rows(groups, cap, 6, bd)
    before = (packer.snapshot().export(), packer.stats.as_dict(), packer.n_docs)
    rest = list(rest)
    saved = (packer.snapshot(), packer.stats.as_dict())
    out = np.empty(cap, dtype=np.int64)
    feed = iter(rest[:3])

    def refill() -> bool:
        g = next(feed, None)
        if g is None:
            return False
        packer.add(*flatten_docs(g, BOS, np.dtype(np.uint16)))
        return True

    for _ in range(40):
        if not packer.fill_row(out, refill):
            break
    packer.restore(*saved)
    after = (packer.snapshot().export(), packer.stats.as_dict(), packer.n_docs)
    assert np.array_equal(before[0][0], after[0][0]) and np.array_equal(before[0][1], after[0][1])
    assert before[1:] == after[1:]
    # and it still packs exactly like a packer that never saw the rolled-back work
    fresh = BestFitPacker(bd)
    fresh.add(*before[0])
    a, _, _ = packed_rows(rest, cap, 1000, bd, packer=packer)
    b, _, _ = packed_rows(rest, cap, 1000, bd, packer=fresh)
    assert a == b


def test_memory_stays_bounded_with_long_documents() -> None:
    """Documents longer than a row are used only when they are the shortest: they linger, and must
    not keep their whole row group's array alive (compaction)."""
    rng = random.Random(5)
    groups = [[[1] * (300 if rng.random() < 0.1 else rng.randrange(1, 30)) for _ in range(200)] for _ in range(200)]
    rows, packer, _ = packed_rows(groups, 64, 100_000, 100, slack=1 << 12)
    assert len(rows) > 1000 and packer.compactions > 0
    assert packer.held_tokens <= 2 * packer.alive_tokens + (1 << 12)


def test_token_dtype() -> None:
    assert token_dtype(257) == np.uint16
    assert token_dtype(1 << 16) == np.uint16
    assert token_dtype(100_000) == np.int32
    with pytest.raises(ValueError):
        token_dtype(1 << 40)


def test_flatten_docs_bos_and_empty() -> None:
    tokens, lengths = flatten_docs([[5, 6], [], [7]], 9, np.dtype(np.int32))
    assert tokens.tolist() == [9, 5, 6, 9, 9, 7]
    assert lengths.tolist() == [3, 1, 2]
    tokens, lengths = flatten_docs([], 9, np.dtype(np.int32))
    assert len(tokens) == 0 and len(lengths) == 0


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_doc_bytes_join_equals_flatten(dtype: type) -> None:
    dt = np.dtype(dtype)
    for seed in range(3):
        groups = random_groups(seed, 4, 30, 50)  # includes empty documents
        for g in [*groups, []]:
            to_bytes = DocBytes(BOS, dt)
            tokens, lengths = join_docs(g, to_bytes, len(g))
            want_tokens, want_lengths = flatten_docs(g, BOS, dt)
            assert tokens.dtype == dt and lengths.dtype == np.int64
            assert np.array_equal(tokens, want_tokens) and np.array_equal(lengths, want_lengths)
    big = DocBytes(70_000, np.dtype(np.int32))  # int32 ids above uint16
    assert np.frombuffer(big([1 << 20, 0]), dtype=np.int32).tolist() == [70_000, 1 << 20, 0]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_bos_first_equals_flatten(dtype: type) -> None:
    """Flat ids + offsets (what encode_flat returns) give flatten_docs's arrays; ids outside the dtype raise."""
    dt = np.dtype(dtype)
    for seed in range(3):
        for g in [*random_groups(seed, 4, 30, 50), []]:  # includes empty documents
            offsets = np.cumsum([0, *map(len, g)]).astype(np.int64)
            flat = np.array([i for d in g for i in d], dtype=np.uint32)
            tokens, lengths = bos_first(flat, offsets, BOS, dt)
            want_tokens, want_lengths = flatten_docs(g, BOS, dt)
            assert tokens.dtype == dt and np.array_equal(tokens, want_tokens) and np.array_equal(lengths, want_lengths)
            shifted = bos_first(np.concatenate([[7, 7], flat]), offsets + 2, BOS, dt)  # offsets need not start at 0
            assert np.array_equal(shifted[0], want_tokens)
    with pytest.raises(ValueError, match="does not fit in uint16"):
        bos_first(np.array([1 << 16], dtype=np.uint32), np.array([0, 1]), BOS, np.dtype(np.uint16))


def test_doc_bytes_rejects_ids_outside_dtype_and_bounds_its_cache() -> None:
    to_bytes = DocBytes(BOS, np.dtype(np.uint16))
    for bad in ([1 << 16], [-1]):
        with pytest.raises(ValueError, match="does not fit in uint16"):
            to_bytes(bad)
    with pytest.raises(ValueError, match="uint16 or int32"):
        DocBytes(BOS, np.dtype(np.int64))
    to_bytes.MAX_CACHED = 3
    for n in range(20):
        assert np.frombuffer(to_bytes(list(range(n))), dtype=np.uint16).tolist() == [BOS, *range(n)]
        assert len(to_bytes._structs) <= 3
