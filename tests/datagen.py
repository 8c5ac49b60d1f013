"""Deterministic parquet shards for tests: every document carries its own id.

Document text is ``"doc:<shard>:<row_group>:<row> " + filler``, so a test can
check exactly-once coverage by parsing ids back out of what it read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nanostream.shards import shard_name
from nanostream.sources.catalog import numbered_catalog, write_catalog

WORDS = "the of and to in is that for it as was with be by on not he this are or his from at which".split()


def doc_text(shard: int, rg: int, row: int, words: int = 20) -> str:
    h = int.from_bytes(hashlib.blake2b(f"{shard}:{rg}:{row}".encode(), digest_size=8).digest(), "little")
    n = words + h % words
    filler = " ".join(WORDS[(h >> (i % 48)) % len(WORDS)] for i in range(n))
    return f"doc:{shard}:{rg}:{row} {filler}"


def doc_id(text: str) -> tuple[int, int, int]:
    head = text.split(" ", 1)[0]
    _, s, g, r = head.split(":")
    return int(s), int(g), int(r)


def write_shard(path: Path, shard: int, row_groups: int, rows: int, words: int = 20) -> Path:
    texts = [doc_text(shard, g, r, words) for g in range(row_groups) for r in range(rows)]
    table = pa.table({"text": pa.array(texts, pa.string())})
    pq.write_table(table, path, row_group_size=rows, compression="zstd")
    return path


def make_shards(
    folder: Path,
    n: int,
    *,
    row_groups: int = 4,
    rows: int = 16,
    words: int = 20,
    record: bool = True,
    base_url: str = "",  # no remote: a reader must not try to download
) -> list[Path]:
    """Write shards 0..n-1 into ``folder`` (shard n-1 is val) and, if ``record``, its record."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_shard(folder / shard_name(i), i, row_groups, rows, words) for i in range(n)]
    if record:
        write_catalog(folder, numbered_catalog(base_url or str(folder), base_url, n))
    return paths


def make_big_shard(path: Path, shard: int, megabytes: float) -> Path:
    """A shard of roughly ``megabytes`` MB of incompressible-ish text (for download tests)."""
    import os

    rows = max(1, int(megabytes * 1024 * 1024 / 1100))
    texts = [f"doc:{shard}:0:{r} " + os.urandom(512).hex() for r in range(rows)]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=max(1, rows // 4), compression="none")
    return path


def make_dense_shards(folder: Path, n: int, *, row_groups: int = 8, rows: int = 256, filler: int = 200) -> list[Path]:
    """Shards 0..n-1 of documents ``"doc:<shard>:<row_group>:<row> " + hex`` (``filler`` random bytes as hex,
    seeded: the same files every time) that compress little, so a shard's size is about
    ``row_groups * rows * filler`` bytes; no record (a bare remote)."""
    import random

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = random.Random(f"dense:{i}")
        texts = [f"doc:{i}:{g}:{r} " + rng.randbytes(filler).hex() for g in range(row_groups) for r in range(rows)]
        path = folder / shard_name(i)
        pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), path, row_group_size=rows,
                       compression="zstd")
        paths.append(path)
    return paths
