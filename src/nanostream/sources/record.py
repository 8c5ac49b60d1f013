"""The data folder's record of its catalog: ``.nanostream.json`` as JSON, and the migration of old records.

``write_catalog`` writes it atomically (temp file in the folder, fsync, rename,
fsync the folder); ``read_catalog`` reads it back, and reads a record written by
earlier versions (``FolderRecord``: base_url, max_shard, dataset,
text_column) as the numbered catalog it described, with the same validation shard.
File URLs equal to ``base_url/PATH`` are left out of the JSON, so a 10,000-file
record of a Hub repo is about 1.5 MB.
"""

from __future__ import annotations

import collections
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..config import DATASETS
from ..errors import ConfigError, DatasetError, MissingShardError
from ..shards import RECORD_NAME, list_shards, shard_index, write_json
from .catalog import Catalog, DataFile, numbered_catalog

FORMAT = "nanostream-catalog"
VERSION = 2


def _join(base: str, path: str) -> str:
    return f"{base}/{quote(path)}"


def catalog_to_json(cat: Catalog) -> dict[str, Any]:
    """The record as a JSON-ready dict (URLs equal to ``base_url/PATH`` left out)."""
    tails = ((f.url, "/" + quote(f.path)) for f in cat.files)
    bases = collections.Counter(url[: -len(tail)] for url, tail in tails if url.endswith(tail))
    base = bases.most_common(1)[0][0] if bases else ""
    files = []
    for f in cat.files:
        entry: dict[str, Any] = {"path": f.path, "size": f.size}
        if f.sha256:
            entry["sha256"] = f.sha256
        if f.md5:
            entry["md5"] = f.md5
        if f.url != (_join(base, f.path) if base else ""):
            entry["url"] = f.url
        files.append(entry)
    return {"format": FORMAT, "version": VERSION, "name": cat.name, "source": cat.source,
            "revision": cat.revision, "text_column": cat.text_column, "val": cat.val,
            "include": cat.include, "base_url": base, "files": files}


def catalog_from_json(raw: Any) -> Catalog:
    """A record written by ``catalog_to_json``, or by an older version (migrated)."""
    if isinstance(raw, dict) and "max_shard" in raw and "version" not in raw:
        return migrate_record(raw)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DatasetError("not a nanostream catalog record")
    if raw.get("version") != VERSION:
        raise DatasetError(f"catalog record version {raw.get('version')!r} is newer than this nanostream "
                           f"(reads {VERSION}): upgrade nanostream")
    base = raw.get("base_url") or ""
    files = tuple(DataFile(e["path"], e.get("size"), e.get("sha256"), e.get("md5"),
                           e.get("url", _join(base, e["path"]) if base else "")) for e in raw["files"])
    return Catalog(raw["name"], files, raw.get("text_column") or "text", raw.get("val"),
                   raw.get("source") or "", raw.get("revision"), raw.get("include"))


def migrate_record(raw: dict[str, Any]) -> Catalog:
    """Today's FolderRecord (base_url, max_shard, dataset, text_column) as a numbered catalog."""
    try:
        max_shard = int(raw["max_shard"])
        base = str(raw.get("base_url") or "")
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"old folder record is unusable ({exc})") from exc
    name = raw.get("dataset") or base or "folder"
    return numbered_catalog(name, base, max_shard + 1, text_column=raw.get("text_column") or "text")


def read_catalog(data_dir: Path) -> Catalog | None:
    """The catalog recorded in ``DIR/.nanostream.json`` (old records migrated), None if none."""
    path = Path(data_dir) / RECORD_NAME
    try:
        return catalog_from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # DatasetError is a ValueError
        raise DatasetError(f"{path} is not a valid nanostream record ({exc}); delete it and fetch again") from exc


def write_catalog(data_dir: Path, cat: Catalog) -> None:
    """Atomically write ``DIR/.nanostream.json`` (temp file, fsync, rename, fsync the folder)."""
    write_json(Path(data_dir) / RECORD_NAME, catalog_to_json(cat), indent=1)


# -- the record of earlier versions: numbered shards (base_url + max_shard) -----------------
@dataclass(frozen=True)
class FolderRecord:
    """What a data folder holds, written by fetch and ``nanostream sample``."""

    base_url: str
    max_shard: int
    dataset: str | None = None
    text_column: str = "text"


def write_record(data_dir: Path, record: FolderRecord) -> None:
    """Atomically write ``DIR/.nanostream.json``."""
    write_json(data_dir / RECORD_NAME, asdict(record), indent=2)


def read_record(data_dir: Path) -> FolderRecord | None:
    """The folder's record as a FolderRecord; a catalog record (``catalog_to_json``) of numbered shards is
    read as one too (its base URL and validation shard). Prefer ``read_catalog``."""
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
    cat = catalog_from_json(raw)
    vals = cat.splits().validation
    index = shard_index(vals[-1].path) if vals else None
    if index is None or any(shard_index(f.path) is None for f in cat.files):
        raise ConfigError(f"{path} records {cat.name}, whose files are not shard_XXXXX.parquet: read it with "
                          "nanostream.sources.record.read_catalog")
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
