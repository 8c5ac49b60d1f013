"""The deal and the global Cursor: equal work within the bound, the same reads before and after every count is
known, and resume at another world size skipping nothing."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanostream.errors import ConfigError
from nanostream.streaming.order import Cursor, EpochDeal, NeedCounts, SettledDeal
from nanostream.streaming.ranks import Ranks, worker_stride


def deal(counts, world, local, *, base=None, drop_last=True, shuffle=True, epoch=0, seed=1) -> EpochDeal:
    return EpochDeal(tuple(counts), epoch, Ranks(0, world, local, drop_last), shuffle=shuffle, seed=seed, base=base)


def plan(counts, world, local, *, base=None, drop_last=True, shuffle=True, epoch=0) -> SettledDeal:
    return SettledDeal(deal(counts, world, local, base=base, drop_last=drop_last, shuffle=shuffle, epoch=epoch),
                       counts)


def items(p: SettledDeal) -> list[tuple[int, int]]:
    """Every row group of the epoch's global order, ``(shard, row_group)``."""
    d = p.deal
    return [(s, d.row_group(q, g, p.counts[s])) for q, s in enumerate(d.order) for g in range(p.counts[s])]


def total(p: SettledDeal) -> int:
    return sum(p.counts[s] for s in p.deal.order)


def indices(p: SettledDeal, reader: int) -> list[int]:
    """Global-order indices ``reader`` reads this epoch, in order."""
    starts = [0]
    for s in p.deal.order:
        starts.append(starts[-1] + p.counts[s])
    return [starts[q] + g for q, g in p.places(reader)]


def taken_items(p: SettledDeal, taken: int) -> list[int]:
    return [i for r in range(p.deal.world_size) for i in indices(p, r)[:taken]]


@pytest.mark.parametrize("drop_last", [True, False])
def test_every_reader_reads_the_same_number(drop_last):
    counts = {0: 5, 1: 3, 2: 7, 3: 4, 4: 6}
    p = plan(counts, 4, 2, drop_last=drop_last)
    lengths = {len(indices(p, r)) for r in range(4)}
    assert lengths == {p.length}
    everything = [i for r in range(4) for i in indices(p, r)]
    if drop_last:
        assert len(set(everything)) == len(everything) == total(p) - p.dropped  # at most once
    else:
        assert set(everything) == set(range(total(p))) and len(everything) == total(p) + p.padded


@pytest.mark.parametrize("old, new", [((4, 2), (2, 2)), ((2, 2), (4, 2)), ((4, 2), (3, 3)), ((2, 1), (8, 4)),
                                      ((6, 2), (1, 1))])
def test_resume_at_another_world_size_skips_and_repeats_nothing(old, new):
    rnd = random.Random(f"{old}{new}")
    counts = {s: rnd.randint(2, 9) for s in range(9)}
    first = plan(counts, *old, drop_last=False)
    taken = first.length // 2
    cur = first.cursor_after(taken)
    assert cur.consumed == len(set(taken_items(first, taken)))  # row groups consumed by all ranks together
    again = plan(counts, *old, drop_last=False, base=Cursor.from_list(cur.to_list()))
    rest = {i for r in range(again.deal.world_size) for i in indices(again, r)}
    assert rest.isdisjoint(taken_items(first, taken))
    assert rest | set(taken_items(first, taken)) == set(range(total(first)))
    # ... and again at the new size, twice over (a cursor after a resume keeps both parts)
    second = plan(counts, *new, drop_last=False, base=cur)
    cur2 = second.cursor_after(second.length // 3)
    third = plan(counts, *old, drop_last=False, base=cur2)
    parts = [set(taken_items(first, taken)), set(taken_items(second, second.length // 3)),
             {i for r in range(third.deal.world_size) for i in indices(third, r)}]
    assert sum(len(x) for x in parts) == len(set().union(*parts)) == total(first)


def test_cursor_at_the_same_world_size_and_at_the_epoch_end():
    counts = {s: 4 for s in range(8)}
    p = plan(counts, 4, 2)
    q = plan(counts, 4, 2, base=p.cursor_after(3))
    after = {i for r in range(4) for i in indices(p, r)[3:]}
    assert {i for r in range(4) for i in indices(q, r)} == after  # the same rest (a shard partly read
    assert q.length == p.length - 3  # is shared anew by its node's readers), and as many each
    assert p.cursor_after(p.length) == Cursor(1, shards=8)  # the epoch done: the next one


def test_cursor_from_other_data_is_refused():
    counts = {0: 4, 1: 4}
    with pytest.raises(ConfigError, match="does not fit"):
        plan(counts, 2, 2, base=Cursor(0, ((0, 0, 0, 3),), 3, 99))
    with pytest.raises(ConfigError, match="does not fit"):  # a row group the shard does not have
        plan(counts, 2, 2, base=Cursor(0, ((0, 5, 1, 0),), 3, 2))
    assert plan(counts, 2, 2, base=Cursor(1, ((0, 0, 0, 3),), 3, 99)).length == 4  # another epoch's: not used


# -- properties over any layout: the bound, equal counts, the nodes' downloads, resume ---------------
layouts = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3))  # nodes, ranks a node, workers


def folded(nodes: int, ranks: int, workers: int) -> tuple[int, int]:
    """(readers, readers per node) with DataLoader workers folded in, as TokenDataset does."""
    world, local = nodes * ranks, ranks
    readers = {worker_stride(r, world, w, workers) for r in range(world) for w in range(workers)}
    assert {n for _, n in readers} == {world * workers} and len(readers) == world * workers
    return world * workers, local * workers


@settings(max_examples=300, deadline=None)
@given(counts=st.lists(st.integers(0, 60), min_size=1, max_size=30), layout=layouts, drop_last=st.booleans(),
       shuffle=st.booleans())
def test_an_epoch_leaves_out_or_repeats_at_most_readers_minus_one(counts, layout, drop_last, shuffle):
    readers, local = folded(*layout)
    c = dict(enumerate(counts))
    total = sum(counts)
    if total < readers:
        with pytest.raises(ConfigError, match="reads no row group"):
            plan(c, readers, local, drop_last=drop_last, shuffle=shuffle)
        return
    p = plan(c, readers, local, drop_last=drop_last, shuffle=shuffle)
    seqs = [indices(p, r) for r in range(readers)]
    assert {len(s) for s in seqs} == {p.length}  # equal work on every reader
    read = Counter(i for s in seqs for i in s)
    if drop_last:
        assert p.length == total // readers and max(read.values()) == 1  # nothing read twice
        assert p.dropped == total - len(read) == total % readers <= readers - 1
    else:
        assert p.length == -(-total // readers) and set(read) == set(range(total))  # nothing left out
        assert p.padded == sum(read.values()) - total <= readers - 1
        assert sum(n - 1 for n in read.values()) == p.padded  # only the padding repeats


@settings(max_examples=200, deadline=None)
@given(shards=st.integers(1, 40), groups=st.integers(1, 60), layout=layouts, shuffle=st.booleans(),
       drop_last=st.booleans())
def test_a_node_downloads_its_piece_and_at_most_two_shards_more(shards, groups, layout, shuffle, drop_last):
    """Pieces are cut by shard count: ``ceil(S/N)`` shards a node, plus at most two whose leftovers it reads
    (shards of equal row-group counts, as a dataset's are)."""
    readers, local = folded(*layout)
    nodes = readers // local
    if shards * groups < readers:
        return
    p = plan({s: groups for s in range(shards)}, readers, local, shuffle=shuffle, drop_last=drop_last)
    every = items(p)
    held = [{every[i][0] for r in range(n * local, (n + 1) * local) for i in indices(p, r)} for n in range(nodes)]
    for n in range(nodes):
        assert len({p.deal.order[q] for q in p.deal.pieces[n]}) <= -(-shards // nodes)
        assert len(held[n]) <= -(-shards // nodes) + 2


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=2, max_size=12), layout=layouts)
def test_shuffle_is_a_permutation_per_epoch_the_same_on_every_rank(counts, layout):
    readers, local = folded(*layout)
    c = dict(enumerate(counts))
    if sum(counts) < readers:
        return
    for epoch in (0, 1):
        a, b = plan(c, readers, local, epoch=epoch), plan(c, readers, local, epoch=epoch)
        assert items(a) == items(b) and [indices(a, r) for r in range(readers)] == [indices(b, r) for r in range(readers)]
        assert sorted(items(a)) == sorted((s, g) for s, n in c.items() for g in range(n))  # every row group once


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(0, 20), min_size=1, max_size=15), old=layouts, new=layouts,
       frac=st.floats(0, 1), drop_last=st.booleans())
def test_elastic_resume_skips_nothing_at_any_layout(counts, old, new, frac, drop_last):
    (r1, l1), (r2, l2) = folded(*old), folded(*new)
    c = dict(enumerate(counts))
    if sum(counts) < max(r1, r2):
        return
    first = plan(c, r1, l1, drop_last=drop_last)
    taken = int(first.length * frac)
    cur = first.cursor_after(taken)
    if cur.epoch == 1:
        return  # the epoch is over
    done = set(taken_items(first, taken))
    assert cur.consumed == len(done)
    second = plan(c, r2, l2, base=cur, drop_last=drop_last)
    rest = [i for r in range(r2) for i in indices(second, r)]
    assert done.isdisjoint(rest)  # nothing read twice across the resume (but padding)
    assert {len(indices(second, r)) for r in range(r2)} == {second.length}
    if drop_last:
        assert len(set(rest)) == len(rest) and total(first) - len(done) - len(rest) <= max(r2 - 1, 0) + \
            (total(first) - len(done) if second.length == 0 else 0)
    else:
        assert done | set(rest) == set(range(total(first)))  # nothing skipped


@settings(max_examples=300, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=20), layout=layouts, drop_last=st.booleans(),
       known=st.lists(st.booleans(), min_size=20, max_size=20), frac=st.floats(0, 1), resumed=st.booleans())
def test_what_a_reader_reads_before_every_count_is_known_is_what_the_settled_plan_gives(counts, layout, drop_last,
                                                                                      known, frac, resumed):
    """Before the settlement a reader reads row group ``j`` of its node's piece only while ``j < L * (K // R)``
    (``K``: the row groups counted so far); whatever counts come later, that is the settled plan's start for
    it, and a cursor made then is the settled plan's cursor."""
    readers, local = folded(*layout)
    c = dict(enumerate(counts))
    if sum(counts) < readers:
        return
    base = None
    if resumed:  # also from a cursor of another layout
        first = plan(c, max(1, readers // 2), max(1, local // 2) if readers // 2 % max(1, local // 2) == 0 else 1,
                     drop_last=drop_last)
        base = first.cursor_after(int(first.length * frac))
        if base.epoch != 0:
            return
    settled = plan(c, readers, local, drop_last=drop_last, base=base)
    partial = {s: n for s, n in c.items() if known[s]}
    d = deal(c, readers, local, drop_last=drop_last, base=base)
    safe = d.safe(d.known_left(partial))
    for n in range(readers // local):
        try:
            got = d.piece_places(n, partial, safe)
        except NeedCounts as exc:
            assert set(exc.shards) - set(partial)
            continue
        for i in range(local):
            mine = got[i::local]
            assert mine == settled.places(n * local + i)[:len(mine)]
    taken = safe // local
    if taken == 0:
        return  # nothing read yet: the base (or, settled with nothing to read, the next epoch)
    try:
        early = d.cursor_after(taken, partial)
    except NeedCounts as exc:
        assert exc.shards and not set(exc.shards) & set(partial)
    else:
        if early != settled.cursor_after(taken):  # every reader took its whole share: settled, that is the
            assert taken == settled.length  # next epoch; early, a cursor after which nothing is left
            assert plan(c, readers, local, drop_last=drop_last, base=early).length == 0


def test_a_reader_stops_at_the_bound_until_counts_arrive():
    """One node of 2 readers, 3 shards of 4: with only the first shard counted, ``K // R`` is 2, so each reader
    may read 2 row groups (all of the first shard) and no more before another count is known."""
    d = deal({0: 4, 1: 4, 2: 4}, 2, 2, shuffle=False, seed=0)
    assert d.safe(d.known_left({0: 4})) == 4
    assert d.piece_places(0, {0: 4}, 4) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    with pytest.raises(NeedCounts) as exc:
        d.piece_places(0, {0: 4}, 5)
    assert exc.value.shards == (1,)
    assert d.safe(d.known_left({0: 4, 1: 4})) == 8 and d.order[d.pieces[0][0]] == 0
