"""``Source``: the one object that says where a dataset is, and its weight in a mix.

The dataset arguments of ``stream()`` / ``TokenDataset`` are folded into one ``Source`` at the
entrance (``entrance``); below it only ``Source`` objects are passed. ``Source.resolve`` gives its
data folder and pinned catalog; ``check_mix`` refuses what cannot be mixed, naming the source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEFAULT_DATASET, Config
from ..errors import ConfigError, MissingShardError
from .catalog import Catalog
from .resolve import folder_name, pin_catalog

DATASET_ARGS = ("dataset", "data_dir", "num_shards", "include", "val", "text_column", "base_url", "max_shard")


@dataclass(frozen=True)
class Source:
    """One dataset of a mix (or the only one): where it is, which of its files, and its ``weight``."""

    dataset: str | None = None
    data_dir: Path | str | None = field(default=None, kw_only=True)
    weight: float = field(default=1.0, kw_only=True)
    num_shards: int | None = field(default=None, kw_only=True)
    include: str | None = field(default=None, kw_only=True)
    val: str | None = field(default=None, kw_only=True)
    text_column: str | None = field(default=None, kw_only=True)
    base_url: str | None = field(default=None, kw_only=True)
    max_shard: int | None = field(default=None, kw_only=True)
    catalog: Catalog | None = field(default=None, kw_only=True, repr=False, compare=False)  # a listing made elsewhere

    @property
    def label(self) -> str:
        """How errors name this source: its dataset, else its folder."""
        return str(self.dataset or self.data_dir or (self.catalog.name if self.catalog else DEFAULT_DATASET))

    def folder(self, config: Config) -> Path:
        """The data folder: ``data_dir``, else ``BASE_DIR/data/<the dataset's folder name>``."""
        if self.data_dir is not None:
            return Path(self.data_dir).expanduser()
        return config.data_dir(folder_name(self._name() or ""))

    def _name(self) -> str | None:
        name = self.dataset or (self.catalog.name if self.catalog is not None else None)
        return name or (DEFAULT_DATASET if self.data_dir is None else None)

    def resolve(self, config: Config, split: str) -> tuple[Path, Catalog]:
        """(data folder, catalog): the recorded catalog, or the listing of the dataset, recorded once."""
        folder = self.folder(config)
        cat = self.catalog if self.catalog is not None else pin_catalog(
            dataset=self._name(), folder=folder, base_url=self.base_url, max_shard=self.max_shard,
            include=self.include, val=self.val, text_column=self.text_column, config=config)
        remote = any(f.url for f in cat.files)
        if not folder.is_dir() and (not remote or (self.num_shards is None and split == "train")):
            raise MissingShardError(f"data folder {folder} does not exist: run `nanostream fetch "
                                    f"--data-dir {folder}` first, or pass num_shards=", path=folder)
        return folder, cat


def entrance(mix: list[Source] | tuple[Source, ...] | None, source: Source | None = None,
             **dataset_args: object) -> tuple[Source, ...]:
    """The sources of a call: ``mix`` (checked), one ``source``, or the dataset arguments (``DATASET_ARGS``
    and ``catalog``) folded into one ``Source``; giving two of these is a ConfigError."""
    given = {k: v for k, v in dataset_args.items() if v is not None}
    unknown = set(given) - {*DATASET_ARGS, "catalog"}
    if unknown:
        raise ConfigError(f"unknown dataset argument(s): {', '.join(sorted(unknown))}")
    if mix is not None:
        if given or source is not None:
            also = sorted([*given, *(["source"] if source is not None else [])])
            raise ConfigError(f"mix= excludes {', '.join(also)}: give those to each Source of the mix")
        return check_mix(mix)
    if source is not None:
        if given:
            raise ConfigError(f"source= excludes {', '.join(sorted(given))}: give those to the Source")
        if not isinstance(source, Source):
            raise ConfigError(f"source= takes a nanostream.Source, got {source!r}")
        return (source,)
    return (Source(**given),)  # type: ignore[arg-type]


def check_mix(mix: list[Source] | tuple[Source, ...]) -> tuple[Source, ...]:
    """The mix as a tuple; ConfigError for a mix of one, a weight that is not a positive number, or
    something that is not a ``Source``. (Two sources in one folder are refused by ``check_folders``.)"""
    sources = tuple(mix)
    bad = [s for s in sources if not isinstance(s, Source)]
    if bad:
        raise ConfigError(f"mix= takes nanostream.Source objects, got {bad[0]!r}")
    if len(sources) < 2:
        what = f"one source ({sources[0].label})" if sources else "no source"
        raise ConfigError(f"mix= has {what}: a mix needs two or more; for one dataset pass dataset= or data_dir=")
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
                              "give each its own data_dir")
        seen[key] = s


def normalized(sources: tuple[Source, ...]) -> tuple[float, ...]:
    """The weights as shares summing to 1."""
    total = sum(float(s.weight) for s in sources)
    return tuple(float(s.weight) / total for s in sources)
