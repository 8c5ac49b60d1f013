"""``stream()`` and ``iter_batches()``: the front door, where a call's arguments become sources and ``Options``;
``BatchIterator`` drives a stream from code without an event loop, one step at a time on a ``LoopThread``.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..concurrency import LoopThread
from ..config import Config, parse_cache_limit
from ..retry import RetryPolicy
from ..sources.spec import Source, sources_of
from .mix import MixStream, open_mix
from .plan import Batch, Options, ReadAhead
from .ranks import Ranks
from .single import Stream, open_stream, resume_start

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


class BatchIterator:
    """Blocking iterator over a ``Stream`` or ``MixStream`` (see ``iter_batches``); also a context manager."""

    def __init__(self, s: Any) -> None:
        self.plan = getattr(s, "plan", None)  # a mix has one plan per source (``s.streams``)
        self._stream = s
        self._loop: LoopThread | None = None
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
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
