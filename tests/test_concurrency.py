"""The one sync bridge, ``LoopThread``: a call never outlives ``close()`` from another thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from nanostream.concurrency import LoopThread


def test_a_call_after_close_raises_at_once_and_its_coroutine_is_closed() -> None:
    runner = LoopThread("nanostream-test")
    assert runner.run(asyncio.sleep(0, result=7)) == 7
    runner.close()
    coro = asyncio.sleep(0)
    with pytest.raises(concurrent.futures.CancelledError):
        runner.run(coro)
    assert coro.cr_frame is None  # closed, so no "never awaited" warning
    assert not runner.thread.is_alive()


def test_close_from_another_thread_ends_a_waiting_call() -> None:
    runner = LoopThread("nanostream-test")
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    closer = threading.Thread(target=lambda: (started.wait(), runner.close()))
    closer.start()
    with pytest.raises(concurrent.futures.CancelledError):
        runner.run(forever())
    closer.join()
    assert not runner.thread.is_alive()
