"""The producer behind ``stream()``: what comes next, read on a worker thread, into a bounded queue.

Owns the per-epoch order (optionally shuffled, identical on every rank), resume
skipping, the single reader thread (pyarrow releases the GIL while it decodes;
the file reading itself is ``nanostream.reader``), the one re-fetch of a corrupt
shard, and the hand-over of batches (or the error that ended the
stream) to the consumer through an ``asyncio.Queue`` of at most ``queue_size``
row groups, kept in Arrow memory until the consumer takes them. The producer task, its thread and every file it opened are gone when
``run()`` returns, also when it is cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import random
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from .errors import ConfigError, CorruptShardError
from .reader import ShardReader, close_opened, to_texts
from .source import ShardSource, file_id

log = logging.getLogger(__name__)
T = TypeVar("T")
READ_AHEAD = 2  # row-group reads queued on the reader thread beyond the batch being handed over


@dataclass(frozen=True, order=True)
class Position:
    """Where a batch came from; ``stream(..., start=pos)`` resumes right after it."""

    epoch: int
    shard: int
    row_group: int


@dataclass(frozen=True)
class Batch:
    """The documents of one row group and where they came from."""

    texts: list[str] = field(repr=False)  # a row group is ~1000 documents: keep reprs short
    shard: int
    row_group: int
    epoch: int

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.shard, self.row_group)


@dataclass(frozen=True)
class Chunk:
    """A row group as read, still in Arrow memory: what the queue holds. The consumer turns it
    into a ``Batch`` on its own thread (``batch()``), where the strings will also be freed."""

    column: pa.ChunkedArray
    path: Path
    shard: int
    row_group: int
    epoch: int

    def batch(self) -> Batch:
        return Batch(to_texts(self.column, self.path, self.row_group), self.shard, self.row_group, self.epoch)


@dataclass(frozen=True)
class Plan:
    """Everything a producer needs, resolved by ``stream()``."""

    data_dir: Path
    split: str
    shards: tuple[int, ...]
    max_shard: int
    text_column: str
    base_url: str | None
    token: str | None
    rank: int
    world_size: int
    epochs: int | None
    shuffle: bool
    seed: int
    start: Position | None
    queue_size: int
    fetch_ahead: int
    fetch_workers: int
    retry: Any = None


def shard_order(shards: tuple[int, ...], epoch: int, shuffle: bool, seed: int) -> list[int]:
    order = list(shards)
    if shuffle:
        random.Random(f"nanostream:{seed}:{epoch}").shuffle(order)
    return order


def row_group_order(n: int, shard: int, epoch: int, plan: Plan) -> list[int]:
    """The row groups of a shard that ``plan.rank`` reads, in this epoch's order."""
    order = list(range(n))
    if plan.shuffle:
        random.Random(f"nanostream:{plan.seed}:{epoch}:{shard}").shuffle(order)
    return [g for g in order if g % plan.world_size == plan.rank]


class _End:
    """Queue sentinel: the stream is over (``error`` is None) or failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Producer:
    """Reads the plan's row groups in order and puts ``Chunk``s into ``queue``."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.queue: asyncio.Queue[Chunk | _End] = asyncio.Queue(maxsize=plan.queue_size)
        self.produced = 0  # batches put into the queue
        self.max_queued = 0  # largest queue size seen right after a put
        self.source: ShardSource | None = None
        self._left = 0  # row groups of the current shard not yet handed over
        self._executor: ThreadPoolExecutor | None = None

    async def run(self) -> None:
        """The producer task: every batch, then an end marker (carrying the error, if one ended it)."""
        end = _End()
        try:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="nanostream-read")
            p = self.plan
            async with ShardSource(p.data_dir, p.base_url, max_shard=p.max_shard, token=p.token,
                                   workers=p.fetch_workers, ahead=p.fetch_ahead, retry=p.retry) as source:
                self.source = source
                await self._produce(source)
        except Exception as exc:  # delivered to the consumer, raised there
            end = _End(exc)
        finally:
            await self._stop_thread()
        await self.queue.put(end)

    def _epochs(self) -> Iterator[int]:
        first = self.plan.start.epoch if self.plan.start else 0
        return itertools.count(first) if self.plan.epochs is None else iter(range(first, self.plan.epochs))

    async def _produce(self, source: ShardSource) -> None:
        p = self.plan
        start = p.start
        for epoch in self._epochs():
            order = shard_order(p.shards, epoch, p.shuffle, p.seed)
            if start is not None:  # resume: drop the shards consumed before the start position
                order = order[order.index(start.shard):]
            before = self.produced
            for k, shard in enumerate(order):
                after = start.row_group if start is not None and k == 0 else None
                await self._emit_shard(source, epoch, shard, order[k + 1:], after)
            if p.epochs is None and start is None and self.produced == before:  # would spin forever
                raise ConfigError(
                    f"rank {p.rank} of {p.world_size} reads no row group of the {p.split} split in "
                    f"{p.data_dir} (row group i goes to rank i % world_size, and these shards have fewer "
                    "row groups than that): use fewer ranks or DataLoader workers")
            start = None

    async def _emit_shard(self, source: ShardSource, epoch: int, shard: int, upcoming: list[int],
                          after: int | None) -> None:
        """Put the owned row groups of one shard (those after row group ``after``, if given)."""
        done = 0  # row groups of this shard's order already handed over (or skipped on resume)
        refetched = False
        path = await source.get(shard, upcoming)
        while True:
            seen = None
            try:
                handle = await self._open(path)
                seen = handle.seen
                try:
                    order = row_group_order(handle.num_row_groups, shard, epoch, self.plan)
                    if after is not None:
                        done = _resume_index(order, after, path, handle.num_row_groups)
                        after = None
                    self._left = len(order) - done
                    try:
                        await self._emit_row_groups(handle, epoch, shard, order[done:])
                    finally:
                        done = len(order) - self._left  # handed over so far, for a retry after a re-fetch
                    return
                finally:
                    # queued on the reader thread after any read of this file; not awaited (the
                    # thread is drained before the producer ends)
                    self._submit(handle.close).add_done_callback(_retrieve)
            except CorruptShardError as exc:
                if refetched or not source.remote_known:
                    raise
                refetched = True
                log.warning("%s; fetching it again", exc)
                path = await source.replace(shard, seen or file_id(path))

    async def _emit_row_groups(self, handle: ShardReader, epoch: int, shard: int, groups: list[int]) -> None:
        """Read ``groups`` in order and put them. Up to ``READ_AHEAD`` reads wait on the reader thread,
        so it never idles while the loop hands a batch over."""
        pending: collections.deque[asyncio.Future[pa.ChunkedArray]] = collections.deque()
        try:
            for k, group in enumerate(groups):
                while len(pending) < READ_AHEAD and k + len(pending) < len(groups):
                    pending.append(self._submit(handle.read, groups[k + len(pending)]))
                column = await pending.popleft()  # if cancelled: dropped unless started
                await self._put(Chunk(column, handle.path, shard, group, epoch))
                self._left -= 1
        finally:
            for fut in pending:  # reads ahead that nobody will take: drop them if not started
                fut.cancel()
                fut.add_done_callback(_retrieve)

    async def _put(self, chunk: Chunk) -> None:
        await self.queue.put(chunk)
        self.produced += 1
        self.max_queued = max(self.max_queued, self.queue.qsize())

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn`` on the reader thread. One thread, first in first out: a ``close`` queued
        after a read runs after it, so a file is never closed under a read in flight."""
        assert self._executor is not None
        cf: Future[T] = self._executor.submit(fn, *args)
        return asyncio.wrap_future(cf)

    async def _open(self, path: Path) -> ShardReader:
        assert self._executor is not None
        cf: Future[ShardReader] = self._executor.submit(ShardReader, path, self.plan.text_column)
        try:
            return await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            self._executor.submit(close_opened, cf)  # runs after the open: closes what it opened
            raise

    async def _stop_thread(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        fence = asyncio.wrap_future(executor.submit(lambda: None))
        executor.shutdown(wait=False)
        await asyncio.wait([fence])  # the thread has finished everything queued on it
        executor.shutdown(wait=True)  # joins a thread that is already exiting


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Done callback for results nobody awaits: mark their exception as seen."""
    if not fut.cancelled():
        fut.exception()


def _resume_index(order: list[int], after: int, path: Path, n: int) -> int:
    try:
        return order.index(after) + 1
    except ValueError:
        raise ConfigError(f"resume position: row group {after} of {path} is not one this rank reads "
                          f"(the shard has {n} row groups); resume with the same rank, world_size, "
                          "shuffle and seed") from None
