"""Row-group counts from parquet footers: a local file's, or remote files' by small suffix-range GETs
(a few KB per file; a ``nanostream serve`` mirror tells the count in a header).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from ..concurrency import run_each
from ..errors import CorruptShardError, FetchError, HTTPStatusError, MissingShardError
from ..retry import Fatal, Retries, RetryPolicy, Transient, check_status, client_session, with_retries
from .catalog import DataFile
from .credentials import Credentials, is_s3

CONCURRENCY = 16
ROW_GROUPS_HEADER = "X-Nanostream-Row-Groups"  # a nanostream mirror's answers tell a parquet file's count


def local_count(path: Path, remote_known: bool) -> int | None:
    """Row groups in a local file's footer; None if absent (or unreadable while a remote can tell)."""
    import pyarrow as pa  # here, not at import: the mirror (serve) needs pyarrow only once it serves a parquet file
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_row_groups
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError, ValueError) as exc:
        if remote_known:
            return None  # the reader fetches the file again when it gets there
        raise CorruptShardError(f"{path} is not a readable parquet shard ({exc}): delete it and fetch it again "
                                "(`nanostream fetch`)", path=path) from exc


async def read_footers(data_dir: Path, files: tuple[DataFile, ...], shards: list[int],
                       credentials: Credentials | None, retry: RetryPolicy) -> dict[int, int]:
    """``{shard: row groups}`` from the footers of ``files[shard]``: the first in two GETs (its last 8 bytes, then
    the footer), the others in one a quarter larger, 16 at a time; ``MissingShardError`` if one has no remote."""
    if not shards:
        return {}
    for s in shards:
        if credentials is None or not files[s].url:
            path = data_dir / files[s].path
            local_count(path, False)
            raise MissingShardError(f"{path} is missing and no remote is known for {data_dir}: "
                                    "run `nanostream fetch` first, or pass dataset= (or base_url=)", path=path)
    assert credentials is not None
    await credentials.prepare(files[s].url for s in shards)
    out: dict[int, int] = {}
    async with client_session(retry, auto_decompress=False) as session:
        async def count(shard: int, probe: int) -> int:
            out[shard], size = await footer_count(session, credentials, files[shard], retry, probe)
            return size

        size = await count(shards[0], 8)
        await run_each((count(s, size + size // 4) for s in shards[1:]), CONCURRENCY)
    return out


async def footer_count(session: aiohttp.ClientSession, credentials: Credentials, file: DataFile,
                       retry: RetryPolicy, probe: int) -> tuple[int, int]:
    """(row groups, footer bytes with its 8-byte trailer) of a remote file, from its last ``probe`` bytes and
    a second GET if the footer is longer (a mirror's ``ROW_GROUPS_HEADER`` answers at once: 0 bytes)."""
    url, signed, name = credentials.http_url(file.url), is_s3(file.url), file.path

    async def tail(n: int) -> tuple[bytes, int | None]:
        async def attempt() -> tuple[bytes, int | None]:
            headers = credentials.headers("GET", url, signed, {"Range": f"bytes=-{n}"})  # the last n bytes
            async with session.get(credentials.target(url, signed), headers=headers) as resp:
                check_status(resp)
                told = resp.headers.get(ROW_GROUPS_HEADER, "")
                body = await resp.read()
                whole = resp.status == 200 or resp.headers.get("Content-Range", "").endswith(f"/{len(body)}")
                if len(body) < n and not whole:  # a file shorter than n comes whole: that is fine
                    raise Transient(f"short answer: {len(body)} of the last {n} bytes")
                return body[-n:], int(told) if told.isdigit() else None

        try:
            return await with_retries(Retries(retry, f"reading the footer of {name}", url=url, shard=name), attempt)
        except Fatal as exc:
            raise HTTPStatusError(f"cannot read the footer of {url}: {exc}", status=exc.status or 0,
                                  shard=name, url=url) from exc

    body, told = await tail(max(probe, 8))
    if told is not None:
        return told, 0
    if len(body) < 8 or body[-4:] != b"PAR1":
        raise FetchError(f"{url} does not end like a parquet file: check --base-url", shard=name, url=url)
    size = int.from_bytes(body[-8:-4], "little") + 8
    if size > len(body):
        body, _ = await tail(size)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(pa.BufferReader(b"PAR1" + body[-size:])).num_row_groups, size
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise FetchError(f"the parquet footer of {url} is unreadable ({exc})", shard=name, url=url) from exc
