"""The ``Cursor``: what all ranks together have consumed of an epoch's global order, without row-group counts.

A place in epoch ``e``'s global order (``order.py``) is ``(p, g)``: the ``g``-th row group, in
that shard's row-group order, of the ``p``-th shard of the epoch's shard order. A ``Cursor``
holds the consumed places as ``spans``, half-open ranges ``[(p, g), (q, h))`` in that
lexicographic order (every row group of the shards strictly between ``p`` and ``q`` included),
sorted and disjoint. Each node consumes a prefix of its piece (and of the leftovers it was
dealt), so a cursor is a handful of spans whatever the world size, and it is made and read
without knowing how many row groups the shards hold: only the shards a span starts or ends
in are cut inside. ``consumed`` counts the row groups in the spans and ``shards`` the split's
shards (a resume with other data is refused).

A cursor saved before spans (``[epoch, done, extra, total]``: indices into the global order)
still loads: it keeps that form in ``legacy`` and becomes spans once the counts are known
(``from_indices``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Span = tuple[int, int, int, int]  # consumed [(p, g), (q, h)): shard position p..q of the order, row-group position g..h


@dataclass(frozen=True)
class Cursor:
    """A point of an epoch's global order, the same on every rank and for any world size."""

    epoch: int
    spans: tuple[Span, ...] = ()
    consumed: int = 0  # row groups of this epoch's order consumed by all ranks together
    shards: int = 0  # shards in the split when it was made (0: not recorded)
    legacy: tuple[int, tuple[int, ...], int] | None = field(default=None, compare=False)  # (done, extra, total)

    def to_list(self) -> list:
        """A plain-list form for checkpoints (``torch.load(weights_only=True)``, JSON)."""
        if self.legacy is not None:
            done, extra, total = self.legacy
            return [self.epoch, done, list(extra), total]
        return [self.epoch, [list(s) for s in self.spans], self.consumed, self.shards]

    @classmethod
    def from_list(cls, value: list) -> Cursor:
        epoch, second, third, fourth = value
        if isinstance(second, int):  # the form before spans: global-order indices
            extra = tuple(int(i) for i in third)
            return cls(int(epoch), (), int(second) + len(extra), 0, legacy=(int(second), extra, int(fourth)))
        spans = tuple(_span(s) for s in second)
        return cls(int(epoch), spans, int(third), int(fourth))

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


def from_indices(done: int, extra: tuple[int, ...], sizes: list[int]) -> tuple[Span, ...]:
    """The spans of a cursor saved before spans: global-order indices ``[0, done)`` and ``extra``, with
    ``sizes`` the row groups of each shard position of the epoch's order."""
    starts, at = [], 0
    for n in sizes:
        starts.append(at)
        at += n

    def place(i: int) -> tuple[int, int]:
        lo, hi = 0, len(starts) - 1
        while lo < hi:  # the last shard position starting at or before i (empty shards skipped)
            mid = (lo + hi + 1) // 2
            if starts[mid] <= i:
                lo = mid
            else:
                hi = mid - 1
        while sizes[lo] == 0:
            lo += 1
        return lo, i - starts[lo]

    spans: list[Span] = []
    for a, b in ([(0, done)] if done else []) + [(i, i + 1) for i in extra]:
        p, g = place(a)
        spans.append(run_span((p, g), place(b - 1), sizes[place(b - 1)[0]]))
    return merge(spans)
