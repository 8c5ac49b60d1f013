"""An epoch's global order (every row group of the split, by ``shuffle``, ``seed`` and epoch only) and its deal
(``EpochDeal``): who reads which row group before every count is known. docs/multi-node.md has the rules.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from ..errors import ConfigError
from .cursor import Cursor, Span, merge, run_span
from .ranks import Ranks

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
    """Epoch ``epoch``'s deal before the counts: the pieces per node, and the bound."""

    def __init__(self, shards: tuple[int, ...], epoch: int, ranks: Ranks, *, shuffle: bool, seed: int,
                 base: Cursor | None = None) -> None:
        self.epoch, self.shuffle, self.seed, self.drop_last = epoch, shuffle, seed, ranks.drop_last
        self.world_size, self.local_world_size = ranks.world_size, ranks.local_world_size
        self.nodes = ranks.nodes
        self.order = shard_order(tuple(shards), epoch, shuffle, seed)
        base = base if base is not None and base.epoch == epoch else None
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

    # -- what each node has, known without counts -----------------------------------------------
    def piece(self, node: int) -> list[int]:
        """Shard positions of node ``node``'s piece, in order."""
        return self._pieces[node]

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
