"""Row-group counts: from local footers, from remote footers by two small ranged GETs, saved in the
folder's counts file and shared by the ranks of a node."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from nanostream.concurrency import run_sync
from nanostream.errors import CorruptShardError, HTTPStatusError
from nanostream.retry import RetryPolicy
from nanostream.shards import shard_name
from nanostream.sources.catalog import numbered_catalog
from nanostream.sources.counts import COUNTS_FILE, CountBook, book_for, read_counts_file
from nanostream.sources.credentials import Credentials

from datagen import make_shards
from servers import FaultServer


def files(url: str, n: int = 4):
    return numbered_catalog("t", url, n).files


async def row_group_counts(folder: Path, shards: tuple[int, ...], files: tuple, credentials=None, *, retry=None):
    """``{shard: row groups}``, as a stream asks its folder's book (``book_for``)."""
    return await book_for(folder, files).require(list(shards), credentials, retry)


async def test_remote_footers_read_once_for_two_readers_of_a_folder(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    make_shards(remote, 4, row_groups=3, rows=64, record=False)
    local = tmp_path / "local"
    async with FaultServer(remote) as srv:
        srv.files.row_groups = False  # a plain file server (the Hub's CDN): the counts are in the footers only
        a, b = await asyncio.gather(*(row_group_counts(local, (0, 1, 2), files(srv.url), Credentials()) for _ in range(2)))
        assert a == b == {0: 3, 1: 3, 2: 3}
        ranges = [r.range for r in srv.requests]
        assert all(r.startswith("bytes=-") for r in ranges)  # footers only, and once for both readers:
        assert len(ranges) == 4  # the first shard's in two GETs (8 bytes, the footer), the others' in one
        footer_bytes = sum(srv.bytes_sent.values())
        assert footer_bytes < 0.2 * sum((remote / shard_name(s)).stat().st_size for s in range(3))
        assert json.loads((local / COUNTS_FILE).read_text()) == {shard_name(s): 3 for s in range(3)}
        assert run_sync(row_group_counts(local, (2, 0), files(srv.url), Credentials())) == {2: 3, 0: 3}  # from the file
        assert len(srv.requests) == 4
        srv.script(shard_name(3), "status:404")
        with pytest.raises(HTTPStatusError, match=r"shard_00003\.parquet"):
            await row_group_counts(local, (3,), files(srv.url), Credentials())


async def test_a_remote_read_with_a_count_not_yet_saved_does_not_wait_for_its_own_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A count learned from a local footer waits up to SAVE_EVERY to be saved. A remote footer read meanwhile
    holds the folder's counts lock; it saves that count too, under the lock it holds, and does not wait for
    the lock a second time (a reader waiting at the bound for counts hung there forever, and every process
    of the folder with it)."""
    monkeypatch.setattr("nanostream.sources.counts.SAVE_EVERY", 1e9)  # nothing is saved unless forced
    make_shards(tmp_path / "remote", 2, row_groups=3, rows=8, record=False)
    async with FaultServer(tmp_path / "remote") as srv:
        book = CountBook(tmp_path / "local", files(srv.url, 2))
        book.learn(0, 3)
        await asyncio.wait_for(book.read_remote([1], Credentials(), None), 20)
    assert book.snapshot() == {0: 3, 1: 3}
    assert read_counts_file(tmp_path / "local") == {shard_name(0): 3, shard_name(1): 3}


async def test_local_footers_and_a_corrupt_local_shard(tmp_path: Path) -> None:
    make_shards(tmp_path, 3, row_groups=5, rows=2)
    assert await row_group_counts(tmp_path, (0, 1), files("")) == {0: 5, 1: 5}
    (tmp_path / shard_name(2)).write_bytes(b"PAR1 junk PAR1")
    with pytest.raises(CorruptShardError, match=r"shard_00002\.parquet"):
        await row_group_counts(tmp_path, (2,), files(""))


async def test_hub_style_redirect_and_a_retried_503(tmp_path: Path) -> None:
    make_shards(tmp_path / "remote", 2, row_groups=5, rows=8, record=False)
    async with FaultServer(tmp_path / "remote", redirect=True) as srv:
        srv.script(shard_name(1), "status:503")
        access = Credentials("t", {srv.url.split("://")[1]})
        counts = await row_group_counts(tmp_path / "local", (0, 1), files(srv.url, 2), access,
                                        retry=RetryPolicy(base=0.01))
    assert counts == {0: 5, 1: 5}
    assert [r.status for r in srv.requests if r.path == "/" + shard_name(1)] == [503, 302]


async def test_a_mirror_tells_the_counts_so_no_footer_is_read(tmp_path: Path) -> None:
    """``nanostream serve`` answers every parquet file with ``X-Nanostream-Row-Groups`` (its footer read once
    by the mirror): counting through it takes one 8-byte GET a file, whatever the footer's size."""
    make_shards(tmp_path / "remote", 3, row_groups=7, rows=4, record=False)
    async with FaultServer(tmp_path / "remote") as srv:
        counts = await row_group_counts(tmp_path / "local", (0, 1, 2), files(srv.url, 3), Credentials())
        assert counts == {0: 7, 1: 7, 2: 7}
        assert [r.range for r in srv.requests] == ["bytes=-8"] * 3


@pytest.mark.parametrize("quota, files, told", [((24, 1), 20, False), ((17, 1), 2, True)])
async def test_footer_reads_slow_down_before_the_quota_runs_out(tmp_path: Path, caplog, quota: tuple[int, int],
                                                                files: int, told: bool) -> None:
    """The Hub double's resolver quota, as the Hub sends it on every answer (``RateLimit-Policy``: q a 1-second
    window; ``RateLimit``: r left, t to the window's end): the footers are read without a single 429. The
    requests slow down as r falls (24: spread over the window), and never use the last 16 of a window (a
    reserve for other processes behind the address): with 17 a window, each request past the first waits
    for the next window, and each such wait is told in one WARNING line."""
    import logging

    from nanostream.sources.catalog import numbered_catalog

    from hubserver import HubServer

    caplog.set_level(logging.WARNING)
    async with HubServer(quota={"resolvers": quota}) as hub:
        hub.add_numbered("org/many", files, row_groups=3, rows=2)
        cat = numbered_catalog("many", f"{hub.url}/datasets/org/many/resolve/main", files)
        counts = await row_group_counts(tmp_path, tuple(range(files)), cat.files, Credentials())
        stats = hub.stats()
    assert counts == {s: 3 for s in range(files)} and stats["resolve"] >= files
    assert stats["limited"] == 0
    waits = [r.getMessage() for r in caplog.records if "quota" in r.getMessage()]
    assert bool(waits) == told and all(f"resolvers quota ({quota[0]} per 1s" in w for w in waits)
    assert len(waits) <= stats["resolve"]  # one line per window at most
