"""Row-group counts from parquet footers: a local file's, or remote files' by small suffix-range GETs
(a few KB per file; a ``nanostream serve`` mirror tells the count in a header).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq

from ..concurrency import run_each
from ..errors import CorruptShardError, FetchError, HTTPStatusError
from ..retry import (
    Fatal,
    Retries,
    RetryPolicy,
    Transient,
    check_status,
    client_session,
    describe,
    with_retries,
)
from .catalog import DataFile
from .credentials import Credentials, is_s3

CONCURRENCY = 16
ROW_GROUPS_HEADER = "X-Nanostream-Row-Groups"  # a nanostream mirror's answers tell a parquet file's count


def local_count(path: Path, remote_known: bool) -> int | None:
    """Row groups in a local file's footer; None if absent (or unreadable while a remote can tell)."""
    try:
        return pq.read_metadata(path).num_row_groups
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError, ValueError) as exc:
        if remote_known:
            return None  # the reader fetches the file again when it gets there
        raise CorruptShardError(f"{path} is not a readable parquet shard ({exc}): delete it and fetch it again "
                                "(`nanostream fetch`)", path=path) from exc


async def read_footers(files: tuple[DataFile, ...], shards: list[int], credentials: Credentials,
                       retry: RetryPolicy) -> dict[int, int]:
    """``{shard: row groups}`` of the remote files ``files[shard]``, from their footers."""
    await credentials.prepare(files[s].url for s in shards)
    out: dict[int, int] = {}
    async with client_session(retry, auto_decompress=False) as session:
        async def count(shard: int, probe: int) -> int:
            out[shard], size = await Remote(session, credentials, files[shard], retry).count(probe)
            return size

        size = await count(shards[0], 8)
        await run_each((count(s, size + size // 4) for s in shards[1:]), CONCURRENCY)
    return out


class Remote:
    """One remote file's footer reads."""

    def __init__(self, session: aiohttp.ClientSession, credentials: Credentials, file: DataFile,
                 retry: RetryPolicy) -> None:
        self.session, self.credentials, self.name, self.retry = session, credentials, file.path, retry
        self.signed = is_s3(file.url)
        self.url = credentials.http_url(file.url)
        self.told: int | None = None  # the count a mirror's answer told

    async def count(self, probe: int) -> tuple[int, int]:
        """(row groups, footer bytes with its 8-byte trailer), from the last ``probe`` bytes and a second
        GET if the footer is longer."""
        url = self.url
        tail = await self.tail(max(probe, 8))
        if self.told is not None:
            return self.told, 0
        if len(tail) < 8 or tail[-4:] != b"PAR1":
            raise FetchError(f"{url} does not end like a parquet file: check --base-url", shard=self.name, url=url)
        size = int.from_bytes(tail[-8:-4], "little") + 8
        if size > len(tail):
            tail = await self.tail(size)
        try:
            return pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-size:])).num_row_groups, size
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise FetchError(f"the parquet footer of {url} is unreadable ({exc})", shard=self.name, url=url) from exc

    async def tail(self, n: int) -> bytes:
        """The last ``n`` bytes of the file (a suffix Range GET), retried like a download."""
        url, c = self.url, self.credentials

        async def attempt() -> bytes:
            async with self.session.get(c.target(url, self.signed), headers=c.tail(url, self.signed, n)) as resp:
                check_status(resp)
                told = resp.headers.get(ROW_GROUPS_HEADER, "")
                self.told = int(told) if told.isdigit() else None
                body = await resp.read()
                whole = resp.status == 200 or resp.headers.get("Content-Range", "").endswith(f"/{len(body)}")
                if len(body) < n and not whole:  # a file shorter than n comes whole: that is fine
                    raise Transient(f"short answer: {len(body)} of the last {n} bytes")
                return body[-n:]

        retries = Retries(self.retry, f"reading the footer of {self.name}", url=url, shard=self.name)
        try:
            return await with_retries(retries, attempt)
        except Fatal as exc:
            raise HTTPStatusError(f"cannot read the footer of {url}: {describe(exc)}", status=exc.status or 0,
                                  shard=self.name, url=url) from exc
