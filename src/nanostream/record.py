"""The data folder's record of its catalog: ``.nanostream.json`` as JSON, and the migration of old records.

``write_catalog`` writes it atomically (temp file in the folder, fsync, rename,
fsync the folder); ``read_catalog`` reads it back, and reads a record written by
earlier versions (``shards.FolderRecord``: base_url, max_shard, dataset,
text_column) as the numbered catalog it described, with the same validation shard.
File URLs equal to ``base_url/PATH`` are left out of the JSON, so a 10,000-file
record of a Hub repo is about 1.5 MB.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .catalog import Catalog, DataFile, numbered_catalog
from .errors import DatasetError
from .shards import write_json

RECORD_NAME = ".nanostream.json"  # the same file as shards.RECORD_NAME
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
