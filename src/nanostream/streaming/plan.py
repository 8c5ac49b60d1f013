"""What a stream reads and what it yields: the resolved ``Plan``, ``Position``, ``Batch`` and ``Chunk``.

``stream()`` (``streams.py``) resolves its arguments into one frozen ``Plan`` (folder,
catalog, the split's files, the reader's layout, epochs, order, queue and fetch
settings); the ``Producer`` reads by it. A ``Batch`` is the documents of one row group
with its ``Position``, the point a resume continues after. ``Plan.replay`` names row groups
read first, out of the order (``Batch.replay``): what a ``TokenDataset`` resume reads again
to rebuild its packing buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..config import parse_cache_limit
from ..errors import ConfigError
from ..sources.catalog import Catalog, DataFile
from ..sources.credentials import Credentials
from .cache.minimum import Needs, needs
from .order import Cursor, EpochDeal
from .ranks import check_layout
from .reader import to_texts
from .settle import EpochPlan


@dataclass(frozen=True, order=True)
class Position:
    """Where a batch came from; ``stream(..., start=pos)`` resumes right after it (same world size).

    ``taken`` counts the row groups this reader took in the epoch (this one included) and
    ``base`` is the ``Cursor`` the epoch's dealing started from (None: the epoch's start);
    neither takes part in comparisons. ``Stream.cursor(pos)`` turns a position into the
    global ``Cursor`` for a resume at another world size.
    """

    epoch: int
    shard: int
    row_group: int
    taken: int = field(default=0, compare=False)
    base: Cursor | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Batch:
    """The documents of one row group and where they came from (``source``: its index in a mix;
    ``replay``: one of the plan's ``replay`` row groups, read before the order, at epoch 0)."""

    texts: list[str] = field(repr=False)  # a row group is ~1000 documents: keep reprs short
    shard: int
    row_group: int
    epoch: int
    taken: int = 0
    base: Cursor | None = field(default=None, repr=False)
    source: int = 0
    replay: bool = False

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.shard, self.row_group, self.taken, self.base)


@dataclass(frozen=True)
class Chunk:
    """A row group as read, still in Arrow memory: what the queue holds. The consumer turns it
    into a ``Batch`` on its own thread (``batch()``), where the strings will also be freed."""

    column: pa.ChunkedArray
    path: Path
    shard: int
    row_group: int
    epoch: int
    taken: int = 0
    base: Cursor | None = None
    source: int = 0
    last: bool = False  # the reader's last row group of the epoch
    replay: bool = False  # one of the plan's ``replay`` row groups

    def batch(self) -> Batch:
        return Batch(to_texts(self.column, self.path, self.row_group), self.shard, self.row_group, self.epoch,
                     self.taken, self.base, self.source, self.replay)


@dataclass(frozen=True)
class Options:
    """How a run reads, the same for every source of a mix: ``stream()``'s arguments other than the
    dataset ones, checked (``check``) and with the layout resolved (by ``streams.stream``)."""

    split: str
    rank: int
    world_size: int
    local_world_size: int
    drop_last: bool = True
    epochs: int | None = 1
    shuffle: bool = False
    seed: int = 0
    queue_size: int = 8
    fetch_ahead: int = 2
    fetch_workers: int = 4
    retry: Any = None
    cache_limit: Any = None  # a config.CacheLimit once checked (None: unbounded)
    sharer: Any = None  # a sources.counts.CountSharer: how nodes tell each other row-group counts
    replay: tuple[tuple[int, int], ...] = ()  # (shard, row group) read first (``Plan.replay``)

    def check(self) -> Options:
        if self.split not in ("train", "val"):
            raise ConfigError(f"split must be 'train' or 'val', got {self.split!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1 or None (forever), got {self.epochs}")
        if self.queue_size < 1 or self.fetch_ahead < 0 or self.fetch_workers < 1:
            raise ConfigError(f"need queue_size >= 1, fetch_ahead >= 0, fetch_workers >= 1 "
                              f"(got {self.queue_size}, {self.fetch_ahead}, {self.fetch_workers})")
        check_layout(self.rank, self.world_size, self.local_world_size)
        return replace(self, cache_limit=parse_cache_limit(self.cache_limit))


@dataclass(frozen=True)
class Plan:
    """Everything a producer needs for one source, resolved by ``stream()``."""

    data_dir: Path
    split: str
    shards: tuple[int, ...]  # indices into ``files``: the split's files this stream reads
    catalog: Catalog  # the dataset (``Position.shard`` indexes its files)
    text_column: str
    token: str | None
    token_hosts: frozenset[str]
    s3_endpoint: str | None
    rank: int
    world_size: int
    epochs: int | None
    shuffle: bool
    seed: int
    start: Position | Cursor | None
    queue_size: int
    fetch_ahead: int
    fetch_workers: int
    retry: Any = None
    local_world_size: int = 0  # readers per node as dealt (0: world_size, one node)
    drop_last: bool = True
    cache_limit: int | None = None  # the data folder's disk budget in bytes (None: unbounded)
    cache_policy: str = "belady"
    sharer: Any = None  # a sources.counts.CountSharer, or None
    replay: tuple[tuple[int, int], ...] = ()  # (shard, row group) to read first, before the order

    @property
    def files(self) -> tuple[DataFile, ...]:
        return self.catalog.files

    def scope(self) -> str:
        """The dataset's name for the count sharers: its source and revision, the same on every node."""
        return f"{self.catalog.source or self.catalog.name}@{self.catalog.revision or ''}"

    def access(self) -> Credentials | None:
        """What requests for the files carry (a fresh one per event loop); None if nothing is remote."""
        if not any(f.url for f in self.files):
            return None
        return Credentials(self.token, self.token_hosts, self.s3_endpoint)

    def epoch_plan(self, counts: dict[int, int], epoch: int, base: Cursor | None = None) -> EpochPlan:
        """Epoch ``epoch``'s settled deal (``counts``: at least every shard left in it)."""
        return EpochPlan(self.shards, counts, epoch, shuffle=self.shuffle, seed=self.seed,
                         world_size=self.world_size, local_world_size=self.local_world_size or self.world_size,
                         drop_last=self.drop_last, base=base)

    def epoch_deal(self, epoch: int, base: Cursor | None = None, counts: dict[int, int] | None = None) -> EpochDeal:
        """Epoch ``epoch``'s deal before the counts (``counts``: only for a cursor saved before spans)."""
        return EpochDeal(self.shards, epoch, shuffle=self.shuffle, seed=self.seed, world_size=self.world_size,
                         local_world_size=self.local_world_size or self.world_size, drop_last=self.drop_last,
                         base=base, counts=counts)

    def readers_per_node(self) -> int:
        return self.local_world_size or self.world_size

    def split_sizes(self) -> list[int | None]:
        """Bytes of each file of the split: the catalog's, else the local file's, else None (unknown)."""
        out: list[int | None] = []
        for s in self.shards:
            f = self.files[s]
            if f.size is None:
                try:
                    out.append((self.data_dir / f.path).stat().st_size)
                except FileNotFoundError:
                    out.append(None)
            else:
                out.append(f.size)
        return out

    def cache_needs(self, sizes: list[int | None] | None = None) -> Needs:
        """The smallest ``cache_limit`` that works for this stream (``budget.Needs``). Blocking."""
        return needs(self.data_dir, self.catalog, [self.files[s] for s in self.shards],
                     self.split_sizes() if sizes is None else sizes, self.readers_per_node(), self.fetch_ahead)

    def check_cache(self, sizes: list[int | None] | None = None) -> None:
        """ConfigError, with the sizes and the smallest limit that works, if ``cache_limit`` is below it."""
        if self.cache_limit is None:
            return
        n = self.cache_needs(sizes)
        if self.cache_limit < n.minimum:
            raise ConfigError(n.message(self.cache_limit, self.data_dir, self.readers_per_node(), self.fetch_ahead))

    def start_base(self) -> Cursor | None:
        """The cursor the first epoch's dealing starts from."""
        if isinstance(self.start, Cursor):
            return self.start
        return self.start.base if self.start is not None else None
