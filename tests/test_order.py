"""Epoch plans and the global Cursor: equal work, and resume at another world size skipping nothing."""

from __future__ import annotations

import random

import pytest

from nanostream.errors import ConfigError
from nanostream.streaming.order import Cursor, EpochPlan


def plan(counts, world, local, *, base=None, drop_last=True, shuffle=True, epoch=0) -> EpochPlan:
    return EpochPlan(tuple(counts), counts, epoch, shuffle=shuffle, seed=1, world_size=world, local_world_size=local,
                     drop_last=drop_last, base=base)


def taken_items(p: EpochPlan, taken: int) -> list[int]:
    return [i for r in range(p.world_size) for i in p.indices(r)[:taken]]


@pytest.mark.parametrize("drop_last", [True, False])
def test_every_reader_reads_the_same_number(drop_last):
    counts = {0: 5, 1: 3, 2: 7, 3: 4, 4: 6}
    p = plan(counts, 4, 2, drop_last=drop_last)
    lengths = {len(p.indices(r)) for r in range(4)}
    assert lengths == {p.length}
    everything = [i for r in range(4) for i in p.indices(r)]
    if drop_last:
        assert len(set(everything)) == len(everything) == p.total - p.dropped  # at most once
    else:
        assert set(everything) == set(range(p.total)) and len(everything) == p.total + p.padded


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
    rest = {i for r in range(again.world_size) for i in again.indices(r)}
    assert rest.isdisjoint(taken_items(first, taken))
    assert rest | set(taken_items(first, taken)) == set(range(first.total))
    # ... and again at the new size, twice over (a cursor after a resume keeps both parts)
    second = plan(counts, *new, drop_last=False, base=cur)
    cur2 = second.cursor_after(second.length // 3)
    third = plan(counts, *old, drop_last=False, base=cur2)
    parts = [set(taken_items(first, taken)), set(taken_items(second, second.length // 3)),
             {i for r in range(third.world_size) for i in third.indices(r)}]
    assert sum(len(x) for x in parts) == len(set().union(*parts)) == first.total


def test_cursor_at_the_same_world_size_and_at_the_epoch_end():
    counts = {s: 4 for s in range(8)}
    p = plan(counts, 4, 2)
    q = plan(counts, 4, 2, base=p.cursor_after(3))
    after = {i for r in range(4) for i in p.indices(r)[3:]}
    assert {i for r in range(4) for i in q.indices(r)} == after  # the same rest (a shard partly read
    assert q.length == p.length - 3  # is shared anew by its node's readers), and as many each
    assert p.cursor_after(p.length) == Cursor(1, 0, (), p.total)  # the epoch done: the next one


def test_cursor_from_other_data_is_refused():
    counts = {0: 4, 1: 4}
    with pytest.raises(ConfigError, match="does not fit"):
        plan(counts, 2, 2, base=Cursor(0, 3, (), 99))
    assert plan(counts, 2, 2, base=Cursor(1, 3, (), 99)).length == 4  # another epoch's cursor: not used
