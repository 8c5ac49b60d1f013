"""An epoch's global order, what each reader reads of it (the deal), equal work per reader, and the ``Cursor``.

Who reads which row group (``deal``):

* One node (``L == world``): row group ``g`` of every shard goes to reader
  ``g % world``.
* ``N`` nodes: the epoch's shard order is dealt to the nodes -- shard ``k`` of the
  order goes to node ``k % N`` -- and within a node row group ``g`` of each of its
  shards goes to local reader ``g % L``. A node downloads only its own shards; with
  ``N == 1`` this is exactly the one-node rule above.

Worked example: 2 nodes x 2 ranks x 2 workers, so world 4 and L 2, folded to 8
readers with 4 per node; the epoch's order is shards A B C D of 8 row groups each.
Node 0 (ranks 0, 1) gets A and C, node 1 (ranks 2, 3) gets B and D. Reader
``j = local_rank*2 + worker`` of a node reads row groups ``g`` with ``g % 4 == j``:

    rank 0 worker 0: A0 A4 C0 C4    rank 2 worker 0: B0 B4 D0 D4
    rank 0 worker 1: A1 A5 C1 C5    rank 2 worker 1: B1 B5 D1 D5
    rank 1 worker 0: A2 A6 C2 C6    rank 3 worker 0: B2 B6 D2 D6
    rank 1 worker 1: A3 A7 C3 C7    rank 3 worker 1: B3 B7 D3 D7

Each node downloads 2 shards, not 4. A split with fewer shards than nodes (the
single validation shard) is read as on one node (``ranks.node_count`` returns 1).

The **global order** of epoch ``e`` is every row group of the split: the shards in
``shard_order`` (shuffled per epoch with ``shuffle``), each shard's row groups in
``row_group_order``. It depends on the split, the row-group counts, ``shuffle``,
``seed`` and ``e`` only -- not on the world size -- so it is the same for every rank
of every run.

``EpochPlan`` deals what is left of it (all of it, or what a ``Cursor`` says is not
consumed yet) to the readers with ``deal`` and evens the work out:

* ``drop_last=True`` (default): every reader reads as many row groups as the reader
  with the fewest; the others' last ones are skipped this epoch (``dropped``; with
  ``shuffle`` a different remainder each epoch).
* ``drop_last=False``: every reader reads as many as the reader with the most; the
  others start over on their own row groups for the missing ones (``padded``).

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
        dealt = [[left[j] for j in d] for d in deal(self._keyed(left, counts), world_size, local_world_size)]
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

    def _keyed(self, left: list[int], counts: dict[int, int]) -> list[tuple[int, int]]:
        """``(shard, key)`` of the row groups left: ``key % local`` picks the local reader. A whole
        shard uses the row-group index (the one-node rule); a shard partly consumed (a resume at
        another world size) numbers what is left of it, so its local readers share it evenly."""
        per_shard: dict[int, int] = {}
        for i in left:
            s = self.items[i][0]
            per_shard[s] = per_shard.get(s, 0) + 1
        seen: dict[int, int] = {}
        out = []
        for i in left:
            s, g = self.items[i]
            if per_shard[s] == counts[s]:
                out.append((s, g))
            else:
                out.append((s, seen.get(s, 0)))
                seen[s] = seen.get(s, 0) + 1
        return out

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


def deal(items: list[tuple[int, int]], world_size: int, local_world_size: int) -> list[list[int]]:
    """Indices into ``items`` (``(shard, row_group)`` pairs in read order, a shard's row groups
    together) that each reader reads, reader by reader. The ``k``-th shard of ``items`` goes to
    node ``k % nodes``; its row group ``g`` to local reader ``g % local_world_size`` there."""
    nodes = world_size // local_world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    k, last = -1, None
    for i, (shard, group) in enumerate(items):
        if shard != last:
            k, last = k + 1, shard
        out[(k % nodes) * local_world_size + group % local_world_size].append(i)
    return out
