"""A weighted mix of sources as one stream: each source's own stream, interleaved by a byte-share schedule.

``stream(split, mix=[Source(...), ...])`` returns a ``MixStream``. Every source keeps its
own order: its shuffle per epoch and its own deal of row groups to ranks and nodes,
with equal work per source (``order.py``), so a node downloads only its share of each
source. The mix yields whole row groups (``Batch.source`` says whose); the next one
comes from the source furthest below its share of the text yielded so far, in UTF-8
bytes (``Schedule``: deterministic, ties to the first source). A source that runs out
starts its next epoch, in its own next order, while the others go on (a small source
is upsampled); with ``epochs=N`` the mix ends once every source has completed ``N``
epochs, ``epochs=None`` never. Ranks follow the same rule on their own row groups, so
with documents of different sizes their batch counts may differ by a few: equal
batches on every rank are ``TokenDataset``'s (it mixes by rows of tokens).

Resume: ``ms.state()`` after a batch is a ``MixStart`` (each source's ``Position`` and
the bytes per source); ``stream(..., mix=..., start=state)`` continues exactly after
it (same layout). ``ms.cursor()`` gives each source's global ``Cursor`` instead, to
resume at another world size; changed weights at a resume take effect from there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pyarrow.compute as pc

from ..config import Config
from ..errors import ConfigError, DatasetError, ShardError
from ..sources.spec import Source, check_folders, normalized
from .order import Cursor
from .plan import Batch, Chunk, Options, Position
from .single import Stream, source_plan


@dataclass(frozen=True)
class MixStart:
    """Where a mix is: per source, the position after its last batch (a ``Position``, or a ``Cursor`` for
    a resume at another world size, or None: not started), and the text bytes each source has yielded."""

    positions: tuple[Position | Cursor | None, ...]
    yielded: tuple[int, ...]

    def to_list(self) -> list:
        """Plain lists, for checkpoints."""
        out = []
        for p in self.positions:
            if isinstance(p, Cursor):
                out.append(["cursor", p.to_list()])
            elif isinstance(p, Position):
                out.append(["position", [p.epoch, p.shard, p.row_group, p.taken,
                                         None if p.base is None else p.base.to_list()]])
            else:
                out.append(None)
        return [out, list(self.yielded)]

    @classmethod
    def from_list(cls, value: list) -> MixStart:
        raw, yielded = value
        positions: list[Position | Cursor | None] = []
        for item in raw:
            if item is None:
                positions.append(None)
            elif item[0] == "cursor":
                positions.append(Cursor.from_list(item[1]))
            else:
                e, s, g, t, base = item[1]
                positions.append(Position(int(e), int(s), int(g), int(t), None if base is None else Cursor.from_list(base)))
        return cls(tuple(positions), tuple(int(b) for b in yielded))


class Schedule:
    """Which source goes next: the one furthest below its share of what was taken so far."""

    def __init__(self, weights: tuple[float, ...], taken: tuple[int, ...] | None = None) -> None:
        self.weights = weights
        self.taken = list(taken) if taken is not None else [0] * len(weights)

    def next(self) -> int:
        total = sum(self.taken)
        deficits = [w * total - t for w, t in zip(self.weights, self.taken, strict=True)]
        return max(range(len(deficits)), key=lambda i: (deficits[i], -i))

    def add(self, source: int, amount: int) -> None:
        self.taken[source] += amount


def text_bytes(chunk: Chunk) -> int:
    """UTF-8 bytes of the documents of a row group (its text column), without making Python strings."""
    n = pc.sum(pc.binary_length(chunk.column)).as_py()
    return int(n or 0)


def mix_stream(sources: tuple[Source, ...], opts: Options, cfg: Config, start: Any) -> MixStream:
    """The ``MixStream`` of ``sources`` (each source's stream endless: the mix counts the epochs)."""
    if start is not None and not isinstance(start, MixStart):
        raise ConfigError(f"start= of a mix must be a MixStart (MixStream.state() or .cursor()), got {start!r}")
    if start is not None and len(start.positions) != len(sources):
        raise ConfigError(f"start= holds {len(start.positions)} sources, the mix has {len(sources)}")
    endless = replace(opts, epochs=None)
    plans = []
    for k, src in enumerate(sources):
        try:
            plans.append(source_plan(src, endless, cfg, start.positions[k] if start is not None else None))
        except (ConfigError, ShardError) as exc:
            raise DatasetError(f"mix source {k} ({src.label}): {exc}") from exc
    check_folders(sources, [p.data_dir for p in plans])
    return MixStream([Stream(p) for p in plans], sources, opts.epochs, start)


class MixStream:
    """Async iterator of the ``Batch``es of a mix; also an async context manager. Single use."""

    def __init__(self, streams: list[Stream], sources: tuple[Source, ...], epochs: int | None,
                 start: MixStart | None) -> None:
        self.streams, self.sources, self.epochs = streams, sources, epochs
        self.weights = normalized(sources)
        self.schedule = Schedule(self.weights, start.yielded if start is not None else None)
        self.positions: list[Position | Cursor | None] = list(start.positions) if start is not None \
            else [None] * len(streams)
        self._done: list[int] | None = None  # epochs each source has completed

    def __aiter__(self) -> MixStream:
        return self

    async def __anext__(self) -> Batch:
        return (await self.next_chunk()).batch()

    async def next_chunk(self) -> Chunk:
        """The next row group of the mix, still in Arrow memory (``chunk.source`` says whose)."""
        if self._done is None:  # epochs each source has completed at the start
            self._done = [p.epoch if p is not None else 0 for p in self.positions]
        if self.epochs is not None and min(self._done) >= self.epochs:
            raise StopAsyncIteration
        k = self.schedule.next()
        chunk = await self.streams[k].next_chunk()
        if chunk.epoch > self._done[k]:  # its epoch ended without a last row group saying so (a resume there)
            self._done[k] = chunk.epoch
            if self.epochs is not None and min(self._done) >= self.epochs:
                raise StopAsyncIteration  # the mix was over before this row group
        self.schedule.add(k, text_bytes(chunk))
        self.positions[k] = Position(chunk.epoch, chunk.shard, chunk.row_group, chunk.taken, chunk.base)
        if chunk.last:
            self._done[k] = chunk.epoch + 1
        return Chunk(chunk.column, chunk.path, chunk.shard, chunk.row_group, chunk.epoch, chunk.taken, chunk.base,
                     source=k)

    def state(self) -> MixStart:
        """The position after the last batch yielded: ``start=`` resumes right after it (same layout)."""
        return MixStart(tuple(self.positions), tuple(self.schedule.taken))

    def cursor(self) -> MixStart:
        """``state()`` with each source's global ``Cursor``: ``start=`` resumes at any world size."""
        cursors = tuple(p if isinstance(p, Cursor) else s.cursor(p)  # p: a Position, or None (not started)
                        for s, p in zip(self.streams, self.positions, strict=True))
        return MixStart(cursors, tuple(self.schedule.taken))

    async def aclose(self) -> None:
        for s in self.streams:
            await s.aclose()

    async def __aenter__(self) -> MixStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def stats(self) -> dict[str, Any]:
        """Each source's stream counters, and the text bytes each has yielded."""
        return {"sources": [s.stats for s in self.streams], "bytes": list(self.schedule.taken)}
