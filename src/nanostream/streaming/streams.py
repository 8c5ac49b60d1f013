"""``stream()`` and ``iter_batches()``: row groups of a split as batches, async or blocking.

Owns the user-facing arguments (which folder, which remote, which shards form the
split, which rank), the ``Stream`` async iterator and its lifecycle (``async for``,
``break``, cancel, ``aclose``, ``async with``), and ``BatchIterator``, the blocking
twin that runs the same stream on an event loop in a background thread. The
reading itself is ``nanostream.streaming.producer``; downloading is ``nanostream.streaming.supply``.

Ranks: ``rank``/``world_size``/``local_world_size`` (``default_layout``: torch.distributed,
else torchrun's RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, LOCAL_RANK, GROUP_RANK -- read here,
next to where they are used, like RANK/WORLD_SIZE always were). Shards are dealt to
nodes and row groups to the ranks of a node (``nanostream.streaming.order``); every rank reads
the same number of row groups per epoch (``drop_last``; ``Stream.epoch_length``).

Resume: ``batch.position`` is ``Position(epoch, shard, row_group)``;
``stream(..., start=pos)`` continues with the batch right after it, with the same
rank, world size, ``shuffle`` and ``seed``. ``Stream.cursor(pos)`` is the global
``Cursor`` (``nanostream.streaming.order``) every rank computes alike; ``start=cursor`` resumes at
any world size, skipping no row group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..config import DEFAULT_DATASET, Config
from ..errors import ConfigError, MissingShardError
from ..sources.catalog import Catalog
from ..sources.census import row_group_counts, row_group_counts_blocking
from ..sources.resolve import folder_name, pin_catalog, split_indices
from .blocking import BatchIterator
from .order import Cursor, EpochPlan, shard_order
from .plan import Batch, Chunk, Plan, Position
from .producer import Producer, _End, _resume_index
from .ranks import check_layout, default_layout

__all__ = ["Stream", "iter_batches", "stream"]

log = logging.getLogger(__name__)


def stream(
    split: str = "train",
    *,
    data_dir: Path | str | None = None,
    dataset: str | None = None,
    base_url: str | None = None,
    max_shard: int | None = None,
    num_shards: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    local_world_size: int | None = None,
    drop_last: bool = True,
    epochs: int | None = 1,
    shuffle: bool = False,
    seed: int = 0,
    start: Position | Cursor | None = None,
    queue_size: int = 8,
    fetch_ahead: int = 2,
    fetch_workers: int = 4,
    retry: Any = None,
    config: Config | None = None,
    include: str | None = None,
    val: str | None = None,
    text_column: str | None = None,
    catalog: Catalog | None = None,
) -> Stream:
    """Batches (the documents of one row group each) of ``split`` ("train" or "val").

    ``dataset`` is a built-in name, ``hf://datasets/ORG/NAME[@REV][/PATH]`` or
    ``s3://BUCKET/PREFIX/`` (listed once per folder and recorded; ``include`` narrows
    it); ``data_dir`` alone reads any folder of parquet files. ``val`` (a glob) and
    ``text_column`` override the split and column; ``catalog`` skips the listing.
    ``base_url``/``max_shard`` keep the numbered-shard form. Nothing starts until
    the first ``async for`` step; arguments, folder and split are checked now.
    """
    return Stream(_plan(**locals()))


def _plan(split: str, *, data_dir: Path | str | None, dataset: str | None, base_url: str | None,
          max_shard: int | None, num_shards: int | None, rank: int | None, world_size: int | None,
          local_world_size: int | None, drop_last: bool, epochs: int | None, shuffle: bool, seed: int,
          start: Position | Cursor | None, queue_size: int, fetch_ahead: int, fetch_workers: int, retry: Any,
          config: Config | None, include: str | None, val: str | None, text_column: str | None,
          catalog: Catalog | None) -> Plan:
    if split not in ("train", "val"):
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs must be >= 1 or None (forever), got {epochs}")
    if queue_size < 1 or fetch_ahead < 0 or fetch_workers < 1:
        raise ConfigError(f"need queue_size >= 1, fetch_ahead >= 0, fetch_workers >= 1 "
                          f"(got {queue_size}, {fetch_ahead}, {fetch_workers})")
    cfg = config or Config.from_env()
    name = dataset or (catalog.name if catalog is not None else None)
    name = name or (DEFAULT_DATASET if data_dir is None else None)
    folder = Path(data_dir).expanduser() if data_dir is not None else cfg.data_dir(folder_name(name or ""))
    cat = catalog if catalog is not None else pin_catalog(
        dataset=name, folder=folder, base_url=base_url, max_shard=max_shard, include=include, val=val,
        text_column=text_column, config=cfg)
    remote = any(f.url for f in cat.files)
    if not folder.is_dir() and (not remote or (num_shards is None and split == "train")):
        raise MissingShardError(f"data folder {folder} does not exist: run `nanostream fetch "
                                f"--data-dir {folder}` first, or pass num_shards=", path=folder)
    shards = split_indices(cat, folder, split, num_shards)
    rank, world_size, local_world_size = default_layout(rank, world_size, local_world_size)
    check_layout(rank, world_size, local_world_size)
    if start is not None:
        _check_start(start, shards, epochs)
    return Plan(data_dir=folder, split=split, shards=shards, catalog=cat, text_column=cat.text_column,
                token=cfg.hf_token, token_hosts=cfg.token_hosts, s3_endpoint=cfg.s3_endpoint, rank=rank, world_size=world_size, epochs=epochs,
                shuffle=shuffle, seed=seed, start=start, queue_size=queue_size, fetch_ahead=fetch_ahead,
                fetch_workers=fetch_workers, retry=retry, local_world_size=local_world_size,
                drop_last=drop_last)


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
        self._producer = Producer(plan)
        self._agen: Any = None
        self._epoch_plan: tuple[Any, EpochPlan] | None = None

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
        """Counters: batches produced, the largest queue seen, shards downloaded by this stream."""
        src = self._producer.source
        return {"produced": self._producer.produced, "max_queued": self._producer.max_queued,
                "queue_size": self.plan.queue_size, "fetched": src.fetched if src else 0}

    def order(self, epoch: int) -> list[int]:
        """The shard order of ``epoch`` (every rank uses the same)."""
        return shard_order(self.plan.shards, epoch, self.plan.shuffle, self.plan.seed)

    async def prepare(self) -> dict[int, int]:
        """Count every shard's row groups now (footers; see ``nanostream.sources.census``), without blocking
        the event loop. ``epoch_length``/``cursor`` then answer at once; iteration reuses the counts."""
        if self._producer.counts is None:
            p = self.plan
            self._producer.counts = await row_group_counts(p.data_dir, p.shards, p.files, p.access(),
                                                           retry=p.retry)
        return self._producer.counts

    def epoch_plan(self, epoch: int | None = None, base: Cursor | None = None) -> EpochPlan:
        """Who reads what in ``epoch`` (default: the first this stream reads, from its start).
        Counts the row groups first if ``prepare`` has not (blocking)."""
        p = self.plan
        if self._producer.counts is None:
            self._producer.counts = row_group_counts_blocking(p.data_dir, p.shards, p.files, p.access(),
                                                              retry=p.retry)
        first = p.start.epoch if p.start is not None else 0
        epoch = first if epoch is None else epoch
        if base is None and epoch == first:
            base = p.start_base()
        key = (epoch, base)
        if self._epoch_plan is None or self._epoch_plan[0] != key:  # one kept: cursor() per step is cheap
            self._epoch_plan = (key, p.epoch_plan(self._producer.counts, epoch, base))
        return self._epoch_plan[1]

    def epoch_length(self, epoch: int | None = None) -> int:
        """Row groups (batches) every rank reads in ``epoch`` -- the same on every rank.

        Default: the first epoch this stream reads, counted from its ``start``. Raises
        ConfigError if some rank would read none."""
        return self.epoch_plan(epoch).length

    def cursor(self, position: Position | None = None, *, taken: int | None = None) -> Cursor:
        """The global position after ``position`` (default: the start), assuming every rank has taken
        ``taken`` row groups of the epoch (default: as many as this one at ``position``).

        Every rank computes the same cursor from the same ``taken``. Ranks that are not level
        (a packer takes row groups at its own pace) must agree on the smallest ``taken`` among
        them, or a resume may skip row groups; the row groups the others took beyond it are
        read again."""
        if position is None:
            start = self.plan.start
            if isinstance(start, Cursor):
                return start
            if start is None:
                return Cursor(0, 0, (), self.epoch_plan(0).total)
            position = start
        ep = self.epoch_plan(position.epoch, position.base)
        if taken is None:
            taken = _resume_index(ep.sequence(self.plan.rank), position, self.plan.data_dir)
        return ep.cursor_after(taken)


def iter_batches(split: str = "train", **kwargs: Any) -> BatchIterator:
    """Blocking twin of ``stream()`` (same arguments) for code without an event loop.

    The stream runs on an event loop in a background thread; ``next()`` waits for
    the next batch. Use it in a ``for`` loop or ``with``; ``close()`` (or dropping
    the iterator) stops the producer, the downloads and the thread.
    """
    return BatchIterator(stream(split, **kwargs))
