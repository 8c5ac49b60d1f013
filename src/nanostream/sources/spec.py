"""``Source``: where one dataset is (a name, a URL or a folder), which of its files, and its weight in a mix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DATASETS, DEFAULT_DATASET, Config
from ..errors import ConfigError, MissingShardError
from .catalog import Catalog
from .resolve import folder_name, pin_catalog

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
        """(data folder, catalog): the folder's recorded catalog, or the dataset's listing, recorded once."""
        dataset, base, folder = self._where(config)
        cat = pin_catalog(dataset=dataset, folder=folder, base_url=base, max_shard=self.max_shard,
                          include=self.include, val=self.val, text_column=self.text_column, config=config)
        remote = any(f.url for f in cat.files)
        if not folder.is_dir() and (not remote or (self.num_shards is None and split == "train")):
            raise MissingShardError(f"data folder {folder} does not exist: run `nanostream fetch "
                                    f"--data-dir {folder}` first, or give the Source num_shards=", path=folder)
        return folder, cat


def sources_of(data: str | Path | Source | list[Source] | tuple[Source, ...] | None) -> tuple[Source, ...]:
    """The sources ``data=`` names: one (a name, URL, folder or ``Source``) or a weighted mix (a list of
    ``Source``s: two or more, each weight a positive number)."""
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
