"""``stream()`` and ``iter_batches()``: the entrance where a call's arguments become sources and options.

Owns the user-facing arguments: where the data is (one ``Source``: ``mix=``, ``source=``
or the dataset arguments, folded into a ``Source`` here and passed down as that object),
which rank (``default_layout``: torch.distributed, else torchrun's environment), and how
to read (``plan.Options``, checked here once for every source). One source gives a
``Stream`` (``single.py``), a mix a ``MixStream`` (``mix.py``); ``iter_batches`` runs
either on a background event loop (``blocking.py``).

Resume: ``batch.position`` is ``Position(epoch, shard, row_group)``;
``stream(..., start=pos)`` continues with the batch right after it, with the same
rank, world size, ``shuffle`` and ``seed``. ``Stream.cursor(pos)`` is the global
``Cursor`` (``order.py``) every rank computes alike; ``start=cursor`` resumes at any
world size, skipping no row group. A mix resumes from ``MixStream.state()``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..sources.catalog import Catalog
from ..sources.spec import Source, entrance
from .blocking import BatchIterator
from .mix import MixStart, MixStream, mix_stream
from .order import Cursor
from .plan import Options, Position
from .ranks import default_layout
from .single import Stream, source_plan

__all__ = ["Stream", "iter_batches", "stream"]

log = logging.getLogger(__name__)


def stream(
    split: str = "train",
    *,
    mix: list[Source] | None = None,
    source: Source | None = None,
    dataset: str | None = None,
    data_dir: Path | str | None = None,
    num_shards: int | None = None,
    include: str | None = None,
    val: str | None = None,
    text_column: str | None = None,
    base_url: str | None = None,
    max_shard: int | None = None,
    catalog: Catalog | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    local_world_size: int | None = None,
    drop_last: bool = True,
    epochs: int | None = 1,
    shuffle: bool = False,
    seed: int = 0,
    start: Position | Cursor | MixStart | None = None,
    queue_size: int = 8,
    fetch_ahead: int = 2,
    fetch_workers: int = 4,
    retry: Any = None,
    cache_limit: int | str | None = None,
    count_sharer: Any = None,
    replay: Any = (),
    config: Config | None = None,
) -> Stream | MixStream:
    """Batches (the documents of one row group each) of ``split`` ("train" or "val").

    Where the data is: ``mix=[Source(...), ...]`` (a weighted mix: ``MixStream``), one
    ``source=Source(...)``, or the dataset arguments, folded into one ``Source``:
    ``dataset`` is a built-in name, ``hf://datasets/ORG/NAME[@REV][/PATH]`` or
    ``s3://BUCKET/PREFIX/`` (listed once per folder and recorded; ``include`` narrows
    it); ``data_dir`` alone reads any folder of parquet files. ``val`` (a glob) and
    ``text_column`` override the split and column; ``catalog`` skips the listing.
    ``base_url``/``max_shard`` keep the numbered-shard form. The other arguments apply
    to every source of a mix. Nothing starts until the first ``async for`` step;
    arguments, folders and splits are checked now.

    ``cache_limit`` bounds the data folder's bytes on disk (bytes, ``"40GB"``, ``"500MiB"`` or
    ``"75%"`` of its filesystem; default ``NANOSTREAM_CACHE_LIMIT``, else unbounded): files the
    folder's record can fetch again are evicted by the run's known future order, shared with
    every process on the folder (``budget.py``). In a mix each source's folder has this budget.
    A limit below what the work needs is a ConfigError giving the smallest that works.

    ``count_sharer`` (a ``nanostream.sources.counts.CountSharer``) is how the nodes of a run tell
    each other the row-group counts they learn, so each footer is read once per cluster;
    ``TokenDataset`` passes one over torch.distributed's store when a process group is up.

    ``replay`` (one source only): ``(shard, row_group)`` pairs read first, each once, before the
    stream's order, yielded with ``batch.replay`` set (``TokenDataset``'s resume reads the row
    groups of its buffered documents this way, with the stream's own downloads and budget).
    """
    sources = entrance(mix, source=source, dataset=dataset, data_dir=data_dir, num_shards=num_shards,
                       include=include, val=val, text_column=text_column, base_url=base_url, max_shard=max_shard,
                       catalog=catalog)
    rank, world_size, local_world_size = default_layout(rank, world_size, local_world_size)
    cfg = config or Config.from_env()
    opts = Options(split, rank, world_size, local_world_size, drop_last=drop_last, epochs=epochs, shuffle=shuffle,
                   seed=seed, queue_size=queue_size, fetch_ahead=fetch_ahead, fetch_workers=fetch_workers,
                   retry=retry, cache_limit=cfg.cache_limit if cache_limit is None else cache_limit,
                   sharer=count_sharer, replay=tuple((int(s), int(g)) for s, g in replay)).check()
    if len(sources) == 1:
        if isinstance(start, MixStart):
            raise ConfigError("start= is a mix's position (MixStart) but no mix= was given")
        return Stream(source_plan(sources[0], opts, cfg, start))
    if opts.replay:
        raise ConfigError("replay= reads one source's row groups: stream each source of the mix on its own")
    return mix_stream(sources, opts, cfg, start)


def iter_batches(split: str = "train", **kwargs: Any) -> BatchIterator:
    """Blocking twin of ``stream()`` (same arguments) for code without an event loop.

    The stream runs on an event loop in a background thread; ``next()`` waits for
    the next batch. Use it in a ``for`` loop or ``with``; ``close()`` (or dropping
    the iterator) stops the producer, the downloads and the thread.
    """
    return BatchIterator(stream(split, **kwargs))
