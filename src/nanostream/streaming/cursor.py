"""The ``Cursor``: what all readers together have consumed of an epoch's global order, as spans of places
``[(p, g), (q, h))`` (shard position, row-group position), made and read without the other shards' counts.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def run_span(first: tuple[int, int], last: tuple[int, int], count_of_last: int) -> Span:
    """The span from place ``first`` through place ``last`` (the end normalized to the next shard when
    ``last`` is its shard's final row group)."""
    p, g = last
    end = (p + 1, 0) if g + 1 >= count_of_last else (p, g + 1)
    return (*first, *end)
