"""Where row-group counts are read and kept: parquet footers, local and remote, and the folder's census file.

What a run knows and when it asks is ``counts.py`` (``CountBook``); this module does the
reading and writing:

* ``DIR/.nanostream.rowgroups.json`` (``{"shard_00000.parquet": 52, ...}``, keyed by the
  file's path in the folder): ``read_census``, and ``save_census`` (merged; under
  ``census_lock``, ``DIR/.nanostream.rowgroups.lock``, which the processes on the folder
  take turns through). Read-only folders work: nothing is saved.
* the footer of a local file: ``local_count``;
* the footers of remote files: ``read_footers``, a suffix-range GET each -- the first
  shard's in two (its last 8 bytes, then exactly the footer), the others', 16 at a time, in
  one GET sized a quarter above the first footer (a second GET when a footer is larger): a
  few KB per shard, not the shard; paced by the host's quota (``quota.pace``). A
  ``nanostream serve`` mirror tells the count in ``X-Nanostream-Row-Groups``: then the first
  8-byte GET is all, and no footer is read here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import aiohttp
import filelock
import pyarrow as pa
import pyarrow.parquet as pq

from .._compat import TaskGroup
from ..errors import CorruptShardError, FetchError, HTTPStatusError, RetriesExhausted
from ..quota import MIDDLEWARES
from ..retry import Fatal, RateGate, Retries, RetryPolicy, Transient, check_status, classify, describe
from ..shards import BOOKKEEPING_PREFIX, write_json
from .access import Access, is_s3
from .catalog import DataFile

log = logging.getLogger(__name__)
CACHE_NAME = f"{BOOKKEEPING_PREFIX}.rowgroups.json"
LOCK_NAME = f"{BOOKKEEPING_PREFIX}.rowgroups.lock"
CONCURRENCY = 16
ROW_GROUPS_HEADER = "X-Nanostream-Row-Groups"  # a nanostream mirror's answers tell a parquet file's count


def read_census(data_dir: Path) -> dict[str, int]:
    """The folder's census file: ``{file path: row groups}`` ({} when absent or unreadable)."""
    try:
        raw = json.loads((data_dir / CACHE_NAME).read_text())
        return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}  # absent or unreadable: counted again (and rewritten)


async def census_lock(data_dir: Path) -> filelock.BaseFileLock | None:
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


def local_count(path: Path, remote_known: bool) -> int | None:
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


def save_census(data_dir: Path, counts: dict[str, int]) -> None:
    """Merge ``counts`` into the folder's census file (the caller holds ``census_lock``)."""
    old = read_census(data_dir)
    merged = {**old, **counts}
    if merged == old:
        return
    try:
        write_json(data_dir / CACHE_NAME, merged, sort_keys=True)
    except OSError as exc:
        log.warning("could not save row-group counts in %s (%s); continuing", data_dir / CACHE_NAME, exc)


async def read_footers(files: tuple[DataFile, ...], shards: list[int], access: Access,
                       retry: RetryPolicy) -> dict[int, int]:
    """``{shard: row groups}`` from the remote files' footers (see the module docstring), paced by the
    host's quota (``quota.pace``)."""
    await access.prepare(files[s].url for s in shards)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=retry.connect_timeout, sock_read=retry.read_timeout)
    out: dict[int, int] = {}
    sem = asyncio.Semaphore(CONCURRENCY)
    gate = RateGate(retry, "reading parquet footers")  # one wait line per rate-limit wait, not per file
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False, trust_env=True,
                                     middlewares=MIDDLEWARES) as session:
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
        self.told: int | None = None  # the count a mirror's answer told


async def _footer_count(r: Remote, retry: RetryPolicy, probe: int) -> tuple[int, int]:
    """(row groups, footer bytes with its 8-byte trailer) of the remote parquet file, from its
    last ``probe`` bytes, and a second GET if the footer is longer."""
    url = r.url
    tail = await _get_tail(r, max(probe, 8), retry)
    if r.told is not None:
        return r.told, 0
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
                told = resp.headers.get(ROW_GROUPS_HEADER, "")
                r.told = int(told) if told.isdigit() else None
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
