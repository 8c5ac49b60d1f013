"""What a ``--dataset`` value means: a built-in name, ``hf://``, ``s3://`` or a local folder, as one Catalog.

``open_catalog`` is the one entry point for fetch, stream, TokenDataset and serve.
A data folder whose record names the same dataset gets the recorded catalog back,
untouched: the same commit, files, sizes and checksums, with no network call, so
later fetches and every rank read what the first fetch pinned. Otherwise the
source is listed (``hub.hub_catalog``, ``s3.s3_catalog``), built (``builtin_catalog``)
or walked (``local_catalog``). Writing the record is the caller's job
(``record.write_catalog``), once it has decided to fetch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiohttp

from .catalog import Catalog, builtin_catalog, local_catalog
from .config import DATASETS, Config, get_dataset
from .errors import DatasetError
from .record import read_catalog

SCHEMES = ("hf://", "s3://")


async def open_catalog(dataset: str | None, *, config: Config, data_dir: Path | None = None,
                       include: str | None = None, val: str | None = None, text_column: str | None = None,
                       session: aiohttp.ClientSession | None = None) -> Catalog:
    """The catalog of ``dataset`` (None: whatever ``data_dir`` holds), pinned by the folder's record if any.

    ``val`` and ``text_column`` override the recorded or listed ones; ``include``
    narrows a listing and must match the one a recorded folder was fetched with.
    """
    recorded = read_catalog(data_dir) if data_dir is not None else None
    if recorded is not None and dataset in (None, recorded.name):
        if include is not None and include != recorded.include:
            raise DatasetError(f"{data_dir} was fetched with --include {recorded.include!r}, not {include!r}: "
                               "pass the same, or use another --data-dir")
        return _override(recorded, val, text_column)
    if recorded is not None:
        raise DatasetError(f"{data_dir} holds dataset {recorded.name}, not {dataset}: pass another --data-dir "
                           "(or delete its .nanostream.json to start over)")
    column = text_column or "text"
    if dataset is None:
        if data_dir is None:
            raise DatasetError("no dataset and no data folder given: pass --dataset or --data-dir")
        return local_catalog(data_dir, text_column=column, val=val)
    if dataset.startswith("hf://"):
        from .hub import hub_catalog

        return await hub_catalog(dataset, endpoint=config.hf_endpoint, token=config.hf_token, include=include,
                                 val=val, text_column=column, session=session)
    if dataset.startswith("s3://"):
        from .s3 import s3_catalog

        return await s3_catalog(dataset, endpoint=config.s3_endpoint, include=include, val=val,
                                text_column=column, session=session)
    if "://" in dataset:
        scheme = dataset.split("://", 1)[0]
        raise DatasetError(f"--dataset {dataset!r}: unknown scheme {scheme!r}; use hf://datasets/ORG/NAME, "
                           f"s3://BUCKET/PREFIX/, --data-dir FOLDER or a built-in name ({', '.join(DATASETS)})")
    get_dataset(dataset)  # an unknown name: ConfigError listing the built-in ones
    if include is not None:
        raise DatasetError(f"--include applies to hf:// and s3:// datasets, not the built-in {dataset}")
    return _override(builtin_catalog(dataset, config.hf_endpoint), val, text_column)


def _override(cat: Catalog, val: str | None, text_column: str | None) -> Catalog:
    changes = {k: v for k, v in (("val", val), ("text_column", text_column)) if v is not None}
    return dataclasses.replace(cat, **changes) if changes else cat


def folder_name(dataset: str) -> str:
    """The default folder under ``BASE_DIR/data`` for ``dataset``: ``hf://datasets/o/n@v1/x`` -> ``hf/o/n@v1/x``.

    A built-in name is itself; a URL keeps its parts as nested folders (the revision
    too: two revisions never share a folder).
    """
    if dataset.startswith("hf://"):
        from .hub import parse_hub_url

        hp = parse_hub_url(dataset)
        rev = f"@{hp.revision.replace('/', '%2F')}" if hp.revision else ""
        return "/".join(x for x in ("hf", hp.repo_id + rev, hp.path) if x)
    if dataset.startswith("s3://"):
        from .s3 import parse_s3_url

        sp = parse_s3_url(dataset)
        return "/".join(x for x in ("s3", sp.bucket, sp.prefix.rstrip("/")) if x)
    return dataset
