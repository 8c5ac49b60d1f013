"""Shard names, the data folder's layout and record, the train/val split, and striding math.

A data folder holds ``shard_XXXXX.parquet`` files directly, plus bookkeeping
whose names all start with ``.nanostream`` (``.nanostream.json`` records which
dataset the folder holds, so readers know the validation shard).

Striding (who reads which row group). Readers are ranks, with DataLoader workers
folded in below them (``worker_stride``: worker ``w`` of ``k`` on rank ``r`` is
reader ``r*k + w`` of ``world*k``; a node of ``L`` ranks then has ``L*k`` readers).
Ranks are numbered node by node, as torchrun does: rank ``r`` is local reader
``r % L`` of node ``r // L``, with ``N = world // L`` nodes.

* One node (``L == world``): row group ``g`` of every shard goes to reader
  ``g % world`` (``strided``/``owns``).
* ``N`` nodes (``deal``): the epoch's shard order is dealt to the nodes -- shard
  ``k`` of the order goes to node ``k % N`` -- and within a node row group ``g``
  of each of its shards goes to local reader ``g % L``. A node downloads only its
  own shards; with ``N == 1`` this is exactly the one-node rule above.

Worked example: 2 nodes x 2 ranks x 2 workers, so world 4 and L 2, folded to 8
readers with 4 per node; the epoch's order is shards A B C D of 8 row groups each.
Node 0 (ranks 0, 1) gets A and C, node 1 (ranks 2, 3) gets B and D. Reader
``j = local_rank*2 + worker`` of a node reads row groups ``g`` with ``g % 4 == j``:

    rank 0 worker 0: A0 A4 C0 C4    rank 2 worker 0: B0 B4 D0 D4
    rank 0 worker 1: A1 A5 C1 C5    rank 2 worker 1: B1 B5 D1 D5
    rank 1 worker 0: A2 A6 C2 C6    rank 3 worker 0: B2 B6 D2 D6
    rank 1 worker 1: A3 A7 C3 C7    rank 3 worker 1: B3 B7 D3 D7

Each node downloads 2 shards, not 4. A split with fewer shards than nodes (the
single validation shard) is read as on one node (``node_count`` returns 1).
Equal work per reader and the resume cursor are ``nanostream.order``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError, MissingShardError

log = logging.getLogger(__name__)

SHARD_RE = re.compile(r"^shard_(\d{5,})\.parquet$")
BOOKKEEPING_PREFIX = ".nanostream"
RECORD_NAME = ".nanostream.json"


def shard_name(index: int) -> str:
    if index < 0:
        raise ConfigError(f"shard index must be >= 0, got {index}")
    return f"shard_{index:05d}.parquet"


def shard_index(name: str) -> int | None:
    """The index in a shard file name, or None if ``name`` is not a shard file."""
    m = SHARD_RE.match(name)
    return int(m.group(1)) if m else None


def list_shards(data_dir: Path) -> list[int]:
    """Sorted indices of the complete shard files in ``data_dir`` (partials never match)."""
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return []
    return sorted(i for i in map(shard_index, names) if i is not None)


@dataclass(frozen=True)
class FolderRecord:
    """What a data folder holds, written by fetch and ``nanostream sample``."""

    base_url: str
    max_shard: int
    dataset: str | None = None
    text_column: str = "text"


def fsync(path: Path) -> None:
    """fsync a file or a folder (a folder: so a rename in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: object, **dump_kwargs: object) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON: a temp file in the same folder, fsync,
    ``os.replace``, fsync the folder. The one way bookkeeping files are written."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{BOOKKEEPING_PREFIX}.tmp.", dir=folder)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, **dump_kwargs)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync(folder)


def write_record(data_dir: Path, record: FolderRecord) -> None:
    """Atomically write ``DIR/.nanostream.json``."""
    write_json(data_dir / RECORD_NAME, asdict(record), indent=2)


def read_record(data_dir: Path) -> FolderRecord | None:
    """The folder's record as a FolderRecord; a catalog record (``record.py``) of numbered shards is
    read as one too (its base URL and validation shard). Prefer ``record.read_catalog``."""
    path = data_dir / RECORD_NAME
    try:
        raw = json.loads(path.read_text())
        if isinstance(raw, dict) and "format" in raw:
            return _from_catalog(raw, path)
        return FolderRecord(**raw)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a valid nanostream record ({exc}); delete it and fetch again") from exc


def _from_catalog(raw: dict, path: Path) -> FolderRecord:
    from .config import DATASETS
    from .record import catalog_from_json

    cat = catalog_from_json(raw)
    val = cat.split("val")[-1].path
    index = shard_index(val)
    if index is None or any(shard_index(f.path) is None for f in cat.files):
        raise ConfigError(f"{path} records {cat.name}, whose files are not shard_XXXXX.parquet: read it with "
                          "nanostream.record.read_catalog")
    return FolderRecord(base_url=str(raw.get("base_url") or ""), max_shard=index,
                        dataset=cat.name if cat.name in DATASETS else None, text_column=cat.text_column)


@dataclass(frozen=True)
class Split:
    """Which shard indices a split reads, and where the validation shard is."""

    train: tuple[int, ...]
    val: int
    guessed_val: bool = False  # True when no record existed and val = last file on disk


def resolve_split(data_dir: Path, *, max_shard: int | None = None, num_shards: int | None = None) -> Split:
    """Decide train and val shards for a folder.

    Val is ``max_shard`` (given, else from the folder's record); without either it is
    the last shard file present (``guessed_val``). Train is ``0..num_shards-1`` when
    given (clamped below val), else every other shard present.
    """
    if max_shard is None:
        record = read_record(data_dir)
        max_shard = record.max_shard if record else None
    present = list_shards(data_dir)
    guessed = False
    if max_shard is None:
        if not present:
            raise MissingShardError(
                f"no shard files and no .nanostream.json in {data_dir}: run `nanostream fetch` first",
                path=data_dir,
            )
        max_shard, guessed = present[-1], True
    if num_shards is not None:
        if num_shards < 0:
            raise ConfigError(f"num_shards must be >= 0, got {num_shards}")
        train = tuple(range(min(num_shards, max_shard)))
    else:
        train = tuple(i for i in present if i != max_shard)
    return Split(train=train, val=max_shard, guessed_val=guessed)


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")


def owns(row_group: int, rank: int, world_size: int) -> bool:
    """Row group ``i`` of every shard belongs to rank ``i % world_size``."""
    return row_group % world_size == rank


def strided(n: int, rank: int, world_size: int) -> range:
    """The row-group indices in ``range(n)`` that ``rank`` of ``world_size`` reads."""
    check_rank(rank, world_size)
    return range(rank, n, world_size)


def worker_stride(rank: int, world_size: int, worker_id: int, num_workers: int) -> tuple[int, int]:
    """Fold DataLoader workers into ranks: worker ``w`` of rank ``r`` is ``r*k + w`` of ``world*k``."""
    check_rank(rank, world_size)
    k = max(1, num_workers)
    check_rank(worker_id, k)
    return rank * k + worker_id, world_size * k


def check_layout(rank: int, world_size: int, local_world_size: int) -> None:
    """Raise ConfigError unless ``rank`` is in the world and the nodes hold equal numbers of ranks."""
    check_rank(rank, world_size)
    if local_world_size < 1 or world_size % local_world_size:
        raise ConfigError(f"local_world_size {local_world_size} does not divide world_size {world_size}: "
                          "every node must run the same number of ranks (and DataLoader workers)")


def node_count(world_size: int, local_world_size: int, num_shards: int) -> int:
    """Nodes the shards are dealt to: ``world // local``, or 1 if the split has fewer shards than nodes."""
    nodes = world_size // local_world_size
    return nodes if num_shards >= nodes else 1


def deal(items: list[tuple[int, int]], world_size: int, local_world_size: int) -> list[list[int]]:
    """Indices into ``items`` (``(shard, row_group)`` pairs in read order, a shard's row groups
    together) that each reader reads, reader by reader. The ``k``-th shard of ``items`` goes to
    node ``k % nodes``; its row group ``g`` to local reader ``g % local_world_size`` there."""
    nodes = world_size // local_world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    k, last = -1, None
    for i, (shard, group) in enumerate(items):
        if shard != last:
            k, last = k + 1, shard
        out[(k % nodes) * local_world_size + group % local_world_size].append(i)
    return out
