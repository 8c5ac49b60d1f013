"""``stream()`` and ``iter_batches()``: the front door, where a call's arguments become sources and ``Options``;
``MixStream``, a weighted mix of sources (each source's own stream, interleaved by a byte-share ``Schedule``;
docs/mixing.md); ``BatchIterator``, a stream driven from code without an event loop on a ``LoopThread``.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from ..concurrency import LoopThread
from ..config import Config, parse_cache_limit
from ..errors import ConfigError, DatasetError, ShardError
from ..retry import RetryPolicy
from ..sources.resolve import Source, check_folders, normalized, sources_of
from .plan import Batch, Chunk, Options, ReadAhead
from .ranks import Ranks
from .single import Batches, Stream, open_stream, resume_start

__all__ = ["BatchIterator", "iter_batches", "stream"]

Data = str | Path | Source | list[Source] | None


def stream(split: str = "train", *, data: Data = None, epochs: int | None = 1, shuffle: bool = False,
           seed: int = 0, ranks: Ranks | None = None, read_ahead: ReadAhead | None = None,
           cache_limit: int | str | None = None, retry: RetryPolicy | None = None,
           resume: Mapping[str, Any] | None = None, config: Config | None = None) -> Stream | MixStream:
    """Batches of ``split`` ("train" or "val"): the documents of one row group each, read while downloading.

    ``data``: None (the default dataset), a built-in name, a ``hf://``/``s3://``/``http(s)://`` URL, a folder,
    a ``Source``, or a list of ``Source``s (a weighted mix: ``MixStream``). ``epochs=None`` streams forever.
    ``resume``: a ``state_dict()`` of an earlier stream of the same data. The rest: docs/streaming.md.
    Folders, splits and arguments are checked now; nothing runs before the first ``async for`` step.
    """
    cfg = config or Config.from_env()
    sources = sources_of(data)
    options = Options(split, (ranks or Ranks()).resolved(), epochs, shuffle, seed, read_ahead or ReadAhead(),
                      retry, cfg.cache_limit if cache_limit is None else parse_cache_limit(cache_limit)).check()
    if len(sources) > 1:
        return open_mix(sources, options, cfg, resume)
    start = resume_start(sources[0], options, cfg, resume) if resume is not None else None
    return open_stream(sources[0], options, cfg, start)


def iter_batches(split: str = "train", *, data: Data = None, epochs: int | None = 1, shuffle: bool = False,
                 seed: int = 0, ranks: Ranks | None = None, read_ahead: ReadAhead | None = None,
                 cache_limit: int | str | None = None, retry: RetryPolicy | None = None,
                 resume: Mapping[str, Any] | None = None, config: Config | None = None) -> BatchIterator:
    """``stream()`` for code without an event loop: the same arguments, a blocking iterator. Its stream runs on
    an event loop in a background thread; ``close()`` (or ``with``, or dropping the iterator) stops it."""
    return BatchIterator(stream(split, data=data, epochs=epochs, shuffle=shuffle, seed=seed, ranks=ranks,
                                read_ahead=read_ahead, cache_limit=cache_limit, retry=retry, resume=resume,
                                config=config))


class Schedule:
    """Which source goes next: the one furthest below its share of what was taken so far."""

    def __init__(self, weights: tuple[float, ...], taken: tuple[int, ...] | None = None) -> None:
        self.weights = weights
        self.taken = list(taken) if taken is not None else [0] * len(weights)

    def next(self) -> int:
        total = sum(self.taken)
        gaps = [w * total - t for w, t in zip(self.weights, self.taken, strict=True)]
        return gaps.index(max(gaps))  # ties: the first

    def add(self, source: int, amount: int) -> None:
        self.taken[source] += amount


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
        self.streams, self.epochs = streams, epochs
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
        self.schedule.add(k, int(pc.sum(pc.binary_length(chunk.column)).as_py() or 0))  # text bytes, no strings
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


class BatchIterator:
    """Blocking iterator over a ``Stream`` or ``MixStream`` (see ``iter_batches``); also a context manager."""

    def __init__(self, s: Any, loop: LoopThread | None = None) -> None:
        """``loop``: a loop thread shared with other streams, which its owner closes (None: one of its own)."""
        self._stream = s
        self._shared = loop
        self._loop: LoopThread | None = loop
        self._finalizer: Any = None
        self._closed = False

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch:
        if self._closed:
            raise StopIteration
        if self._loop is None:  # the finalizer holds the loop, never this iterator
            self._loop = LoopThread("nanostream-loop", on_close=self._stream.aclose)
            self._finalizer = weakref.finalize(self, self._loop.close)
        try:
            chunk = self._loop.run(self._stream.next_chunk())
        except StopAsyncIteration:
            self.close()
            raise StopIteration from None
        except BaseException:
            self.close()
            raise
        return chunk.batch()  # strings made on the caller's thread, which will also free them

    def state_dict(self) -> dict[str, Any]:
        """The stream's ``state_dict()``: after the last batch this iterator returned."""
        return self._stream.state_dict()

    def close(self) -> None:
        """Stop the stream and join its thread (also done when the iterator is garbage collected)."""
        if self._shared is not None and not self._closed:
            self._shared.run(self._stream.aclose())
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
