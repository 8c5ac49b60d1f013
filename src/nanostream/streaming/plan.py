"""What a stream reads and yields: ``ReadAhead``, ``Options`` (a run's, the same for every source of a mix),
``Plan`` (one source's folder, catalog and split with those options), ``Position``, ``Batch`` and ``Chunk``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..config import CacheLimit, Config
from ..errors import ConfigError
from ..retry import RetryPolicy
from ..sources.catalog import Catalog, DataFile
from ..sources.credentials import Credentials
from .order import Cursor, EpochDeal
from .ranks import Ranks
from .reader import unreadable


@dataclass(frozen=True)
class ReadAhead:
    """How far each stage reads ahead: ``row_groups`` decoded and waiting, ``files`` downloaded beyond the one
    being read, ``connections`` per download, and for ``TokenDataset`` ``tokenized`` row groups and
    finished ``batches``."""

    row_groups: int = 8
    files: int = 2
    connections: int = 4
    tokenized: int = 2
    batches: int = 2


@dataclass(frozen=True)
class Options:
    """How a run reads, the same for every source of a mix (``ranks`` resolved). ``sharer`` (a
    ``sources.counts.CountSharer``) is how nodes tell each other row-group counts: ``TokenDataset``'s."""

    split: str
    ranks: Ranks
    epochs: int | None = 1
    shuffle: bool = False
    seed: int = 0
    read_ahead: ReadAhead = ReadAhead()
    retry: RetryPolicy | None = None
    cache_limit: CacheLimit | None = None
    sharer: Any = None
    replay: tuple[tuple[int, int], ...] = ()  # (shard, row group) read first, before the order (TokenDataset's resume)

    def check(self) -> Options:
        if self.split not in ("train", "val"):
            raise ConfigError(f"split must be 'train' or 'val', got {self.split!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1 or None (forever), got {self.epochs}")
        r = self.read_ahead
        if min(r.row_groups, r.connections, r.tokenized, r.batches) < 1 or r.files < 0:
            raise ConfigError(f"ReadAhead needs files >= 0 and every other field >= 1, got {r}")
        return self


@dataclass(frozen=True)
class Plan:
    """One source's stream: its data folder and catalog, the split's files (``shards``: indices into the catalog's
    files), where it starts, its disk budget in bytes (None: unbounded) and the run's options."""

    options: Options
    folder: Path
    catalog: Catalog
    shards: tuple[int, ...]
    config: Config
    start: Position | Cursor | None = None
    cache_limit: int | None = None

    @property
    def files(self) -> tuple[DataFile, ...]:
        return self.catalog.files

    @property
    def ranks(self) -> Ranks:
        return self.options.ranks

    @cached_property
    def credentials(self) -> Credentials | None:
        """What requests for the files carry (one object per stream); None if nothing is remote."""
        if not any(f.url for f in self.files):
            return None
        c = self.config
        return Credentials(c.hf_token, c.token_hosts, c.s3_endpoint)

    def deal(self, epoch: int, base: Cursor | None = None) -> EpochDeal:
        """Epoch ``epoch``'s deal, from ``base`` (a cursor of that epoch; None: its start)."""
        o = self.options
        return EpochDeal(self.shards, epoch, o.ranks, shuffle=o.shuffle, seed=o.seed, base=base)

    def first_epoch(self) -> int:
        return self.start.epoch if self.start is not None else 0

    def start_base(self) -> Cursor | None:
        """The cursor the first epoch's dealing starts from."""
        return self.start if isinstance(self.start, Cursor) else self.start.base if self.start else None

    def split_sizes(self) -> list[int | None]:
        """Bytes of each file of the split: the catalog's, else the local file's, else None (unknown)."""
        out: list[int | None] = []
        for s in self.shards:
            f = self.files[s]
            try:
                out.append(f.size if f.size is not None else (self.folder / f.path).stat().st_size)
            except FileNotFoundError:
                out.append(None)
        return out


@dataclass(frozen=True, order=True)
class Position:
    """Where a batch came from. ``taken``: the reader's row groups of the epoch so far (this one included);
    ``base``: the cursor the epoch's dealing started from (None: the epoch's start)."""

    epoch: int
    shard: int
    row_group: int
    taken: int = field(default=0, compare=False)
    base: Cursor | None = field(default=None, compare=False, repr=False)

    def to_list(self) -> list:
        return [self.epoch, self.shard, self.row_group, self.taken, None if self.base is None else self.base.to_list()]

    @classmethod
    def from_list(cls, value: list) -> Position:
        epoch, shard, group, taken, base = value
        return cls(int(epoch), int(shard), int(group), int(taken), None if base is None else Cursor.from_list(base))


@dataclass(frozen=True)
class Batch:
    """The documents of one row group, and where they came from (``source``: its index in a mix; ``replay``:
    one of the options' ``replay`` row groups, read before the order)."""

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
    """A row group as read, still in Arrow memory: what the queue holds. ``batch()`` makes the ``Batch`` on the
    consumer's thread, which also frees its strings (made on one thread and freed on another they cost about three
    times as much CPU: allocator arenas). ``last``: the reader's last row group of the epoch."""

    column: pa.ChunkedArray
    path: Path
    position: Position
    source: int = 0
    last: bool = False
    replay: bool = False

    def batch(self) -> Batch:
        p = self.position
        try:
            texts = self.column.to_pylist()
        except (pa.ArrowException, ValueError) as exc:
            raise unreadable(self.path, exc, p.row_group) from exc
        return Batch(texts, p.shard, p.row_group, p.epoch, p.taken, p.base, self.source, self.replay)
