"""An epoch's settled deal (``SettledDeal``): once every row-group count of the epoch is known, who reads what.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError
from .cursor import Cursor, Span, merge, run_span
from .order import EpochDeal, NeedCounts, Place


def cursor_after(deal: EpochDeal, taken: int, counts: Mapping[int, int]) -> Cursor:
    """The global position once every reader has taken its first ``taken`` row groups of ``deal``."""
    if not deal.missing(counts):
        return SettledDeal(deal, counts).cursor_after(taken)
    return deal.early_cursor(taken, counts)


def reader_place(deal: EpochDeal, reader: int, taken: int, counts: Mapping[int, int]) -> Place:
    """The place of ``reader``'s row group number ``taken`` (0-based; IndexError past its share)."""
    if not deal.missing(counts):
        return SettledDeal(deal, counts).places(reader)[taken]
    return deal.early_place(reader, taken, counts)


class SettledDeal:
    """The settled deal of one epoch: ``sequence(reader)`` lists ``(shard, row_group)`` in read order,
    ``length`` of them for every reader (``counts``: at least every shard left in the epoch)."""

    def __init__(self, deal: EpochDeal, counts: Mapping[int, int]) -> None:
        missing = deal.missing(counts)
        if missing:
            raise NeedCounts(missing)
        self.deal, self.counts, self.epoch, self.base = deal, dict(counts), deal.epoch, deal.base
        self.world_size, self.local_world_size = deal.world_size, deal.local_world_size
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
        tails = [(m, q, len(x)) for m, x in enumerate(pieces) if len(x) > q]
        self._segments: list[list[tuple[int, int, int]]] = []  # per node: (owner node, from, to) of owner's piece
        for n in range(N):
            segs = [(n, 0, min(len(pieces[n]), q))]
            need = q - segs[0][2]
            while need > 0 and tails:
                m, a, b = tails[0]
                k = min(need, b - a)
                segs.append((m, a, a + k))
                need -= k
                tails[0] = (m, a + k, b)
                if a + k == b:
                    tails.pop(0)
            self._segments.append(segs)
        self._pieces = pieces
        self._seqs: dict[int, list[Place]] = {}  # made on demand: a reader needs its own only
        self.dropped = sum(b - a for _, a, b in tails)
        self.padded = R * self.length - left if R * self.length > left else 0

    # -- what each reader reads ----------------------------------------------------------------
    def places(self, reader: int) -> list[Place]:
        """The places ``reader`` reads this epoch, in order (``length`` of them): every ``L``-th of its node's
        stream (its own part, then the leftovers it took); a reader still short repeats its own from its
        start."""
        seq = self._seqs.get(reader)
        if seq is None:
            L = self.local_world_size
            node = [pl for m, a, b in self._segments[reader // L] for pl in self._pieces[m][a:b]]
            own = node[reader % L::L] or node or [pl for x in self._pieces for pl in x]
            seq = (own * (self.length // len(own) + 1))[:self.length] if own else []
            self._seqs[reader] = seq
        return seq

    def sequence(self, reader: int) -> list[tuple[int, int]]:
        d = self.deal
        return [(d.order[p], d.row_group(p, g, self.counts[d.order[p]])) for p, g in self.places(reader)]

    def cursor_after(self, taken: int) -> Cursor:
        """The global position once every reader has taken its first ``taken`` row groups."""
        shards = len(self.deal.order)
        if taken >= self.length:
            return Cursor(self.epoch + 1, shards=shards)
        base = self.base or Cursor(self.epoch, shards=shards)
        spans: list[Span] = list(base.spans)
        consumed = base.consumed
        for segs in self._segments:
            k = self.local_world_size * max(taken, 0)
            for m, a, b in segs:  # the node's own part, then the leftovers it took (padding repeats)
                n = min(k, b - a)
                if k <= 0:
                    break
                if n <= 0:
                    continue
                first, last = self._pieces[m][a], self._pieces[m][a + n - 1]
                spans.append(run_span(first, last, self.counts[self.deal.order[last[0]]]))
                consumed, k = consumed + n, k - n
        return Cursor(self.epoch, merge(spans), consumed, shards)
