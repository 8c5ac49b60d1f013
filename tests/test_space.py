"""Disk space: the preflight that fails at once, and shards started only as their space can be reserved.

Runs on a small tmpfs (``mount -t tmpfs -o size=8m``), which needs root; skipped where mounting
is not allowed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nanostream.errors import DiskFullError
from nanostream.fetch.many import fetch_shards
from nanostream.retry import RetryPolicy
from nanostream.shards import shard_name

from datagen import make_big_shard

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05, connect_timeout=5, read_timeout=2.0)


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    except OSError:
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def remote(root: Path, n: int, mb: float) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    return [make_big_shard(root / shard_name(i), i, mb) for i in range(n)]


async def test_cli_fails_at_once_when_the_shards_cannot_fit(fault_server, tmp_path, small_disk):
    remote(tmp_path / "remote", 5, 2.5)
    srv = await fault_server()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nanostream.cli", "fetch", "-n", "4", "--max-shard", "4", "--base-url", srv.url,
        "--data-dir", str(small_disk), "--quiet", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err
    line = err.decode().strip()
    assert len(line.splitlines()) == 1 and "not enough free space" in line and "MB free" in line, line
    assert srv.count(shard_name(0)) == 0  # no GET was sent
    assert not list(small_disk.glob(".nanostream.*.part"))


async def test_shards_start_only_as_their_space_is_reserved(fault_server, tmp_path, small_disk):
    """3 x 3 MB on 8 MB: two shards complete; the third waits for them, then fails cleanly."""
    src = remote(tmp_path / "remote", 3, 3.0)
    srv = await fault_server(rate=8e6)
    results = await fetch_shards(range(3), data_dir=small_disk, base_url=srv.url, workers=3, retry=FAST)
    ok = [r for r in results if r.error is None]
    bad = [r for r in results if r.error is not None]
    assert len(ok) == 2 and len(bad) == 1
    assert isinstance(bad[0].error, DiskFullError) and "not enough free space" in str(bad[0].error)
    for r in ok:
        assert r.path.read_bytes() == src[r.index].read_bytes()
    assert not list(small_disk.glob(".nanostream.*.part"))
    # no deleted-but-open part file still holds blocks: the free space is all but the two shards
    st = os.statvfs(small_disk)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert used <= sum(r.path.stat().st_blocks * 512 for r in ok) + (64 << 10), used


async def test_stream_bigger_than_the_disk_under_cache_limit(fault_server, tmp_path, small_disk):
    """12.5 MB of shards through an 8 MB disk: without a limit the disk fills and the error names
    cache_limit; with one the stream reads every document, twice, evicting as it goes."""
    from nanostream import ReadAhead, Source, stream
    from nanostream.streaming.cache.usage import folder_bytes

    src = remote(tmp_path / "remote", 5, 2.5)
    srv = await fault_server(rate=50e6)
    kw = dict(data=Source(srv.url, folder=small_disk, num_shards=4, max_shard=4), retry=FAST)
    with pytest.raises(DiskFullError, match="cache_limit") as err:
        async for _ in stream("train", **kw):
            pass
    assert "not enough free space" in str(err.value)
    assert not list(small_disk.glob(".nanostream.*.part"))
    rows = [b async for b in stream("train", **kw, cache_limit="7MB", epochs=2, read_ahead=ReadAhead(files=1))]
    groups = sum(pq.ParquetFile(p).num_row_groups for p in src[:4])
    assert len(rows) == 2 * groups and folder_bytes(small_disk) <= 7_000_000
    assert {b.shard for b in rows} == {0, 1, 2, 3}
    for p in small_disk.glob("shard_*.parquet"):
        assert p.read_bytes() == src[int(p.stem.split("_")[1])].read_bytes()
