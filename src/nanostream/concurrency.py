"""Async helpers every layer shares: the one sync bridge (``LoopThread``, ``run_sync``), the one cancel-safe
hand-off (``hand_off``), ``run_each``, ``task_group`` and ``cancel_and_wait``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from ._compat import TaskGroup

T = TypeVar("T")


class LoopThread:
    """An event loop on a thread of its own that sync code hands coroutines to (``run``), one call at a time,
    for as long as it needs; ``close()`` cancels what still runs there, awaits ``on_close()``, joins it."""

    def __init__(self, name: str, on_close: Callable[[], Awaitable[Any]] | None = None) -> None:
        self.on_close = on_close
        self.loop: asyncio.AbstractEventLoop  # set by the thread before ``ready``
        self._stop = asyncio.Event()  # bound to the thread's loop by its first wait
        self._lock = threading.Lock()  # run() and close() from different threads
        self._closed = False
        self._calls: set[concurrent.futures.Future[Any]] = set()
        ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main(ready)), name=name, daemon=True)
        self.thread.start()
        ready.wait()

    async def _main(self, ready: threading.Event) -> None:
        self.loop = asyncio.get_running_loop()
        ready.set()
        try:
            await self._stop.wait()
        finally:
            me = asyncio.current_task()
            running = [t for t in asyncio.all_tasks() if t is not me]
            for task in running:  # a call still waiting (close() from another thread)
                task.cancel()
            if running:
                await asyncio.wait(running)
            if self.on_close is not None:
                await self.on_close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this loop and wait for its result; a Ctrl-C meanwhile, or ``close()`` from another
        thread (before or during the call), cancels it (``concurrent.futures.CancelledError``)."""
        with self._lock:
            if self._closed:
                coro.close()
                raise concurrent.futures.CancelledError
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._calls.add(future)
        try:
            return future.result()
        finally:
            with self._lock:
                self._calls.discard(future)
            future.cancel()  # a no-op once done; stops the coroutine if we were interrupted

    def close(self) -> None:
        with self._lock:
            self._closed = True
            calls = list(self._calls)
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        if threading.current_thread() is not self.thread:
            self.thread.join()
            for future in calls:  # handed over as the loop stopped, so never started: its caller must not wait on
                future.cancel()


def run_sync(coro: Coroutine[Any, Any, T], name: str = "nanostream-sync") -> T:
    """Run ``coro`` on a fresh event loop in its own thread (the caller may be inside a loop)."""
    runner = LoopThread(name)
    try:
        return runner.run(coro)
    finally:
        runner.close()


async def run_each(coros: Iterable[Coroutine[Any, Any, Any]], limit: int | None = None) -> None:
    """Run ``coros`` in one TaskGroup, at most ``limit`` at once; the first failure is raised as it is."""
    room = asyncio.Semaphore(limit) if limit else contextlib.nullcontext()

    async def one(coro: Coroutine[Any, Any, Any]) -> None:
        async with room:
            await coro

    async with task_group() as tasks:
        for coro in coros:
            tasks.create_task(one(coro))


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[TaskGroup]:
    """A TaskGroup whose first failure is raised as it is (not inside an ExceptionGroup)."""
    try:
        async with TaskGroup() as group:
            yield group
    except BaseException as exc:
        first = exc
        while isinstance(getattr(first, "exceptions", None), tuple):
            first = first.exceptions[0]  # type: ignore[attr-defined]
        if first is exc:
            raise
        raise first from first.__cause__


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, even if the caller is cancelled meanwhile (raised after)."""
    task.cancel()
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError


async def hand_off(work: concurrent.futures.Future[T] | asyncio.Future[T], release: Callable[[T], Any]) -> T:
    """The result of ``work`` (a thread's work that makes a resource); a cancelled caller's result goes to
    ``release`` once made."""
    waiting = asyncio.wrap_future(work) if isinstance(work, concurrent.futures.Future) else asyncio.shield(work)
    try:
        return await waiting
    except asyncio.CancelledError:
        def release_made(done: Any) -> None:
            if not done.cancelled() and done.exception() is None:
                release(done.result())

        work.add_done_callback(release_made)
        raise
