"""Reading one shard file with pyarrow (blocking: the producer's reader thread), its errors translated into
``MissingShardError``/``CorruptShardError`` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptShardError, MissingShardError


def file_id(path: Path) -> tuple[int, int, int, int] | None:
    """Identity of the file at ``path`` (device, inode, size, mtime), None if absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ShardReader:
    """An open shard file. Not thread-safe: use it from one thread at a time."""

    def __init__(self, path: Path, column: str) -> None:
        self.path = path
        self.column = column
        try:
            # we open (and close) the native file ourselves: a failed ParquetFile() must not keep it open
            self.source = pa.OSFile(str(path), "r")
        except FileNotFoundError as exc:
            raise MissingShardError(f"{path} disappeared while streaming: fetch it again", path=path) from exc
        except OSError as exc:
            raise unreadable(path, exc) from exc
        try:
            self.file = pq.ParquetFile(self.source)
            field = self.file.schema_arrow.field(column)
            self.num_row_groups = self.file.num_row_groups
        except KeyError as exc:
            self.source.close()
            raise CorruptShardError(f"{path} has no {column!r} column: delete it and fetch it again",
                                    path=path) from exc
        except (pa.ArrowException, OSError, ValueError) as exc:
            self.source.close()
            raise unreadable(path, exc) from exc
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            self.source.close()
            raise CorruptShardError(f"{path}: column {column!r} is {field.type}, not text", path=path)

    def read(self, row_group: int) -> pa.ChunkedArray:
        """The row group's text column, still in Arrow memory (see ``plan.Chunk``)."""
        try:
            # use_threads=False: one text column gains nothing from Arrow's pool, only switches
            column = self.file.read_row_group(row_group, columns=[self.column], use_threads=False).column(0)
            return column.drop_null() if column.null_count else column  # a null is no document
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise unreadable(self.path, exc, row_group) from exc

    def close(self) -> None:
        self.file.close()
        self.source.close()


def unreadable(path: Path, exc: BaseException, row_group: int | None = None) -> CorruptShardError:
    where = f" (row group {row_group})" if row_group is not None else ""
    return CorruptShardError(
        f"{path}{where} is not a readable parquet shard ({exc}): delete it and fetch it again "
        "(`nanostream fetch`)", path=path)
