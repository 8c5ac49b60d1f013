"""An epoch's global order (every row group of the split, by ``shuffle``, ``seed`` and epoch only), its deal
before the counts (``EpochDeal``) and once every count is known (``SettledDeal``), and the ``Cursor``: a point
of the order, the same on every rank and for any world size. docs/multi-node.md has the rules.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise

from ..errors import ConfigError
from .ranks import Ranks

Span = tuple[int, int, int, int]  # consumed [(p, g), (q, h)): shard position p..q of the order, row-group position g..h


@dataclass(frozen=True)
class Cursor:
    """A point of an epoch's global order, the same on every rank and for any world size."""

    epoch: int
    spans: tuple[Span, ...] = ()
    consumed: int = 0  # row groups of this epoch's order consumed by all ranks together
    shards: int = 0  # shards in the split when it was made (0: not recorded)

    def to_list(self) -> list:
        """A plain-list form for checkpoints (JSON, ``torch.load(weights_only=True)``)."""
        return [self.epoch, [list(s) for s in self.spans], self.consumed, self.shards]

    @classmethod
    def from_list(cls, value: list) -> Cursor:
        epoch, spans, consumed, shards = value
        return cls(int(epoch), tuple(_span(s) for s in spans), int(consumed), int(shards))

    def covers(self, p: int, g: int) -> bool:
        """Is row group position ``g`` of shard position ``p`` consumed?"""
        return any((s[0], s[1]) <= (p, g) < (s[2], s[3]) for s in self.spans)

    def whole(self, p: int) -> bool:
        """Is every row group of shard position ``p`` consumed (known without its count)?"""
        return any((s[0] < p or (s[0] == p and s[1] == 0)) and p < s[2] for s in self.spans)

    def cut(self, p: int, count: int) -> list[int]:
        """Row-group positions of shard position ``p`` (of ``count``) not consumed, in order."""
        taken = [(s[1] if s[0] == p else 0, s[3] if s[2] == p else count) for s in self.spans if s[0] <= p <= s[2]]
        return [g for g in range(count) if not any(a <= g < b for a, b in taken)]


def _span(raw: list) -> Span:
    p, g, q, h = (int(x) for x in raw)
    if (p, g) >= (q, h) or min(p, g, q, h) < 0:
        raise ValueError(f"not a span of a cursor: {raw!r}")
    return p, g, q, h


def merge(spans: list[Span]) -> tuple[Span, ...]:
    """``spans`` sorted, with overlapping or touching ones joined."""
    out: list[list[int]] = []
    for p, g, q, h in sorted(spans):
        if out and (p, g) <= (out[-1][2], out[-1][3]):
            if (q, h) > (out[-1][2], out[-1][3]):
                out[-1][2:] = [q, h]
        else:
            out.append([p, g, q, h])
    return tuple((a, b, c, d) for a, b, c, d in out)


Place = tuple[int, int]  # (position in the epoch's shard order, position in that shard's row-group order)


class NeedCounts(Exception):
    """The deal needs row-group counts it was not given: the caller learns ``shards``' and asks again."""

    def __init__(self, shards: list[int] | tuple[int, ...]) -> None:
        super().__init__(f"row-group counts needed for {len(shards)} shard(s)")
        self.shards = tuple(shards)


def shuffled(items: Iterable[int], shuffle: bool, *key: int) -> list[int]:
    """``items`` in an epoch's order: as given, or shuffled by ``key`` (seed, epoch, and the shard for its row
    groups)."""
    out = list(items)
    if shuffle:
        random.Random(":".join(map(str, ("nanostream", *key)))).shuffle(out)
    return out


class EpochDeal:
    """Epoch ``epoch``'s deal before the counts: the pieces per node, and the bound."""

    def __init__(self, shards: tuple[int, ...], epoch: int, ranks: Ranks, *, shuffle: bool, seed: int,
                 base: Cursor | None = None) -> None:
        self.epoch, self.shuffle, self.seed, self.drop_last = epoch, shuffle, seed, ranks.drop_last
        self.world_size, self.local_world_size = ranks.world_size, ranks.local_world_size
        self.nodes = ranks.world_size // ranks.local_world_size
        self.order = shuffled(shards, shuffle, seed, epoch)
        base = base if base is not None and base.epoch == epoch else None
        if base is not None and ((base.shards and base.shards != len(self.order))
                                 or any(s[2] > len(self.order) for s in base.spans)):
            raise self._misfit(base)
        self.base = base
        self.left = [p for p in range(len(self.order)) if base is None or not base.whole(p)]
        n, nodes = len(self.left), self.nodes  # node k's piece: n // nodes, and one more for the first n % nodes
        cuts = [k * (n // nodes) + min(k, n % nodes) for k in range(nodes + 1)]
        self.pieces = [self.left[a:b] for a, b in pairwise(cuts)]  # per node: its shard positions, in order
        self._groups: dict[int, list[int]] = {}

    def _misfit(self, base: Cursor) -> ConfigError:
        return ConfigError(f"resume cursor {base} does not fit epoch {self.epoch} of this split ({len(self.order)} "
                           "shards): resume with the same shards, shuffle and seed")

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
            self._groups[shard] = shuffled(range(count), self.shuffle, self.seed, self.epoch, shard)
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
        for p in self.pieces[node]:
            if upto is not None and len(out) >= upto:
                break
            shard = self.order[p]
            if shard not in counts:
                raise NeedCounts([shard])
            out.extend((p, g) for g in self.places(p, counts[shard]))
        return out if upto is None else out[:upto]

    def reader_place(self, reader: int, taken: int, counts: Mapping[int, int]) -> Place:
        """The place of ``reader``'s row group number ``taken`` (0-based; IndexError past its share). Before the
        settlement only while it is within the bound (``NeedCounts`` otherwise)."""
        if not self.missing(counts):
            return SettledDeal(self, counts).places(reader)[taken]
        L = self.local_world_size
        j = reader % L + taken * L
        got = self.piece_places(reader // L, counts, j + 1) if j < self.safe(self.known_left(counts)) else []
        if len(got) <= j:
            raise NeedCounts(self.missing(counts))
        return got[j]

    def cursor_after(self, taken: int, counts: Mapping[int, int]) -> Cursor:
        """The global position once every reader has taken its first ``taken`` row groups. Before the
        settlement only while ``taken <= K // R`` (else ``NeedCounts`` for the rest)."""
        if not self.missing(counts):
            return SettledDeal(self, counts).cursor_after(taken)
        k = self.local_world_size * max(taken, 0)
        if taken > self.known_left(counts) // self.world_size:
            raise NeedCounts(self.missing(counts))
        runs = [self.piece_places(n, counts, k) for n in range(self.nodes)]
        if any(len(run) < k for run in runs):  # a short piece: its node reads leftovers, dealt at the settlement
            raise NeedCounts(self.missing(counts))
        return self.cursor(runs, counts)

    def cursor(self, runs: list[list[Place]], counts: Mapping[int, int]) -> Cursor:
        """The base cursor with ``runs`` consumed too (each a run of consecutive unconsumed places)."""
        base = self.base or Cursor(self.epoch, shards=len(self.order))
        spans, consumed = list(base.spans), base.consumed
        for run in filter(None, runs):
            (p, g), (q, h) = run[0], run[-1]
            end = (q + 1, 0) if h + 1 >= counts[self.order[q]] else (q, h + 1)  # a shard read to its end: the next
            spans.append((p, g, *end))
            consumed += len(run)
        return Cursor(self.epoch, merge(spans), consumed, len(self.order))


class SettledDeal:
    """The settled deal of one epoch: ``sequence(reader)`` lists ``(shard, row_group)`` in read order,
    ``length`` of them for every reader (``counts``: at least every shard left in the epoch)."""

    def __init__(self, deal: EpochDeal, counts: Mapping[int, int]) -> None:
        missing = deal.missing(counts)
        if missing:
            raise NeedCounts(missing)
        self.deal, self.counts = deal, dict(counts)
        R, L, N = deal.world_size, deal.local_world_size, deal.nodes
        pieces = [deal.piece_places(n, counts) for n in range(N)]
        left = sum(len(x) for x in pieces)
        if deal.base is None and left < R:
            raise ConfigError(
                f"reader {R - 1} of {R} ({N} node(s) of {L}; DataLoader workers count as readers) reads no row "
                f"group in epoch {deal.epoch}: {left} row groups for {R} readers. Use fewer ranks or workers, or "
                "more shards")
        self.length = left // R if deal.drop_last else -(-left // R)
        q = L * self.length
        tails = [x[q:] for x in pieces if len(x) > q]  # what nodes with more than their share leave over
        self._streams: list[list[list[Place]]] = []  # per node: its own part, then the leftovers it took
        for x in pieces:
            runs, need = [x[:q]], q - min(len(x), q)
            while need > 0 and tails:
                runs.append(tails[0][:need])
                tails[0] = tails[0][need:]
                need -= len(runs[-1])
                if not tails[0]:
                    tails.pop(0)
            self._streams.append(runs)
        self._pieces = pieces
        self._seqs: dict[int, list[Place]] = {}  # made on demand: a reader needs its own only
        self._runs: dict[int, list[tuple[int, int]]] = {}
        self.dropped = sum(len(t) for t in tails)
        self.padded = max(0, R * self.length - left)

    def places(self, reader: int) -> list[Place]:
        """The places ``reader`` reads this epoch, in order (``length`` of them): every ``L``-th of its node's
        stream (its own part, then the leftovers it took); a reader still short repeats its own from its
        start."""
        seq = self._seqs.get(reader)
        if seq is None:
            L = self.deal.local_world_size
            node = [pl for run in self._streams[reader // L] for pl in run]
            own = node[reader % L::L] or node or [pl for x in self._pieces for pl in x]
            seq = (own * (self.length // len(own) + 1))[:self.length] if own else []
            self._seqs[reader] = seq
        return seq

    def runs(self, reader: int) -> list[tuple[int, int]]:
        """``reader``'s places as runs of one shard: (its row groups taken before the run, the shard), in order."""
        runs = self._runs.get(reader)
        if runs is None:
            runs = self._runs[reader] = []
            for k, (p, _) in enumerate(self.places(reader)):  # shards only: no row-group order
                if not runs or runs[-1][1] != self.deal.order[p]:
                    runs.append((k, self.deal.order[p]))
        return runs

    def sequence(self, reader: int) -> list[tuple[int, int]]:
        d = self.deal
        return [(d.order[p], d.row_group(p, g, self.counts[d.order[p]])) for p, g in self.places(reader)]

    def cursor_after(self, taken: int) -> Cursor:
        """The global position once every reader has taken its first ``taken`` row groups."""
        if taken >= self.length:
            return Cursor(self.deal.epoch + 1, shards=len(self.deal.order))
        runs = []
        for node in self._streams:  # its own part, then the leftovers it took (padding repeats)
            left = self.deal.local_world_size * max(taken, 0)
            for run in node:
                runs.append(run[:left])
                left -= len(runs[-1])
        return self.deal.cursor(runs, self.counts)
