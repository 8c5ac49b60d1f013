"""The data folder's record of its catalog, ``.nanostream.json`` (file URLs equal to ``base_url/PATH`` left out)."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import DatasetError
from ..shards import RECORD_NAME, write_json
from .catalog import Catalog, DataFile

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
    """The catalog of a record written by ``catalog_to_json``."""
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
