"""Where a dataset is and what it holds: a ``Source`` (a built-in name, ``hf://``, ``s3://``, a mirror's URL or a
folder, and its weight in a mix) to its data folder and one Catalog, listed once per folder (``Source.resolve``);
``open_catalog`` (async) and ``numbered_catalog_for`` for ``fetch``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import filelock

from ..concurrency import run_sync
from ..config import DATASETS, DEFAULT_DATASET, Config, check_url, get_dataset
from ..errors import ConfigError, DatasetError, MissingShardError
from .catalog import Catalog, builtin_catalog, local_catalog, numbered_catalog, read_catalog, write_catalog

SCHEMES = ("hf://", "s3://")
WEB = ("http://", "https://")


@dataclass(frozen=True)
class Source:
    """One dataset. ``data``: None (the default dataset), a built-in name, ``hf://datasets/ORG/NAME[@REV][/PATH]``,
    ``s3://BUCKET/PREFIX/``, ``http(s)://HOST/`` (numbered shards at that URL, ``shard_{max_shard}`` the
    validation one: a ``nanostream serve`` mirror) or a folder of parquet files (anything else).
    ``folder``: where a named or remote dataset's files go (default: under ``Config.base_dir``)."""

    data: str | Path | None = None
    folder: Path | str | None = field(default=None, kw_only=True)
    num_shards: int | None = field(default=None, kw_only=True)
    include: str | None = field(default=None, kw_only=True)
    val: str | None = field(default=None, kw_only=True)
    text_column: str | None = field(default=None, kw_only=True)
    max_shard: int | None = field(default=None, kw_only=True)
    weight: float = field(default=1.0, kw_only=True)

    @property
    def label(self) -> str:
        """How errors and stats name this source."""
        return str(self.data or self.folder or DEFAULT_DATASET)

    def _where(self, config: Config) -> tuple[str | None, str | None, Path]:
        """(dataset name or URL, base URL of numbered shards, data folder)."""
        data = self.data
        if isinstance(data, str) and (data.startswith(WEB) or "://" in data or data in DATASETS):
            dataset, base = (None, data) if data.startswith(WEB) else (data, None)
        elif data is not None:  # a folder: its record, else its files
            if self.folder is not None:
                raise ConfigError(f"Source({str(data)!r}) is a folder: folder= is for a dataset name or URL")
            return None, None, Path(data).expanduser()
        else:
            dataset, base = DEFAULT_DATASET, None
        if self.folder is not None:
            return dataset, base, Path(self.folder).expanduser()
        return dataset, base, config.data_dir(folder_name(dataset or DEFAULT_DATASET))

    def resolve(self, config: Config, split: str) -> tuple[Path, Catalog]:
        """(data folder, catalog), blocking: the folder's recorded catalog, or the dataset's listing. A listing
        (hf://, s3://) happens once per folder: the first process lists and records it under the folder's lock,
        the others (every rank) read the record."""
        dataset, base, folder = self._where(config)
        cat = self._pin(dataset, base, folder, config)
        remote = any(f.url for f in cat.files)
        if not folder.is_dir() and (not remote or (self.num_shards is None and split == "train")):
            raise MissingShardError(f"data folder {folder} does not exist: run `nanostream fetch "
                                    f"--data-dir {folder}` first, or give the Source num_shards=", path=folder)
        return folder, cat

    def _pin(self, dataset: str | None, base_url: str | None, folder: Path, config: Config) -> Catalog:
        """``resolve``'s catalog (``_where``'s dataset, base URL and folder)."""
        recorded = read_catalog(folder) if folder.is_dir() else None
        if base_url is not None or self.max_shard is not None:
            return numbered_catalog_for(dataset, folder, base_url, self.max_shard, recorded, config,
                                        text_column=self.text_column, val=self.val)
        if dataset in DATASETS and recorded is not None and not recorded.name.startswith(SCHEMES):
            dataset = recorded.name  # a built-in dataset fetched from a mirror is recorded under the mirror's URL
        options = {"include": self.include, "val": self.val, "text_column": self.text_column}
        cat = _unlisted(dataset, config, folder, recorded, **options)
        if cat is not None:
            return cat
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(folder / ".nanostream.catalog.lock")
        except OSError as exc:
            raise ConfigError(f"cannot create data folder {folder}: {exc}") from exc
        with lock:
            cat = _unlisted(dataset, config, folder, read_catalog(folder), **options)  # listed meanwhile?
            if cat is None:
                cat = run_sync(open_catalog(dataset, config=config, **options))
                write_catalog(folder, cat)
            return cat


def sources_of(data: str | Path | Source | list[Source] | tuple[Source, ...] | None) -> tuple[Source, ...]:
    """The sources ``data=`` names: one (a name, URL, folder or ``Source``) or a mix (two or more ``Source``s)."""
    if not isinstance(data, (list, tuple)):
        if data is not None and not isinstance(data, (str, Path, Source)):
            raise ConfigError(f"data= takes a name, a URL, a folder, a Source or a list of Sources, got {data!r}")
        return (data if isinstance(data, Source) else Source(data),)
    sources = tuple(data)
    bad = [s for s in sources if not isinstance(s, Source)]
    if bad:
        raise ConfigError(f"a mix (data=[...]) takes nanostream.Source objects, got {bad[0]!r}")
    if len(sources) < 2:
        what = f"one source ({sources[0].label})" if sources else "no source"
        raise ConfigError(f"data=[...] has {what}: a mix needs two or more; for one dataset pass it alone")
    for s in sources:
        w = s.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ConfigError(f"source {s.label}: weight must be a positive number, got {w!r}")
    return sources


def check_folders(sources: tuple[Source, ...], folders: list[Path]) -> None:
    """ConfigError if two sources of a mix resolve to the same data folder."""
    seen: dict[Path, Source] = {}
    for s, f in zip(sources, folders, strict=True):
        key = f.resolve()
        if key in seen:
            raise ConfigError(f"sources {seen[key].label} and {s.label} resolve to the same data folder {f}: "
                              "give each its own folder")
        seen[key] = s


def normalized(sources: tuple[Source, ...]) -> tuple[float, ...]:
    """The weights as shares summing to 1."""
    total = sum(float(s.weight) for s in sources)
    return tuple(float(s.weight) / total for s in sources)


async def open_catalog(dataset: str | None, *, config: Config, data_dir: Path | None = None,
                       include: str | None = None, val: str | None = None, text_column: str | None = None
                       ) -> Catalog:
    """The catalog of ``dataset`` (None: whatever ``data_dir`` holds), pinned by the folder's record if any.
    ``val`` and ``text_column`` override the recorded or listed ones; ``include`` narrows a listing and
    must match the one a recorded folder was fetched with."""
    recorded = read_catalog(data_dir) if data_dir is not None else None
    cat = _unlisted(dataset, config, data_dir, recorded, include, val, text_column)
    if cat is not None:
        return cat
    assert dataset is not None
    if dataset.startswith("hf://"):
        from .hub import hub_catalog

        cat = await hub_catalog(dataset, endpoint=config.hf_endpoint, token=config.hf_token, include=include)
    else:
        from .s3 import s3_catalog

        cat = await s3_catalog(dataset, endpoint=config.s3_endpoint, include=include)
    return _override(cat, val, text_column)


def _unlisted(dataset: str | None, config: Config, data_dir: Path | None, recorded: Catalog | None,
              include: str | None, val: str | None, text_column: str | None) -> Catalog | None:
    """``open_catalog`` without the network (a record, a folder, a built-in name); None for hf:// or s3://."""
    if recorded is not None and dataset in (None, recorded.name):
        if include is not None and include != recorded.include:
            raise DatasetError(f"{data_dir} was fetched with --include {recorded.include!r}, not {include!r}: "
                               "pass the same, or use another --data-dir")
        return _override(recorded, val, text_column)
    if recorded is not None:
        raise DatasetError(f"{data_dir} holds dataset {recorded.name}, not {dataset}: pass another --data-dir "
                           "(or delete its .nanostream.json to start over)")
    if dataset is None:
        if data_dir is None:
            raise DatasetError("no dataset and no data folder given: pass --dataset or --data-dir")
        return local_catalog(data_dir, text_column=text_column or "text", val=val)
    if dataset.startswith(SCHEMES):
        return None
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
    """The default folder under ``BASE_DIR/data`` for ``dataset``: ``hf://datasets/o/n@v1/x`` -> ``hf/o/n@v1/x``
    (a built-in name is itself; two revisions never share a folder)."""
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


def url_prefix(cat: Catalog) -> str:
    """Where a catalog's bytes come from: its files' URL prefix (a Hub commit's, a bucket prefix), else its source."""
    first = cat.files[0]
    for tail in ("/" + quote(first.path), "/" + first.path):
        if first.url.endswith(tail):
            return first.url[: -len(tail)]
    return cat.source or cat.name


def numbered_catalog_for(dataset: str | None, folder: Path, base_url: str | None, max_shard: int | None,
                         recorded: Catalog | None, config: Config, *, text_column: str | None = None,
                         val: str | None = None) -> Catalog:
    """``shard_00000.parquet`` .. ``shard_{max_shard}.parquet`` under ``base_url`` (a mirror of a built-in
    dataset), the last one validation. ``base_url`` defaults to the folder's recorded one, else the
    built-in dataset's; ``max_shard`` to the record's, else the dataset's."""
    ds = get_dataset(dataset) if dataset is not None else None
    hub = ds.base_url(config.hf_endpoint) if ds is not None else ""
    prefix = url_prefix(recorded) if recorded is not None else None
    if base_url is not None:
        base = check_url(base_url)
    else:
        base = prefix if prefix is not None and "://" in prefix else hub
    if max_shard is None and prefix != base and ds is None:
        raise ConfigError(f"base_url={base_url!r} needs max_shard= (the index of the validation shard)")
    if recorded is not None and prefix == base and max_shard in (None, len(recorded.files) - 1):
        return _override(recorded, val, text_column)
    count = max_shard + 1 if max_shard is not None else ds.max_shard + 1  # type: ignore[union-attr]
    column = text_column or (recorded.text_column if recorded else ds.text_column if ds else "text")
    label = ds.name if ds is not None and base == hub else base or str(folder)
    cat = numbered_catalog(label, base, count, text_column=column, source=base or str(folder))
    return _override(cat, val, None)


def split_indices(cat: Catalog, folder: Path, split: str, num_shards: int | None) -> tuple[int, ...]:
    """The split's indices into ``cat.files``: validation's all, train's first ``num_shards`` (None: those here)."""
    if num_shards is not None and num_shards < 0:
        raise ConfigError(f"num_shards must be >= 0, got {num_shards}")
    files = cat.split("train" if split == "train" else "val")
    if split == "train":
        files = files[:num_shards] if num_shards is not None else tuple(
            f for f in files if (folder / f.path).exists())
    where = {f.path: i for i, f in enumerate(cat.files)}
    if not files:
        val = ", ".join(f.path for f in cat.splits().validation[:3]) or "none"
        raise MissingShardError(f"no {split} files in {folder} (validation: {val}): fetch some with "
                                "`nanostream fetch -n N`, or pass num_shards=", path=folder)
    return tuple(where[f.path] for f in files)
