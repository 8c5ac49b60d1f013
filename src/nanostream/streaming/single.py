"""One source's ``Stream``: its plan (``source_plan``), its lifecycle, and what it can tell before it starts.

``Stream`` is the async iterator ``stream()`` returns for one dataset (and each source
of a ``MixStream`` is one): ``async for``, ``break``, cancel, ``aclose``, ``async with``
stop its producer (``producer.py``) and downloads. Iterating never waits for the whole
census. Asked before or during iteration, ``epoch_length`` and ``epoch_plan`` need every
row-group count of the epoch (what is not known yet is counted then: local footers, the
census file, the count sharers, else remote footers at the quota's pace; ``prepare`` does
it without blocking the event loop); ``cursor`` needs only the counts of what was read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ..concurrency import run_sync
from ..config import Config
from ..errors import ConfigError
from ..sources.counts import CountBook, book_for
from ..sources.resolve import split_indices
from ..sources.spec import Source
from .cache.usage import filesystem_bytes
from .cursor import Cursor
from .epoch import resume_index
from .order import EpochDeal, NeedCounts, shard_order
from .plan import Batch, Chunk, Options, Plan, Position
from .producer import Producer, _End
from .settle import EpochPlan, cursor_after, reader_place, settle
from .supply import ShardSource


def source_plan(src: Source, opts: Options, cfg: Config, start: Position | Cursor | None) -> Plan:
    """The plan of one source: its folder and catalog (pinned), its split's files, the layout, its disk
    budget (checked now when every size is known, else once the producer learned them)."""
    folder, cat = src.resolve(cfg, opts.split)
    limit = None
    if opts.cache_limit is not None:
        limit = opts.cache_limit.resolve(filesystem_bytes(folder))
        if src.num_shards is None and opts.split == "train" and any(f.url for f in cat.files):
            raise ConfigError(f"cache_limit makes {folder} a cache whose files come and go, so its train split "
                              f"cannot be the files present: pass num_shards=N (its record lists "
                              f"{len(cat.split('train'))} train files)")
    shards = split_indices(cat, folder, opts.split, src.num_shards)
    if start is not None:
        _check_start(start, shards, opts.epochs)
    strays = sorted({s for s, _ in opts.replay} - set(shards))
    if strays:
        raise ConfigError(f"replay names shard {strays[0]} ({cat.files[strays[0]].path if strays[0] < len(cat.files) else '?'}),"
                          f" which is not in this split of {folder}: resume with the same data")
    plan = Plan(data_dir=folder, split=opts.split, shards=shards, catalog=cat, text_column=cat.text_column,
                token=cfg.hf_token, token_hosts=cfg.token_hosts, s3_endpoint=cfg.s3_endpoint, rank=opts.rank,
                world_size=opts.world_size, epochs=opts.epochs, shuffle=opts.shuffle, seed=opts.seed, start=start,
                queue_size=opts.queue_size, fetch_ahead=opts.fetch_ahead, fetch_workers=opts.fetch_workers,
                retry=opts.retry, local_world_size=opts.local_world_size, drop_last=opts.drop_last,
                cache_limit=limit, cache_policy=cfg.cache_policy, sharer=opts.sharer,
                replay=tuple(sorted(set(opts.replay))))
    if limit is not None:
        sizes = plan.split_sizes()
        if None not in sizes:
            plan.check_cache(sizes)
    return plan


def _check_start(start: Position | Cursor, shards: tuple[int, ...], epochs: int | None) -> None:
    """What can be checked before the row groups are counted (the rest: ``producer._resume_index``)."""
    if isinstance(start, Position):
        if start.shard not in shards:
            raise ConfigError(f"resume position {start}: shard {start.shard} is not in this split "
                              f"({len(shards)} shards); resume with the same data_dir/num_shards")
    elif not isinstance(start, Cursor):
        raise ConfigError(f"start must be a Position (batch.position) or a Cursor (Stream.cursor), got {start!r}")
    if start.epoch < 0 or (epochs is not None and start.epoch >= epochs):
        raise ConfigError(f"resume position {start}: epoch {start.epoch} is outside 0..{epochs}")


async def _learn_sizes(p: Plan, sizes: list[int | None]) -> list[int | None]:
    async with ShardSource(p.data_dir, p.catalog, access=p.access(), workers=p.fetch_workers, retry=p.retry) as src:
        return await src.learn_sizes(p.shards, sizes)


async def _consume(producer: Producer) -> AsyncIterator[Chunk]:
    """The async generator behind ``Stream``: starts the producer, stops it however iteration ends."""
    task = asyncio.create_task(producer.run(), name="nanostream-producer")
    try:
        while True:
            item = await producer.queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()


class Stream:
    """Async iterator of ``Batch``es; also an async context manager. Single use.

    Breaking out of ``async for`` stops the producer (and downloads) as soon as the
    stream is garbage: CPython does that at once, through the event loop's async
    generator finalizer. ``aclose()``/``async with`` do it before returning.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.book: CountBook = book_for(plan.data_dir, plan.files, plan.sharer, plan.scope())
        self._producer = Producer(plan, self.book)
        self._agen: Any = None
        self._epoch_plan: tuple[Any, EpochPlan] | None = None
        self._deal: tuple[Any, EpochDeal] | None = None

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Batch:
        return (await self.next_chunk()).batch()

    async def next_chunk(self) -> Chunk:
        """The next row group still in Arrow memory (``chunk.batch()`` makes the ``Batch``)."""
        if self._agen is None:
            self._agen = _consume(self._producer)
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        if self._agen is not None:
            await self._agen.aclose()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def qsize(self) -> int:
        """Batches read ahead and waiting for the consumer (at most ``queue_size``)."""
        return self._producer.queue.qsize()

    @property
    def stats(self) -> dict[str, int]:
        """Counters: batches produced, the largest queue seen, shards downloaded by this stream, files it
        evicted under ``cache_limit``."""
        src = self._producer.source
        budget = src.budget if src else None
        return {"produced": self._producer.produced, "max_queued": self._producer.max_queued,
                "queue_size": self.plan.queue_size, "fetched": src.fetched if src else 0,
                "evicted": budget.evicted if budget else 0}

    def cache_minimum(self) -> int:
        """The smallest ``cache_limit`` (bytes) this stream works with on its folder as it is now: what a
        smaller one fails with. Sizes the catalog does not list are taken from local files, else asked
        (HEAD, up to 16; the rest estimated from the largest), as the stream itself does."""
        p = self.plan
        sizes = p.split_sizes()
        if None in sizes and p.access() is not None:
            sizes = run_sync(_learn_sizes(p, sizes))
        return p.cache_needs(sizes).minimum

    def order(self, epoch: int) -> list[int]:
        """The shard order of ``epoch`` (every rank uses the same)."""
        return shard_order(self.plan.shards, epoch, self.plan.shuffle, self.plan.seed)

    async def prepare(self) -> dict[int, int]:
        """Count every shard's row groups now (see ``nanostream.sources.counts``), without blocking the event
        loop: ``epoch_length``/``epoch_plan`` then answer at once. Iterating never needs it."""
        p = self.plan
        return await self.book.require(list(p.shards), p.access(), p.retry)

    def _require(self, shards: tuple[int, ...] | list[int]) -> None:
        """Learn the counts of ``shards`` (blocking; footers read remotely at the quota's pace if need be)."""
        p = self.plan
        if any(self.book.get(s) is None for s in shards):
            run_sync(self.book.require(list(shards), p.access(), p.retry))

    def _first(self, epoch: int | None, base: Cursor | None) -> tuple[int, Cursor | None]:
        p = self.plan
        first = p.start.epoch if p.start is not None else 0
        epoch = first if epoch is None else epoch
        if base is None and epoch == first:
            base = p.start_base()
        return epoch, base

    def epoch_deal(self, epoch: int | None = None, base: Cursor | None = None) -> EpochDeal:
        """Epoch ``epoch``'s deal before the counts (default: the first this stream reads, from its start)."""
        key = self._first(epoch, base)
        if self._deal is None or self._deal[0] != key:
            while True:
                try:
                    self._deal = (key, self.plan.epoch_deal(*key, self.book.snapshot()))
                    break
                except NeedCounts as exc:  # a cursor saved before spans
                    self._require(exc.shards)
        return self._deal[1]

    def epoch_plan(self, epoch: int | None = None, base: Cursor | None = None) -> EpochPlan:
        """Who reads what in ``epoch`` (default: the first this stream reads, from its start), settled: every
        count of the epoch is learned first if it is not known (blocking)."""
        key = self._first(epoch, base)
        if self._epoch_plan is None or self._epoch_plan[0] != key:  # one kept: cursor() per step is cheap
            deal = self.epoch_deal(*key)
            self._require(deal.missing(self.book.snapshot()))
            self._epoch_plan = (key, settle(deal, self.book.snapshot()))
        return self._epoch_plan[1]

    def epoch_length(self, epoch: int | None = None) -> int:
        """Row groups (batches) every rank reads in ``epoch`` -- the same on every rank.

        Default: the first epoch this stream reads, counted from its ``start``. Needs every count of the
        epoch (see ``epoch_plan``). Raises ConfigError if some rank would read none."""
        return self.epoch_plan(epoch).length

    def cursor(self, position: Position | None = None, *, taken: int | None = None) -> Cursor:
        """The global position after ``position`` (default: the start), assuming every rank has taken
        ``taken`` row groups of the epoch (default: as many as this one at ``position``).

        Every rank computes the same cursor from the same ``taken``. Ranks that are not level
        (a packer takes row groups at its own pace) must agree on the smallest ``taken`` among
        them, or a resume may skip row groups; the row groups the others took beyond it are
        read again. Needs the counts of what was read (and every count of the epoch only past
        the bound: near its end)."""
        if position is None:
            start = self.plan.start
            if isinstance(start, Cursor):
                return start
            if start is None:
                return Cursor(0, shards=len(self.plan.shards))
            position = start
        deal = self.epoch_deal(position.epoch, position.base)
        if taken is None:
            taken = self._taken(deal, position)
        while True:
            plan = self._settled(position.epoch, position.base)
            if plan is not None:  # kept: a cursor per checkpoint costs no new plan
                return plan.cursor_after(taken)
            try:
                return cursor_after(deal, taken, self.book.snapshot())
            except NeedCounts as exc:
                self._require(exc.shards)

    def _settled(self, epoch: int, base: Cursor | None) -> EpochPlan | None:
        """The epoch's settled plan if every count of it is known already (no waiting), else None."""
        key = self._first(epoch, base)
        if self._epoch_plan is not None and self._epoch_plan[0] == key:
            return self._epoch_plan[1]
        if self.epoch_deal(*key).missing(self.book.snapshot()):
            return None
        return self.epoch_plan(*key)

    def _taken(self, deal: EpochDeal, position: Position) -> int:
        """How many row groups this reader had taken at ``position`` (checked against the deal)."""
        rank = self.plan.rank
        while True:
            counts = self.book.snapshot()
            try:
                if position.taken > 0:
                    plan = self._settled(position.epoch, position.base)
                    p, g = plan.places(rank)[position.taken - 1] if plan is not None else \
                        reader_place(deal, rank, position.taken - 1, counts)
                    if (deal.order[p], deal.row_group(p, g, counts[deal.order[p]])) == (position.shard,
                                                                                         position.row_group):
                        return position.taken
                break
            except NeedCounts as exc:
                self._require(exc.shards)
            except IndexError:
                break
        return resume_index(self.epoch_plan(position.epoch, position.base).sequence(rank), position,
                             self.plan.data_dir)
