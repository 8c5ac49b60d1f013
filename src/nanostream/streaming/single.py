"""One source's ``Stream``: ``open_stream`` (the internal entry ``TokenDataset`` uses too), its lifecycle and
state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

from ..concurrency import cancel_and_wait, run_sync
from ..config import Config
from ..errors import ConfigError
from ..sources.counts import CountBook, book_for
from ..sources.resolve import Source, split_indices
from .cache.usage import filesystem_bytes
from .cached import CachedFiles, check_limit, folder_minimum
from .epoch import taken_at, with_counts
from .files import FolderFiles
from .order import Cursor, EpochDeal, NeedCounts, SettledDeal
from .plan import Batch, Chunk, Options, Plan, Position
from .producer import Producer
from .ranks import Ranks


def open_stream(source: Source, options: Options, config: Config, start: Position | Cursor | None = None) -> Stream:
    """The stream of one source (checked now: its folder, catalog, split and start; nothing runs yet)."""
    folder, cat = source.resolve(config, options.split)
    limit = None
    if options.cache_limit is not None:
        limit = options.cache_limit.resolve(filesystem_bytes(folder))
        if source.num_shards is None and options.split == "train" and any(f.url for f in cat.files):
            raise ConfigError(f"cache_limit makes {folder} a cache whose files come and go, so its train split "
                              f"cannot be the files present: give the Source num_shards=N (its record lists "
                              f"{len(cat.split('train'))} train files)")
    shards = split_indices(cat, folder, options.split, source.num_shards)
    if start is not None and (start.epoch < 0 or (options.epochs is not None and start.epoch >= options.epochs)):
        raise ConfigError(f"resume position {start}: epoch {start.epoch} is outside 0..{options.epochs}")
    named = {s for s, _ in options.replay} | ({start.shard} if isinstance(start, Position) else set())
    strays = sorted(named - set(shards))
    if strays:
        raise ConfigError(f"a resume state names shard {strays[0]}, which is not in this split of {folder}: "
                          "resume with the same data")
    plan = Plan(options, folder, cat, shards, config, start, limit)
    if limit is not None and None not in (sizes := plan.split_sizes()):
        check_limit(plan, sizes)  # else once the producer has learned the sizes
    return Stream(plan)


def resume_start(source: Source, options: Options, config: Config, state: Mapping[str, Any]
                 ) -> Position | Cursor | None:
    """Where a ``Stream.state_dict()`` continues: after its position at the same ``Ranks``, else at the cursor
    every reader had reached."""
    try:
        ranks, position, cursor = Ranks(*state["ranks"]), state["position"], state["cursor"]
        start = Position.from_list(position) if position is not None else None
        base = Cursor.from_list(cursor) if cursor is not None else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"resume= takes a Stream.state_dict(), got {state!r:.200}") from exc
    if start is None or ranks == options.ranks:
        return start or base
    return open_stream(source, replace(options, ranks=ranks), config, start).cursor(start)


async def _consume(producer: Producer) -> AsyncIterator[Chunk]:
    """The async generator behind a ``Stream``: starts the producer, ends it however iteration ends (steps may
    come from different tasks, ``iter_batches``'s, so no TaskGroup of theirs can own it)."""
    task = asyncio.create_task(producer.run(), name="nanostream-producer")
    try:
        while (item := await producer.queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        await cancel_and_wait(task)


class Batches:
    """What ``Stream`` and ``MixStream`` share: ``async for`` over their ``next_chunk()``, and ``async with`` (their
    ``aclose()``)."""

    def __aiter__(self) -> Batches:
        return self

    async def __anext__(self) -> Batch:
        return (await self.next_chunk()).batch()

    async def __aenter__(self) -> Batches:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Stream(Batches):
    """Async iterator of the ``Batch``es of one source. Single use. ``break`` stops the producer and its downloads
    once the stream is garbage; ``aclose()`` and ``async with`` do it before returning."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        cat = plan.catalog  # the count sharers' name for the dataset, the same on every node:
        self.book: CountBook = book_for(plan.folder, plan.files, plan.options.sharer,
                                        f"{cat.source or cat.name}@{cat.revision or ''}")
        # the file provider: a cache under a cache_limit if files can be fetched again (else open_stream checked)
        cached = plan.cache_limit is not None and plan.credentials is not None
        self._files = CachedFiles(plan, self.book) if cached else FolderFiles(plan)
        self._producer = Producer(plan, self.book, self._files)
        self._agen: Any = None
        self._last: Position | None = None
        self._settled: SettledDeal | None = None
        self._deal: tuple[Any, Any] = (None, None)  # (epoch, base) and its EpochDeal

    async def next_chunk(self) -> Chunk:
        """The next row group still in Arrow memory (``chunk.batch()`` makes the ``Batch``)."""
        if self._agen is None:
            self._agen = _consume(self._producer)
        chunk = await self._agen.__anext__()
        self._last = chunk.position
        return chunk

    async def aclose(self) -> None:
        if self._agen is not None:
            await self._agen.aclose()

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is after the last batch it yielded, as JSON values, for ``stream(..., resume=)``."""
        r, start = self.plan.ranks, self.plan.start
        position = self._last or (start if isinstance(start, Position) else None)
        cursor = start if position is None and isinstance(start, Cursor) else None
        return {"ranks": [r.rank, r.world_size, r.local_world_size, r.drop_last],
                "position": position.to_list() if position is not None else None,
                "cursor": cursor.to_list() if cursor is not None else None}

    @property
    def stats(self) -> dict[str, int]:
        """Row groups produced, the largest queue seen, files downloaded and evicted for this stream."""
        return {"produced": self._producer.produced, "max_queued": self._producer.max_queued,
                "fetched": self._files.fetched, "evicted": self._files.evicted}

    def cache_minimum(self) -> int:
        """The smallest ``cache_limit`` (bytes) this stream works with on its folder as it is now (blocking)."""
        return folder_minimum(self.plan, run_sync(_split_sizes(self.plan))).size

    async def prepare(self) -> dict[int, int]:
        """Learn every shard's row-group count now (``epoch_length`` then answers at once)."""
        return await self.book.require(list(self.plan.shards), self.plan.credentials, self.plan.options.retry)

    def epoch_length(self, epoch: int | None = None) -> int:
        """Row groups (batches) every rank reads in ``epoch`` (default: the first this stream reads, from its
        start); every count of the epoch is learned first if need be (blocking)."""
        return self.settled_deal(epoch).length

    def settled_deal(self, epoch: int | None = None, base: Cursor | None = None) -> SettledDeal:
        """Who reads what in ``epoch`` (default as ``epoch_length``), the counts learned first if need be."""
        deal = self.epoch_deal(epoch, base)
        if self._settled is None or self._settled.deal is not deal:  # one kept: a cursor per step is cheap
            self._settled = self._answer(lambda counts: SettledDeal(deal, counts))
        return self._settled

    def epoch_deal(self, epoch: int | None = None, base: Cursor | None = None) -> EpochDeal:
        """Epoch ``epoch``'s deal before the counts (default as ``epoch_length``)."""
        first = self.plan.first_epoch()
        epoch = first if epoch is None else epoch
        key = (epoch, self.plan.start_base() if base is None and epoch == first else base)
        if self._deal[0] != key:
            self._deal = (key, self.plan.deal(*key))
        return self._deal[1]

    def cursor(self, position: Position | None = None) -> Cursor:
        """The global position once every reader has taken as many row groups of the epoch as this one at
        ``position`` (default: the start)."""
        start = self.plan.start
        if position is None:
            if not isinstance(start, Position):
                return start or Cursor(0, shards=len(self.plan.shards))
            position = start
        deal = self.epoch_deal(position.epoch, position.base)
        taken = self._answer(lambda counts: taken_at(deal, self.plan.ranks.rank, position, counts))
        if self._settled is not None and self._settled.deal is deal:
            return self._settled.cursor_after(taken)
        return self._answer(lambda counts: deal.cursor_after(taken, counts))

    def _answer(self, answer: Any) -> Any:
        """``answer(counts)``, learning the counts it needs first (blocking)."""
        try:
            return answer(self.book.snapshot())
        except NeedCounts:
            return run_sync(with_counts(self.book, self.plan, answer))


async def _split_sizes(plan: Plan) -> list[int | None]:
    async with FolderFiles(plan) as files:
        return await files.split_sizes()
