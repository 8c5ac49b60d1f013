"""The demo's offline sample corpus (``python -m demo.sample DIR [--shards N]``): the docstrings of the
standard library and of ``PACKAGES`` (parsed, never imported) and pydoc's topics, cleaned, deduplicated
and ordered by a hash of their text, written as ``shard_XXXXX.parquet`` files, the last one validation."""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import logging
import math
import os
import re
import sys
import sysconfig
import time
import warnings
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nanostream.errors import ConfigError, NanostreamError, ShardError
from nanostream.shards import BOOKKEEPING_PREFIX, list_shards, shard_name, write_bytes
from nanostream.sources.catalog import numbered_catalog, read_catalog, write_catalog

log = logging.getLogger(__name__)

DATASET = "sample"
PACKAGES = ("numpy", "pyarrow", "aiohttp", "torch", "networkx", "sympy", "jinja2", "tqdm", "filelock")
SKIP_DIRS = frozenset({"test", "tests", "testing", "idle_test", "__pycache__", "site-packages", "dist-packages"})
MIN_CHARS = 200
MIN_QUOTED_SHARE = 0.1  # skip files whose triple-quoted strings are under 10% of the bytes (~5% of text)
TMP_PREFIX = f"{BOOKKEEPING_PREFIX}.tmp."  # write_bytes's temporary files
STALE_TMP_S = 3600.0
_TRIPLE_QUOTED = re.compile(rb'("""|\'\'\')(.*?)\1', re.DOTALL)
_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_STOPWORDS = frozenset(
    "the a an of to is and in that for it as with be by on not this are or from at which if".split()
)


def _python_files(root: Path) -> list[Path]:
    """Every ``.py`` file under ``root`` in a fixed (sorted) order, test folders skipped."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        found.extend(Path(folder, f) for f in sorted(files) if f.endswith(".py"))
    return found


def _source_roots() -> list[Path]:
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    for name in PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            log.debug("sample: package %s not installed, skipped", name)
            continue
        roots.append(Path(next(iter(spec.submodule_search_locations))))
    return roots


def _docstrings(path: Path) -> Iterator[str]:
    """Module, class and method/function docstrings of one file (nested functions skipped)."""
    try:
        source = path.read_bytes()
    except OSError:
        return
    quoted = sum(len(m.group(2)) for m in _TRIPLE_QUOTED.finditer(source))
    if quoted < max(MIN_CHARS, MIN_QUOTED_SHARE * len(source)):
        return  # (nearly) all code: parsing it would cost far more time than the text it yields
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes etc. in third-party code
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        doc = ast.get_docstring(node)  # type: ignore[arg-type]
        if doc:
            yield doc
        if isinstance(node, (ast.Module, ast.ClassDef)):
            stack.extend(reversed([c for c in node.body if isinstance(c, _DEFS)]))


def _pydoc_topics() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split pydoc_data out
        return []
    return [topics[k] for k in sorted(topics)]


def clean(doc: str) -> str | None:
    """``doc`` without doctest examples, or None if it is too short or not English prose."""
    lines: list[str] = []
    in_example = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.startswith(">>>"):
            in_example = True  # drop the prompt and its output, up to the next blank line
            continue
        if in_example:
            if stripped:
                continue
            in_example = False
        lines.append(line.rstrip())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    if len(text) < MIN_CHARS:
        return None
    words = text.split()
    alpha = sum(1 for w in words if w.strip(".,;:()[]'\"!?`*").isalpha())
    common = sum(1 for w in words if w.lower() in _STOPWORDS)
    if alpha < 0.6 * len(words) or common < 0.08 * len(words):
        return None
    return text


def _order_key(text: str) -> tuple[bytes, str]:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest(), text


def documents() -> list[str]:
    """The sample corpus: cleaned, deduplicated documents in a deterministic pseudo-random order."""
    found = chain(_pydoc_topics(), (doc for root in _source_roots() for path in _python_files(root)
                                    for doc in _docstrings(path)))
    return sorted({text for text in map(clean, found) if text is not None}, key=_order_key)


def split_counts(n_docs: int, shards: int, docs_per_group: int) -> list[int]:
    """Documents per shard: train shards equal and whole row groups when possible, the rest to val."""
    if shards < 2:
        raise ConfigError(f"shards must be >= 2 (one train, one validation), got {shards}")
    if docs_per_group < 1:
        raise ConfigError(f"docs_per_group must be >= 1, got {docs_per_group}")
    per = math.ceil(n_docs / shards / docs_per_group) * docs_per_group
    while per > docs_per_group and (shards - 1) * per >= n_docs:
        per -= docs_per_group
    if (shards - 1) * per >= n_docs:
        per = n_docs // shards  # fewer docs than row groups: one short row group per shard
    if per == 0:
        raise ConfigError(f"the sample corpus has only {n_docs} documents: ask for fewer than {shards} shards")
    return [per] * (shards - 1) + [n_docs - (shards - 1) * per]


def _claim_folder(out_dir: Path, shards: int) -> None:
    """Refuse a folder holding another dataset; claim it; drop our stale temps and extra shards."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create sample folder {out_dir}: {exc}") from exc
    if not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is not a folder: pick a folder for the sample shards")
    record = read_catalog(out_dir)
    present = list_shards(out_dir)
    if (record is None and present) or (record is not None and record.name != DATASET):
        what = f"dataset {record.name!r}" if record else "other shards"
        raise ConfigError(f"{out_dir} already holds {what}: pick an empty folder for the sample")
    write_catalog(out_dir, numbered_catalog(DATASET, "", shards))
    for name in os.listdir(out_dir):
        tmp = out_dir / name
        try:  # temps of a killed run; a fresh one may belong to a concurrent run
            if name.startswith(TMP_PREFIX) and time.time() - tmp.stat().st_mtime > STALE_TMP_S:
                tmp.unlink()
        except FileNotFoundError:
            pass
    for index in present:
        if index >= shards:  # left over from an earlier run with more shards
            (out_dir / shard_name(index)).unlink(missing_ok=True)


def _write_shard(path: Path, texts: list[str], docs_per_group: int) -> None:
    """Write one shard atomically (``shards.write_bytes``)."""
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), buffer, row_group_size=docs_per_group,
                   compression="zstd", use_dictionary=False)
    try:
        write_bytes(path, buffer.getvalue().to_pybytes())
    except OSError as exc:
        raise ShardError(f"could not write sample shard {path}: {exc}; check free space and permissions",
                         path=path) from exc


def write_sample(out_dir: Path, shards: int = 4, *, docs_per_group: int = 1024) -> list[Path]:
    """Write the sample corpus into ``out_dir`` as ``shards`` shards (the last one validation); return
    their paths. Safe to run again on its own output."""
    out_dir = Path(out_dir)
    docs = documents()
    counts = split_counts(len(docs), shards, docs_per_group)
    _claim_folder(out_dir, shards)
    paths: list[Path] = []
    start = 0
    for index, count in enumerate(counts):
        path = out_dir / shard_name(index)
        _write_shard(path, docs[start:start + count], docs_per_group)
        paths.append(path)
        start += count
    log.debug("sample: %d documents, %d chars in %d shards under %s",
              len(docs), sum(map(len, docs)), shards, out_dir)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.sample", description="Write the offline sample corpus.")
    p.add_argument("dir", type=Path, help="folder to write shards into")
    p.add_argument("--shards", type=int, default=4, help="number of shards, the last one is validation")
    args = p.parse_args(argv)
    try:
        if args.shards < 2:
            raise ConfigError(f"--shards must be >= 2 (one train, one validation), got {args.shards}")
        paths = write_sample(args.dir, shards=args.shards)
    except NanostreamError as exc:
        print(f"demo.sample: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    print(f"wrote {len(paths)} sample shards to {args.dir} (validation: {paths[-1].name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
