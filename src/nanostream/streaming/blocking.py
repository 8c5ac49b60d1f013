"""``BatchIterator``: a stream driven from code without an event loop, one step at a time on a ``LoopThread``.

``close()``, ``with``, exhaustion, an error, or the iterator being garbage collected (``break`` out of
a ``for``) stop the stream and join the thread.
"""

from __future__ import annotations

import weakref
from typing import Any

from ..concurrency import LoopThread
from .plan import Batch


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
