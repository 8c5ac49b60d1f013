"""An epoch's global order and the deal: who reads which row group, with equal work, before every count is known.

The **global order** of epoch ``e`` is every row group of the split: the shards in
``shard_order`` (shuffled per epoch with ``shuffle``), each shard's row groups in
``row_group_order``. It depends on the split, ``shuffle``, ``seed`` and ``e`` only -- not
on the world size -- so a ``Cursor`` (``cursor.py``) means the same on every rank of every
run. Place ``(p, g)`` is row-group position ``g`` of the ``p``-th shard of that order.

**The deal** (``EpochDeal``), in two steps, so that a reader starts at once:

1. *Pieces, known without any footer.* The shards left of the order (all of them, or those a
   ``Cursor`` has not wholly consumed) are cut by *shard count* into one contiguous piece per
   node, in node order (``node_shares``: ``S // N``, the first ``S % N`` one more). Within a
   node, the ``j``-th row group of its piece (a running count across the piece's shards) goes
   to local reader ``j % L``. A node downloads its piece's shards: ``ceil(S / N)``.
2. *Settlement, once every count is known* (``settle.py``: ``EpochPlan``). Each of the ``R``
   readers reads ``length = T // R`` row groups (``ceil`` with ``drop_last=False``), so each
   node ``Q = L * length``; a node whose piece holds more hands the rest (its tail) to the nodes
   whose pieces hold fewer. At most ``R - 1`` row groups are left out (or repeated).

Before the settlement a reader reads row group ``j`` of its node's piece only while
``j < L * (K // R)`` (``EpochDeal.safe``), ``K`` being the row groups counted so far (a
count not known counts as 0): then ``j < Q`` whatever the other counts turn out to be, so
what it read is what the settled plan gives it. Its own shards' footers arrive with their
downloads, the others' from the nodes that download them (``sources/counts.py``), so in a
run whose nodes go at the same pace the bound stays ahead of every reader; past it a reader
waits for counts. A reader that would read nothing in a fresh epoch is a ``ConfigError`` on
every reader (raised at settlement, before any of them can read past the bound).

Worked example: 2 nodes x 2 ranks x 2 workers (8 readers, 4 a node); the epoch's order is
shards A B C D of 8 row groups. Node 0 gets A B, node 1 C D (``length`` 4, no leftovers);
reader ``j`` of a node reads places ``j, j+4, ...`` of its piece: rank 0 worker 0 reads
A0 A4 B0 B4, rank 2 worker 0 C0 C4 D0 D4. With 9 shards of 4 on 2 nodes of 3 readers, node 0
gets shards 0-4 (20 row groups), node 1 shards 5-8 (16): ``length`` 6, ``Q`` 18, so node 0
stops after 18 and node 1 reads the last two of shard 4 besides its own.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from ..errors import ConfigError
from .cursor import Cursor, Span, from_indices, merge, run_span

Place = tuple[int, int]  # (position in the epoch's shard order, position in that shard's row-group order)


class NeedCounts(Exception):
    """The deal needs row-group counts it was not given: the caller learns ``shards``' and asks again."""

    def __init__(self, shards: list[int] | tuple[int, ...]) -> None:
        super().__init__(f"row-group counts needed for {len(shards)} shard(s)")
        self.shards = tuple(shards)


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


def node_shares(total: int, nodes: int) -> list[int]:
    """How many of ``total`` each node gets: as equal as can be (the first ``total % nodes`` one more)."""
    return [total // nodes + (n < total % nodes) for n in range(nodes)]


class EpochDeal:
    """Epoch ``epoch``'s deal before the counts: pieces per node, the bound, and the settlement."""

    def __init__(self, shards: tuple[int, ...], epoch: int, *, shuffle: bool, seed: int, world_size: int,
                 local_world_size: int, drop_last: bool = True, base: Cursor | None = None,
                 counts: Mapping[int, int] | None = None) -> None:
        self.epoch, self.shuffle, self.seed, self.drop_last = epoch, shuffle, seed, drop_last
        self.world_size, self.local_world_size = world_size, local_world_size
        self.nodes = world_size // local_world_size
        self.order = shard_order(tuple(shards), epoch, shuffle, seed)
        base = base if base is not None and base.epoch == epoch else None
        if base is not None and base.legacy is not None:
            base = self._from_legacy(base, counts or {})
        if base is not None and ((base.shards and base.shards != len(self.order))
                                 or any(s[2] > len(self.order) for s in base.spans)):
            raise self._misfit(base)
        self.base = base
        self.left = [p for p in range(len(self.order)) if base is None or not base.whole(p)]
        self._pieces: list[list[int]] = []
        at = 0
        for share in node_shares(len(self.left), self.nodes):
            self._pieces.append(self.left[at:at + share])
            at += share
        self._groups: dict[int, list[int]] = {}

    def _misfit(self, base: Cursor) -> ConfigError:
        return ConfigError(f"resume cursor {base} does not fit epoch {self.epoch} of this split ({len(self.order)} "
                           "shards): resume with the same shards, shuffle and seed")

    def _from_legacy(self, base: Cursor, counts: Mapping[int, int]) -> Cursor:
        missing = [s for s in self.order if s not in counts]
        if missing:
            raise NeedCounts(missing)
        assert base.legacy is not None
        done, extra, total = base.legacy
        sizes = [counts[s] for s in self.order]
        if total != sum(sizes) or done > total or any(i >= total for i in extra):
            raise self._misfit(base)
        return Cursor(base.epoch, from_indices(done, extra, sizes), done + len(extra), len(self.order))

    # -- what each node has, known without counts -----------------------------------------------
    def piece(self, node: int) -> list[int]:
        """Shard positions of node ``node``'s piece, in order."""
        return self._pieces[node]

    def first_shard(self, node: int) -> int | None:
        """The shard node ``node`` reads first (its piece's first), or None if its piece is empty."""
        piece = self._pieces[node]
        return self.order[piece[0]] if piece else None

    def places(self, p: int, count: int) -> list[int]:
        """Row-group positions of shard position ``p`` (holding ``count``) still to read this epoch."""
        if self.base is None:
            return list(range(count))
        for s in self.base.spans:
            if (s[0] == p and s[1] >= count > 0) or (s[2] == p and s[3] > count):
                raise self._misfit(self.base)
        return self.base.cut(p, count)

    def row_group(self, p: int, g: int, count: int) -> int:
        """The row group at place ``(p, g)`` of shard position ``p`` holding ``count``."""
        shard = self.order[p]
        if shard not in self._groups or len(self._groups[shard]) != count:
            self._groups[shard] = row_group_order(count, shard, self.epoch, self.shuffle, self.seed)
        return self._groups[shard][g]

    def missing(self, counts: Mapping[int, int]) -> list[int]:
        """Shards left this epoch whose counts ``counts`` lacks (the settlement needs them all)."""
        return [self.order[p] for p in self.left if self.order[p] not in counts]

    def known_left(self, counts: Mapping[int, int]) -> int:
        """``K``: row groups left among the shards whose counts are known."""
        return sum(len(self.places(p, counts[self.order[p]])) for p in self.left if self.order[p] in counts)

    def safe(self, known_left: int) -> int:
        """Row groups of its piece a node may read before the settlement: ``L * (K // R)``."""
        return self.local_world_size * (known_left // self.world_size)

    def piece_places(self, node: int, counts: Mapping[int, int], upto: int | None = None) -> list[Place]:
        """The first ``upto`` places of node ``node``'s piece (all of them: None), fewer if it ends first."""
        out: list[Place] = []
        for p in self._pieces[node]:
            if upto is not None and len(out) >= upto:
                break
            shard = self.order[p]
            if shard not in counts:
                raise NeedCounts([shard])
            out.extend((p, g) for g in self.places(p, counts[shard]))
        return out if upto is None else out[:upto]

    def early_place(self, reader: int, taken: int, counts: Mapping[int, int]) -> Place:
        """The place of ``reader``'s row group number ``taken`` (0-based) before the settlement: only while it
        is within the bound (``NeedCounts`` otherwise; ``settle.reader_place`` is the one to call)."""
        L = self.local_world_size
        j = reader % L + taken * L
        if j >= self.safe(self.known_left(counts)):
            raise NeedCounts(self.missing(counts))
        got = self.piece_places(reader // L, counts, j + 1)
        if len(got) <= j:
            raise NeedCounts(self.missing(counts))
        return got[j]

    def early_cursor(self, taken: int, counts: Mapping[int, int]) -> Cursor:
        """The global position once every reader has taken its first ``taken`` row groups, before the
        settlement: only while ``taken <= K // R`` (else ``NeedCounts`` for the rest; ``settle.cursor_after``
        is the one to call)."""
        base = self.base or Cursor(self.epoch, shards=len(self.order))
        if taken <= 0:
            return base
        if taken > self.known_left(counts) // self.world_size:
            raise NeedCounts(self.missing(counts))
        k = self.local_world_size * taken
        spans: list[Span] = list(base.spans)
        for n in range(self.nodes):
            got = self.piece_places(n, counts, k)
            if len(got) < k:  # a short piece: its node reads leftovers, dealt at the settlement
                raise NeedCounts(self.missing(counts))
            spans.append(run_span(got[0], got[-1], counts[self.order[got[-1][0]]]))
        return Cursor(self.epoch, merge(spans), base.consumed + self.nodes * k, len(self.order))
