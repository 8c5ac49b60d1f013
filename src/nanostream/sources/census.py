"""Row-group counts of a split's shards, known before an epoch starts (for equal work per rank).

A node downloads only its own shards, but to give every rank the same number of row
groups it must know how many every shard has. The counts come, in this order, from:

1. ``DIR/.nanostream.rowgroups.json`` (``{"shard_00000.parquet": 52, ...}``, keyed by the
   file's path in the folder), written here;
2. the footer of a local shard file;
3. the footer of a remote shard, read with a suffix-range GET: the first shard's in two
   (its last 8 bytes, then exactly the footer), the others', 16 at a time, in one GET
   sized a quarter above the first footer (a second GET when a footer is larger): a
   few KB per shard, not the shard.

The ranks of a node take turns through ``DIR/.nanostream.rowgroups.lock``, so the
first one reads the footers and the others find them in the file. Read-only folders
work (nothing is saved; the footers are read again next time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
import filelock
import pyarrow as pa
import pyarrow.parquet as pq

from .._compat import TaskGroup
from ..errors import CorruptShardError, FetchError, HTTPStatusError, MissingShardError, RetriesExhausted
from ..retry import Fatal, RateGate, Retries, RetryPolicy, Transient, check_status, classify, describe
from ..shards import BOOKKEEPING_PREFIX, write_json
from .access import Access, is_s3
from .catalog import DataFile

log = logging.getLogger(__name__)
CACHE_NAME = f"{BOOKKEEPING_PREFIX}.rowgroups.json"
LOCK_NAME = f"{BOOKKEEPING_PREFIX}.rowgroups.lock"
CONCURRENCY = 16


async def row_group_counts(data_dir: Path, shards: tuple[int, ...], files: tuple[DataFile, ...],
                           access: Access | None = None, *, retry: RetryPolicy | None = None) -> dict[int, int]:
    """``{shard: number of row groups}`` for ``shards`` (indices into ``files``; see the module docstring)."""
    counts = _known(data_dir, shards, files)
    if len(counts) == len(shards):
        return counts
    lock = await _lock(data_dir)
    try:
        counts = _known(data_dir, shards, files)  # another rank may have filled it in meanwhile
        missing = [s for s in shards if s not in counts]
        remote: list[int] = []
        for s in missing:
            n = _local_count(data_dir / files[s].path, bool(files[s].url) and access is not None)
            if n is None:
                remote.append(s)
            else:
                counts[s] = n
        if remote:
            if access is None or not all(files[s].url for s in remote):
                path = data_dir / files[remote[0]].path
                raise MissingShardError(f"{path} is missing and no remote is known for {data_dir}: run "
                                        "`nanostream fetch` first, or pass dataset= (or base_url=)", path=path)
            counts.update(await _remote_counts(files, remote, access, retry or RetryPolicy()))
        _save(data_dir, {files[s].path: n for s, n in counts.items()})
    finally:
        if lock is not None:
            lock.release()
    return {s: counts[s] for s in shards}


def row_group_counts_blocking(*args: Any, **kwargs: Any) -> dict[int, int]:
    """``row_group_counts`` for code without an event loop (or inside one): runs on its own thread."""
    from .resolve import run_blocking

    return run_blocking(row_group_counts(*args, **kwargs))


def _known(data_dir: Path, shards: tuple[int, ...], files: tuple[DataFile, ...]) -> dict[int, int]:
    try:
        raw = json.loads((data_dir / CACHE_NAME).read_text())
        return {s: int(raw[files[s].path]) for s in shards if files[s].path in raw}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}  # absent or unreadable: count again (and rewrite it)


async def _lock(data_dir: Path) -> filelock.BaseFileLock | None:
    """The folder's census lock, held; None where the folder cannot hold a lock (read-only)."""
    try:
        os.makedirs(data_dir, exist_ok=True)
        lock = filelock.FileLock(data_dir / LOCK_NAME)
        while True:  # polled, so waiting for another rank's census can be cancelled
            try:
                lock.acquire(blocking=False)
                return lock
            except filelock.Timeout:
                await asyncio.sleep(0.02)
    except OSError as exc:
        log.debug("no census lock in %s (%s)", data_dir, exc)
        return None


def _local_count(path: Path, remote_known: bool) -> int | None:
    """Row groups in a local shard's footer; None if absent (or unreadable while a remote can tell)."""
    try:
        return pq.read_metadata(path).num_row_groups
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError, ValueError) as exc:
        if remote_known:
            return None  # the producer fetches the file again when it gets there
        raise CorruptShardError(f"{path} is not a readable parquet shard ({exc}): delete it and fetch it again "
                                "(`nanostream fetch`)", path=path) from exc


def _save(data_dir: Path, counts: dict[str, int]) -> None:
    try:
        old = json.loads((data_dir / CACHE_NAME).read_text())
        if not isinstance(old, dict):
            old = {}
    except (OSError, ValueError):
        old = {}
    merged = {**old, **counts}
    if merged == old:
        return
    try:
        write_json(data_dir / CACHE_NAME, merged, sort_keys=True)
    except OSError as exc:
        log.warning("could not save row-group counts in %s (%s); continuing", data_dir / CACHE_NAME, exc)


async def _remote_counts(files: tuple[DataFile, ...], shards: list[int], access: Access,
                         retry: RetryPolicy) -> dict[int, int]:
    await access.prepare(files[s].url for s in shards)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=retry.connect_timeout, sock_read=retry.read_timeout)
    out: dict[int, int] = {}
    sem = asyncio.Semaphore(CONCURRENCY)
    gate = RateGate(retry, "reading parquet footers")  # one wait line per rate-limit wait, not per file
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False, trust_env=True) as session:
        def remote(shard: int) -> Remote:
            return Remote(session, access, files[shard], shard, gate)

        out[shards[0]], size = await _footer_count(remote(shards[0]), retry, 8)
        guess = size + size // 4

        async def one(shard: int) -> None:
            async with sem:
                out[shard], _ = await _footer_count(remote(shard), retry, guess)

        try:
            async with TaskGroup() as tg:
                for s in shards[1:]:
                    tg.create_task(one(s))
        except Exception as exc:  # an ExceptionGroup: the first failure is the one to tell
            errors = getattr(exc, "exceptions", None)
            if errors:
                raise errors[0] from None
            raise
    return out


class Remote:
    """One remote file's footer reads: its URL, signed or token headers, its name for errors."""

    def __init__(self, session: aiohttp.ClientSession, access: Access, file: DataFile, shard: int,
                 gate: RateGate) -> None:
        self.session, self.access, self.shard, self.name, self.gate = session, access, shard, file.path, gate
        self.signed = is_s3(file.url)
        self.url = access.http_url(file.url)


async def _footer_count(r: Remote, retry: RetryPolicy, probe: int) -> tuple[int, int]:
    """(row groups, footer bytes with its 8-byte trailer) of the remote parquet file, from its
    last ``probe`` bytes, and a second GET if the footer is longer."""
    url = r.url
    tail = await _get_tail(r, max(probe, 8), retry)
    if len(tail) < 8 or tail[-4:] != b"PAR1":
        raise FetchError(f"{url} does not end like a parquet file: check --base-url", shard=r.name, url=url)
    size = int.from_bytes(tail[-8:-4], "little") + 8
    if size > len(tail):
        tail = await _get_tail(r, size, retry)
    try:
        return pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-size:])).num_row_groups, size
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise FetchError(f"the parquet footer of {url} is unreadable ({exc})", shard=r.name, url=url) from exc


async def _get_tail(r: Remote, n: int, retry: RetryPolicy) -> bytes:
    """The last ``n`` bytes of the remote file (a suffix Range GET), retried like a shard download."""
    retries, url = Retries(retry, r.gate), r.url
    while True:
        await r.gate.wait()
        try:
            async with r.session.get(r.access.target(url, r.signed), headers=r.access.tail(url, r.signed, n)) as resp:
                check_status(resp)
                body = await resp.read()
                whole = resp.status == 200 or resp.headers.get("Content-Range", "").endswith(f"/{len(body)}")
                if len(body) < n and not whole:  # a file shorter than n comes whole: that is fine
                    raise Transient(f"short answer: {len(body)} of the last {n} bytes")
                return body[-n:]
        except Exception as exc:  # sorted by classify; CancelledError is not an Exception
            if await retries.again(exc):
                continue
            if not classify(exc)[0]:
                if not isinstance(exc, Fatal):
                    raise
                raise HTTPStatusError(f"cannot read the footer of {url}: {describe(exc)}", status=exc.status or 0,
                                      shard=r.name, url=url) from exc
            raise RetriesExhausted(f"cannot read the footer of {url}: {retries.why(exc)}",
                                   attempts=retries.failures, shard=r.name, url=url) from exc
