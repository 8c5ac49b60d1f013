"""The one dataset notion: ``Catalog``, an ordered list of ``DataFile`` (path, size, checksums, URL), a text
column and split rules; ``numbered_catalog`` and ``local_catalog`` build one without the network; the data
folder's record of it, ``.nanostream.json`` (``read_catalog`` / ``write_catalog``).
"""

from __future__ import annotations

import collections
import fnmatch
import json
import logging
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..config import get_dataset
from ..errors import CorruptShardError, DatasetError, MissingShardError
from ..shards import RECORD_NAME, write_json
from .splits import Splits, assign

log = logging.getLogger(__name__)

_said: set[str] = set()
FORMAT = "nanostream-catalog"
VERSION = 2


@dataclass(frozen=True)
class DataFile:
    """One parquet file of a dataset. ``path`` is also where it lives under the data folder."""

    path: str  # relative POSIX path, e.g. "data/CC-MAIN-2024-10/000_00000.parquet"
    size: int | None  # bytes; None only where the source never said (learned from the server)
    sha256: str | None = None  # lowercase hex
    md5: str | None = None  # lowercase hex (an S3 single-part ETag)
    url: str = ""  # http(s)://..., s3://BUCKET/KEY, or "" for a file that is local only

    def check(self) -> None:
        p = self.path
        parts = p.split("/")
        if not p or p.startswith("/") or "\\" in p or any(x in ("", ".", "..") for x in parts):
            raise DatasetError(f"file path {p!r} is not a clean relative path")
        if any(x.startswith(".nanostream") for x in parts):
            raise DatasetError(f"file path {p!r} collides with nanostream's bookkeeping (.nanostream*)")
        if self.size is not None and self.size < 0:
            raise DatasetError(f"{p}: negative size {self.size}")
        for name, value, n in (("sha256", self.sha256, 64), ("md5", self.md5, 32)):
            if value is not None and not re.fullmatch(f"[0-9a-f]{{{n}}}", value):
                raise DatasetError(f"{p}: {name} {value!r} is not {n} lowercase hex digits")

    def mismatch(self, size: int | None, sha256: str | None = None) -> str | None:
        """What differs between this listing and the size and sha256 a server announces, or None."""
        if size is not None and self.size is not None and size != self.size:
            return f"{self.path} is {size} bytes at the source but {self.size} in the catalog (changed since listed)"
        if sha256 and self.sha256 and sha256.lower() != self.sha256:
            return f"{self.path} has sha256 {sha256[:12]}… at the source but {self.sha256[:12]}… in the catalog"
        return None

    @property
    def verification(self) -> str:
        """What a download of this file is checked against: ``sha256``, ``md5`` or ``size``."""
        return "sha256" if self.sha256 else "md5" if self.md5 else "size" if self.size is not None else "none"


@dataclass(frozen=True)
class Catalog:
    """A dataset: ordered files, text column, split rules, source and pinned revision."""

    name: str  # as the user named it: "fineweb-edu-100b", "hf://datasets/ORG/NAME", "s3://b/p/", a folder
    files: tuple[DataFile, ...]
    text_column: str = "text"
    val: str | None = None  # glob over file paths choosing validation; overrides names
    source: str = ""  # where the files come from, e.g. "hf://datasets/ORG/NAME/PATH" (no revision)
    revision: str | None = None  # the pinned commit sha (Hub); None where the source has none
    include: str | None = None  # the glob the listing was narrowed with

    def __post_init__(self) -> None:
        if not self.files:
            raise DatasetError(f"dataset {self.name}: no parquet files found in {self.source or self.name}")
        if not self.text_column:
            raise DatasetError(f"dataset {self.name}: the text column name is empty")
        for f in self.files:
            f.check()
        twice = [path for path, n in collections.Counter(f.path for f in self.files).items() if n > 1]
        if twice:
            raise DatasetError(f"dataset {self.name}: file {twice[0]} is listed twice")

    def splits(self) -> Splits[DataFile]:
        """Train / validation / test files (``splits.assign``); logs once what was left out or guessed."""
        a = assign([f.path for f in self.files], self.val)
        if self.val is not None and not a.validation:
            raise empty_split(self, "validation", f" (--val {self.val!r} matches none)")
        for kind, note in (("val", a.note), ("unassigned", a.left_out)):
            if note:
                say_once(f"{kind}:{self.name}", f"dataset {self.name}: {note}")
        if not a.train and self.val is None:  # an explicit val may take every file (a validation-only folder)
            raise empty_split(self, "train")
        files = {f.path: f for f in self.files}.__getitem__
        return replace(a, train=tuple(map(files, a.train)), validation=tuple(map(files, a.validation)),
                       test=tuple(map(files, a.test)), unassigned=tuple(map(files, a.unassigned)))

    def split(self, name: str) -> tuple[DataFile, ...]:
        """The files of split ``name`` (train, validation/val, test); an error if there are none."""
        key = {"val": "validation"}.get(name, name)
        files = getattr(self.splits(), key)
        if not files:
            raise empty_split(self, key)
        return files

    def pick(self, num_train: int | None = None) -> tuple[DataFile, ...]:
        """What ``fetch`` downloads: the first ``num_train`` train files (all if None), then validation."""
        sp = self.splits()
        return sp.train[:num_train] + sp.validation


def say_once(key: str, message: str) -> None:
    """Log ``message`` once per process for ``key``."""
    if key not in _said:
        _said.add(key)
        log.warning(message)


def empty_split(cat: Catalog, split: str, why: str = "") -> DatasetError:
    seen = [f.path for f in cat.files]
    shown = ", ".join(seen[:5]) + (f" and {len(seen) - 5} more" if len(seen) > 5 else "")
    return DatasetError(f"dataset {cat.name}: split {split!r} resolves to no file{why}; "
                        f"files seen: {shown} (pass --val GLOB, or val=GLOB, to choose validation files)")


# -- sources that need no network -----------------------------------------------------------
def parquet_only(listed: list[DataFile], include: str | None, where: str, noun: str) -> list[DataFile]:
    """The ``*.parquet`` files of a listing that match ``include``, by path; DatasetError if none."""
    keep = [f for f in listed if f.path.endswith(".parquet") and (not include or fnmatch.fnmatchcase(f.path, include))]
    if not keep:
        narrowed = f" matching --include {include!r}" if include else ""
        raise DatasetError(f"{where}: no *.parquet {noun}{narrowed} ({len(listed)} {noun} seen)")
    return sorted(keep, key=lambda f: f.path)


def numbered_catalog(name: str, base_url: str, count: int, *, text_column: str = "text",
                     source: str = "", revision: str | None = None) -> Catalog:
    """``shard_00000.parquet`` .. ``shard_{count-1}.parquet`` under ``base_url``, the last validation."""
    if count < 1:
        raise DatasetError(f"dataset {name}: needs at least 1 shard (the validation shard), got {count}")
    base = base_url.rstrip("/")
    names = [f"shard_{i:05d}.parquet" for i in range(count)]
    files = tuple(DataFile(n, None, url=f"{base}/{n}" if base else "") for n in names)
    return Catalog(name, files, text_column, val=names[-1], source=source or base, revision=revision)


def builtin_catalog(name: str, endpoint: str) -> Catalog:
    """A built-in dataset (``config.DATASETS``) as a numbered catalog under ``endpoint``."""
    ds = get_dataset(name)
    return numbered_catalog(name, ds.base_url(endpoint), ds.max_shard + 1, text_column=ds.text_column,
                            source=f"hf://datasets/{ds.repo}", revision="main")


def local_catalog(folder: Path, *, text_column: str = "text", val: str | None = None) -> Catalog:
    """Every ``*.parquet`` under ``folder`` (subfolders too, hidden names skipped), in sorted path order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingShardError(f"data folder {folder} does not exist or is not a folder: run `nanostream fetch "
                                f"--data-dir {folder}` first, or pass dataset=", path=folder)
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(root).relative_to(folder).as_posix()
        for n in names:
            if n.endswith(".parquet") and not n.startswith("."):
                files.append(DataFile(n if rel == "." else f"{rel}/{n}", os.stat(Path(root) / n).st_size))
    files.sort(key=lambda f: f.path)
    return Catalog(str(folder), tuple(files), text_column, val=val, source=str(folder.resolve()))


# -- the text column ------------------------------------------------------------------------
def check_text_column(path: Path, column: str) -> None:
    """Raise DatasetError (listing the columns there are) unless ``path`` has a string ``column``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise CorruptShardError(f"{path} is not a readable parquet file ({exc})", path=path) from exc
    if column not in schema.names:
        raise DatasetError(f"{path} has no column {column!r}; its columns are: {', '.join(schema.names)} "
                           "(pass --text-column NAME)")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise DatasetError(f"{path}: column {column!r} holds {kind}, not text (pass --text-column NAME)")


# -- the record ------------------------------------------------------------------------------
def catalog_to_json(cat: Catalog) -> dict[str, Any]:
    """The record as a JSON-ready dict (URLs equal to ``base_url/PATH`` left out)."""
    tails = ((f.url, "/" + quote(f.path)) for f in cat.files)
    bases = collections.Counter(url[: -len(tail)] for url, tail in tails if url.endswith(tail))
    base = bases.most_common(1)[0][0] if bases else ""
    files = [{k: v for k, v in vars(f).items() if v is not None or k == "size"} for f in cat.files]
    for entry in files:
        if entry["url"] == (f"{base}/{quote(entry['path'])}" if base else ""):
            del entry["url"]
    header = {k: v for k, v in vars(cat).items() if k != "files"}
    return {"format": FORMAT, "version": VERSION, **header, "base_url": base, "files": files}


def catalog_from_json(raw: Any) -> Catalog:
    """The catalog of a record written by ``catalog_to_json``."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DatasetError("not a nanostream catalog record")
    if raw.get("version") != VERSION:
        raise DatasetError(f"catalog record version {raw.get('version')!r} is newer than this nanostream "
                           f"(reads {VERSION}): upgrade nanostream")
    base = raw.get("base_url") or ""
    files = tuple(DataFile(**{"url": f"{base}/{quote(e['path'])}" if base else "", **e}) for e in raw["files"])
    return Catalog(files=files, **{f.name: raw[f.name] for f in fields(Catalog) if f.name != "files"})


def read_catalog(data_dir: Path) -> Catalog | None:
    """The catalog recorded in ``DIR/.nanostream.json``, None if none."""
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
