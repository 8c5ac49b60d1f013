"""An epoch's global order, what each reader reads of it (the deal), equal work per reader, and the ``Cursor``.

Who reads which row group (``deal``): the epoch's global order (below), or what is left
of it, is cut into ``N`` contiguous pieces, one per node in node order, of as equal a
number of row groups as can be (``node_shares``: ``T // N``, the first ``T % N`` nodes
one more). On a node, the ``j``-th row group of its piece goes to local reader
``j % L`` -- a running count across the piece's shards, not each shard's row-group
index -- so the readers of a node differ by at most one row group, and all readers by at
most one too. A node downloads the shards its piece touches: at most ``ceil(S/N) + 1``
of ``S`` (a shard at a cut is split between two nodes, and both download it). One node
reads the whole order: its ``j``-th row group goes to reader ``j % L``.

So with ``R`` readers and ``T`` row groups, ``drop_last=True`` leaves out ``T % R <= R-1``
row groups per epoch and ``drop_last=False`` repeats ``R - T % R`` (0 when ``R`` divides
``T``), for any shard count, row groups per shard, ranks, nodes and workers
(``tests/test_order.py`` checks it over random layouts).

Worked example: 2 nodes x 2 ranks x 2 workers, so world 4 and L 2, folded to 8
readers with 4 per node; the epoch's order is shards A B C D of 8 row groups each.
Node 0 (ranks 0, 1) gets A and B, node 1 (ranks 2, 3) gets C and D. Reader
``j = local_rank*2 + worker`` of a node reads the row groups at places ``j, j+4, ...``
of its piece:

    rank 0 worker 0: A0 A4 B0 B4    rank 2 worker 0: C0 C4 D0 D4
    rank 0 worker 1: A1 A5 B1 B5    rank 2 worker 1: C1 C5 D1 D5
    rank 1 worker 0: A2 A6 B2 B6    rank 3 worker 0: C2 C6 D2 D6
    rank 1 worker 1: A3 A7 B3 B7    rank 3 worker 1: C3 C7 D3 D7

Each node downloads 2 shards, not 4. A split with fewer shards than nodes (the single
validation shard) is cut the same way: every node downloads it and reads its part.
Before the row groups are counted, a node can already start downloading the shard its
piece most likely starts in (``first_piece_shard``, by the catalog's sizes).

The **global order** of epoch ``e`` is every row group of the split: the shards in
``shard_order`` (shuffled per epoch with ``shuffle``), each shard's row groups in
``row_group_order``. It depends on the split, the row-group counts, ``shuffle``,
``seed`` and ``e`` only -- not on the world size -- so it is the same for every rank
of every run.

``EpochPlan`` deals what is left of it (all of it, or what a ``Cursor`` says is not
consumed yet) to the readers with ``deal`` and evens the work out:

* ``drop_last=True`` (default): every reader reads as many row groups as the reader
  with the fewest; the others' last one is skipped this epoch (``dropped``; with
  ``shuffle`` a different remainder each epoch).
* ``drop_last=False``: every reader reads as many as the reader with the most; the
  others start over on their own row groups for the missing one (``padded``).

A reader that would read nothing makes ``ConfigError`` on every reader, so no rank
waits forever on the others. (Resumed near the end of an epoch at a larger world
size, what is left may not feed every reader: then it is dropped, or with
``drop_last=False`` the empty readers repeat from all that is left.)

``Cursor(epoch, done, extra, total)`` is the global position: row groups ``[0, done)``
of the epoch's global order and the indices in ``extra`` are consumed; ``consumed``
counts them. ``cursor_after(taken)`` is the cursor once every reader has taken its
first ``taken`` row groups of the plan. Every reader computes the same cursor from the
same ``taken``, and ``stream(..., start=cursor)`` at any world size deals exactly the
rest, so a resume skips nothing and, when the readers were level, repeats nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Cursor:
    """A point of an epoch's global order, the same on every rank and for any world size."""

    epoch: int
    done: int = 0  # row groups [0, done) of the global order are consumed
    extra: tuple[int, ...] = ()  # indices >= done also consumed, sorted
    total: int = 0  # row groups in the epoch's global order (a resume checks it sees the same data)

    @property
    def consumed(self) -> int:
        """Row groups of this epoch's global order consumed by all ranks together."""
        return self.done + len(self.extra)

    def to_list(self) -> list:
        """A plain-list form for checkpoints (``torch.load(weights_only=True)``, JSON)."""
        return [self.epoch, self.done, list(self.extra), self.total]

    @classmethod
    def from_list(cls, value: list) -> Cursor:
        epoch, done, extra, total = value
        return cls(int(epoch), int(done), tuple(int(i) for i in extra), int(total))


def shard_order(shards: tuple[int, ...], epoch: int, shuffle: bool, seed: int) -> list[int]:
    order = list(shards)
    if shuffle:
        random.Random(f"nanostream:{seed}:{epoch}").shuffle(order)
    return order


def row_group_order(n: int, shard: int, epoch: int, shuffle: bool, seed: int) -> list[int]:
    """All row groups of a shard, in this epoch's order."""
    order = list(range(n))
    if shuffle:
        random.Random(f"nanostream:{seed}:{epoch}:{shard}").shuffle(order)
    return order


class EpochPlan:
    """Who reads what in one epoch: ``sequence(reader)`` lists ``(shard, row_group)`` in read order."""

    def __init__(self, shards: tuple[int, ...], counts: dict[int, int], epoch: int, *, shuffle: bool,
                 seed: int, world_size: int, local_world_size: int, drop_last: bool = True,
                 base: Cursor | None = None) -> None:
        self.epoch, self.world_size, self.local_world_size = epoch, world_size, local_world_size
        self.items = [(s, g) for s in shard_order(shards, epoch, shuffle, seed)
                      for g in row_group_order(counts[s], s, epoch, shuffle, seed)]
        self.total = len(self.items)
        self.base = base if base is not None and base.epoch == epoch else None
        skip = self._consumed(self.base)
        left = [i for i in range(self.total) if i not in skip]
        dealt = [[left[j] for j in d] for d in deal([self.items[i] for i in left], world_size, local_world_size)]
        lengths = [len(d) for d in dealt]
        if min(lengths) == 0 and self.base is None:
            idle = lengths.index(0)
            raise ConfigError(
                f"reader {idle} of {world_size} ({world_size // local_world_size} node(s) of "
                f"{local_world_size}; DataLoader workers count as readers) reads no row group in epoch "
                f"{epoch}: {len(left)} row groups for {world_size} readers. Use fewer ranks or "
                "workers, or more shards")
        if min(lengths) == 0 and not drop_last:  # a resume near the epoch's end: pad from what is left
            dealt = [d or left for d in dealt]
            lengths = [len(d) for d in dealt]
        self.length = min(lengths) if drop_last else max(lengths)
        self.dropped = sum(n - self.length for n in lengths if n > self.length)
        self.padded = sum(self.length - n for n in lengths if n < self.length)
        self._seqs = [(d * (self.length // len(d) + 1))[: self.length] if d else [] for d in dealt]

    def _consumed(self, cursor: Cursor | None) -> set[int]:
        if cursor is None:
            return set()
        if cursor.total != self.total or cursor.done > self.total or any(i >= self.total for i in cursor.extra):
            raise ConfigError(f"resume cursor {cursor} does not fit epoch {self.epoch} of this split "
                              f"({self.total} row groups): resume with the same shards, shuffle and seed")
        return set(range(cursor.done)).union(cursor.extra)

    def indices(self, reader: int) -> list[int]:
        """Global-order indices ``reader`` reads this epoch, in order (``length`` of them)."""
        return self._seqs[reader]

    def sequence(self, reader: int) -> list[tuple[int, int]]:
        return [self.items[i] for i in self._seqs[reader]]

    def cursor_after(self, taken: int) -> Cursor:
        """The global position once every reader has taken its first ``taken`` row groups."""
        if taken >= self.length:
            return Cursor(self.epoch + 1, 0, (), self.total)
        done = self._consumed(self.base)
        for seq in self._seqs:
            done.update(seq[:max(taken, 0)])
        prefix = 0
        while prefix in done:
            prefix += 1
        return Cursor(self.epoch, prefix, tuple(sorted(i for i in done if i > prefix)), self.total)


def node_shares(total: int, nodes: int) -> list[int]:
    """Row groups each node reads of ``total``: as equal as can be (the first ``total % nodes`` one more)."""
    return [total // nodes + (n < total % nodes) for n in range(nodes)]


def deal(items: list[tuple[int, int]], world_size: int, local_world_size: int) -> list[list[int]]:
    """Indices into ``items`` (``(shard, row_group)`` pairs in read order, a shard's row groups
    together) that each reader reads, reader by reader (see the module docstring): ``items`` cut
    into one contiguous piece per node of ``node_shares`` row groups, in node order; on a node,
    the ``j``-th row group of its piece goes to local reader ``j % local_world_size``."""
    nodes = world_size // local_world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    at = 0
    for n, share in enumerate(node_shares(len(items), nodes)):
        for j in range(share):
            out[n * local_world_size + j % local_world_size].append(at + j)
        at += share
    return out


def first_piece_shard(shards: list[int], sizes: list[int | None], node: int, nodes: int) -> int | None:
    """The shard node ``node``'s piece most likely starts in, before the row groups are counted: the
    one holding its share's first byte, by the catalog's sizes (each shard counted alike where a size
    is unknown). Exact for node 0 and where row groups are proportional to bytes."""
    if not shards or node >= nodes:
        return None
    known = [s for s in sizes if s]
    mean = sum(known) / len(known) if known else 1.0
    weights = [float(s) if s else mean for s in sizes]
    target, at = sum(weights) * node / nodes, 0.0
    for shard, w in zip(shards, weights, strict=True):
        if at + w > target:
            return shard
        at += w
    return shards[-1]
