"""The blocking twin of ``stream()``: ``BatchIterator`` runs a ``Stream`` on a background event loop.

Owns that thread and loop: ``next()`` hands one step of the stream to the loop and
waits for it; ``close()``, ``with``, exhaustion, an error, or the iterator being
garbage collected (``break`` out of a ``for``) stop the stream and join the thread.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, Protocol

from .plan import Batch, Chunk


class Stream(Protocol):
    """What ``BatchIterator`` drives: ``streams.Stream``'s steps (named here so this module
    needs nothing from the one that builds streams)."""

    async def next_chunk(self) -> Chunk: ...

    async def aclose(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...


class _LoopThread:
    """An event loop on a background thread that runs one ``Stream`` (never refers to its iterator)."""

    def __init__(self, s: Stream) -> None:
        self.stream = s
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="nanostream-loop", daemon=True)
        self.thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            # a step still waiting (close() from another thread) is cancelled first: that also
            # closes the stream; then close it in case no step was running
            me = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not me]
            for t in others:
                t.cancel()
            if others:
                await asyncio.wait(others)
            await self.stream.aclose()

    def next(self) -> Batch:
        assert self.loop is not None
        fut = asyncio.run_coroutine_threadsafe(self.stream.next_chunk(), self.loop)
        try:
            chunk = fut.result()
        finally:
            fut.cancel()  # no-op once done; stops the step if we were interrupted (Ctrl-C)
        return chunk.batch()  # strings made on the caller's thread, which will also free them

    def close(self) -> None:
        if self.loop is not None and self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        if threading.current_thread() is not self.thread:
            self.thread.join()


class BatchIterator:
    """Blocking iterator over a ``Stream`` (see ``iter_batches``); also a context manager."""

    def __init__(self, s: Stream) -> None:
        self.plan = getattr(s, "plan", None)  # a mix has one plan per source (``s.streams``)
        self._stream: Stream | None = s
        self._runner: _LoopThread | None = None
        self._finalizer: Any = None
        self._closed = False

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch:
        if self._closed:
            raise StopIteration
        if self._runner is None:
            assert self._stream is not None
            self._runner = _LoopThread(self._stream)
            self._stream = None
            self._finalizer = weakref.finalize(self, self._runner.close)
        try:
            return self._runner.next()
        except StopAsyncIteration:
            self.close()
            raise StopIteration from None
        except BaseException:
            self.close()
            raise

    def state_dict(self) -> dict[str, Any]:
        """The stream's ``state_dict()``: after the last batch this iterator returned."""
        s = self._stream if self._runner is None else self._runner.stream
        assert s is not None
        return s.state_dict()

    def close(self) -> None:
        """Stop the stream and join its thread (also done when the iterator is garbage collected)."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
