"""A weighted mix of sources as one stream: each source's own stream, interleaved by a byte-share ``Schedule``.

Each source keeps its own order, deal and epochs; docs/mixing.md has the rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pyarrow.compute as pc

from ..config import Config
from ..errors import ConfigError, DatasetError, ShardError
from ..sources.spec import Source, check_folders, normalized
from .plan import Chunk, Options
from .single import Batches, Stream, open_stream, resume_start


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
    return int(pc.sum(pc.binary_length(chunk.column)).as_py() or 0)


def open_mix(sources: tuple[Source, ...], options: Options, config: Config,
             state: Mapping[str, Any] | None = None) -> MixStream:
    """The ``MixStream`` of ``sources`` from ``state`` (a ``MixStream.state_dict()``; None: the start)."""
    if state is not None and (not isinstance(state, Mapping) or len(state.get("sources", ())) != len(sources)):
        raise ConfigError(f"resume= of a mix of {len(sources)} sources takes its MixStream.state_dict(), "
                          f"got {state!r:.200}")
    endless = replace(options, epochs=None)  # the mix counts the epochs
    streams = []
    for k, src in enumerate(sources):
        try:
            start = resume_start(src, endless, config, state["sources"][k]) if state is not None else None
            streams.append(open_stream(src, endless, config, start))
        except (ConfigError, ShardError) as exc:
            raise DatasetError(f"mix source {k} ({src.label}): {exc}") from exc
    check_folders(sources, [s.plan.folder for s in streams])
    return MixStream(streams, sources, options.epochs, state)


class MixStream(Batches):
    """Async iterator of the ``Batch``es of a mix (``batch.source``: whose); also an async context manager."""

    def __init__(self, streams: list[Stream], sources: tuple[Source, ...], epochs: int | None,
                 state: Mapping[str, Any] | None) -> None:
        self.streams, self.sources, self.epochs = streams, sources, epochs
        self.schedule = Schedule(normalized(sources), tuple(state["yielded"]) if state is not None else None)
        self._done = [s.plan.first_epoch() for s in streams]  # epochs each source has completed

    async def next_chunk(self) -> Chunk:
        """The next row group of the mix, still in Arrow memory."""
        if self.epochs is not None and min(self._done) >= self.epochs:
            raise StopAsyncIteration
        k = self.schedule.next()
        chunk = await self.streams[k].next_chunk()
        epoch = chunk.position.epoch
        if epoch > self._done[k]:  # its epoch ended without a last row group saying so (a resume there)
            self._done[k] = epoch
            if self.epochs is not None and min(self._done) >= self.epochs:
                raise StopAsyncIteration  # the mix was over before this row group
        self.schedule.add(k, text_bytes(chunk))
        if chunk.last:
            self._done[k] = epoch + 1
        return replace(chunk, source=k)

    def state_dict(self) -> dict[str, Any]:
        """Each source's ``Stream.state_dict()`` and the text bytes each has yielded: ``resume=`` continues right
        after the last batch (exactly at the same ``Ranks``, elastically at another)."""
        return {"sources": [s.state_dict() for s in self.streams], "yielded": list(self.schedule.taken)}

    async def aclose(self) -> None:
        for s in self.streams:
            await s.aclose()

    @property
    def stats(self) -> dict[str, Any]:
        """Each source's stream counters, and the text bytes each has yielded."""
        return {"sources": [s.stats for s in self.streams], "bytes": list(self.schedule.taken)}
