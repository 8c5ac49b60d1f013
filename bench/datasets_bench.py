"""Dataset listing speed: 10,000 files from a Hub-like server and an S3 server (moto), both on loopback.

    .venv/bin/python -m bench.datasets_bench [--quick]

Target (issue 11): listing 10,000 files, paginated, takes well under 5 s. Servers run
in subprocesses (tests/hubserver.py, ``python -m moto.server``) so only the client's
work is on this process's event loop; each figure is the median of interleaved rounds.
Also times the folder record (catalog_to_json + write + read back) for 10,000 files, and
fetches the same parquet files by ``hf://`` (the Hub-like server) and by ``s3://`` (moto)
with ``nanostream fetch`` in a subprocess: the same downloader, two sources (PASS when
every file arrives byte-identical by both). Prints figures and PASS/FAIL, asserts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nanostream.sources.catalog import read_catalog, write_catalog
from nanostream.sources.hub import hub_catalog

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 5.0


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start") from None
            time.sleep(0.1)


@contextlib.contextmanager
def hub_server(repo_dir: Path, page_size: int, rate: float | None = None) -> Iterator[str]:
    cmd = [sys.executable, str(ROOT / "tests" / "hubserver.py"), f"bench/data={repo_dir}",
           "--page-size", str(page_size), *(["--rate", str(rate)] if rate else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_repo(folder: Path, n: int) -> None:
    """``n`` small files named like a sharded Hub dataset, 10 folders (the listing never reads them)."""
    for i in range(n):
        path = folder / "data" / f"part-{i % 10:02d}" / f"{i:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"PAR1" + i.to_bytes(8, "little") + b"PAR1")


def fill_bucket(url: str, n: int) -> None:
    import botocore.session

    client = botocore.session.get_session().create_client("s3", region_name="us-east-1", endpoint_url=url)
    client.create_bucket(Bucket="bench")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: client.put_object(Bucket="bench", Key=f"corpus/part-{i % 10:02d}/{i:06d}.parquet",
                                                  Body=b"PAR1" + i.to_bytes(8, "little") + b"PAR1"), range(n)))
    client.close()


def timed(coro_fn) -> tuple[float, int]:
    t = time.perf_counter()
    cat = asyncio.run(coro_fn())
    return time.perf_counter() - t, len(cat.files)


def report(label: str, times: list[float], files: int) -> None:
    med = statistics.median(times)
    verdict = "PASS" if med < TARGET_S else "FAIL"
    print(f"{label}: {files} files, median {med:.3f}s over {len(times)} rounds "
          f"(min {min(times):.3f}s, max {max(times):.3f}s); target < {TARGET_S:.0f}s: {verdict}", flush=True)


def main(quick: bool = False) -> None:
    n = 2_000 if quick else 10_000
    rounds = 3 if quick else 5
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    with tempfile.TemporaryDirectory(prefix="nanostream-datasets-bench.") as tmp:
        repo = Path(tmp) / "repo"
        make_repo(repo, n)
        results: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        with hub_server(repo, 1000) as url1000, hub_server(repo, 100) as url100:
            for _ in range(rounds):  # interleaved rounds
                for label, url in (("hub tree, 1000 a page", url1000), ("hub tree, 100 a page", url100)):
                    t, k = timed(lambda u=url: hub_catalog("hf://datasets/bench/data", endpoint=u))
                    results.setdefault(label, []).append(t)
                    counts[label] = k
        for label, times in results.items():
            report(f"list {label}", times, counts[label])

        try:
            from nanostream.sources.s3 import s3_catalog
            with moto_server() as s3url:
                t0 = time.perf_counter()
                fill_bucket(s3url, n)
                print(f"(filled the moto bucket with {n} objects in {time.perf_counter() - t0:.1f}s)", flush=True)
                times = []
                for _ in range(rounds):
                    t, k = timed(lambda: s3_catalog("s3://bench/corpus/", endpoint=s3url))
                    times.append(t)
                report("list s3 ListObjectsV2 (moto), 1000 a page", times, k)
        except ImportError as exc:
            print(f"s3 listing skipped: {exc} (pip install -e '.[dev]')")

        with hub_server(repo, 1000) as url:
            cat = asyncio.run(hub_catalog("hf://datasets/bench/data", endpoint=url))
        folder = Path(tmp) / "folder"
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            write_catalog(folder, cat)
            again = read_catalog(folder)
            times.append(time.perf_counter() - t)
        assert again == cat
        size = (folder / ".nanostream.json").stat().st_size
        print(f"folder record of {len(cat.files)} files: write + read {statistics.median(times) * 1000:.0f} ms "
              f"(median of {rounds}), {size / 1e6:.2f} MB on disk", flush=True)
    first_batch_row(quick)
    try:
        fetch_row(quick)
    except ImportError as exc:
        print(f"fetch row skipped: {exc} (pip install -e '.[dev]')")


def fetch_row(quick: bool) -> None:
    """``nanostream fetch`` of the same files from the Hub-like server and from moto, interleaved rounds."""
    n, mb, rounds = (4, 4.0, 2) if quick else (8, 8.0, 3)
    for key, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                       ("AWS_EC2_METADATA_DISABLED", "true")):
        os.environ.setdefault(key, value)
    sys.path.insert(0, str(ROOT / "tests"))
    from datagen import make_big_shard

    with tempfile.TemporaryDirectory(prefix="nanostream-datasets-fetch.") as tmp:
        repo = Path(tmp) / "repo"
        paths = []
        for i in range(n):
            path = repo / "data" / f"part-{i % 2}" / f"{i:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            paths.append(make_big_shard(path, i, mb))
        total = sum(p.stat().st_size for p in paths)
        times: dict[str, list[float]] = {"hf://": [], "s3://": []}
        same = True
        with hub_server(repo, 1000) as hub, moto_server() as s3url:
            import botocore.session

            client = botocore.session.get_session().create_client("s3", region_name="us-east-1", endpoint_url=s3url)
            client.create_bucket(Bucket="bench")
            for p in paths:
                client.put_object(Bucket="bench", Key=f"corpus/{p.relative_to(repo / 'data').as_posix()}",
                                  Body=p.read_bytes(), ChecksumAlgorithm="SHA256")
            client.close()
            env = {**os.environ, "HF_ENDPOINT": hub, "AWS_ENDPOINT_URL": s3url}
            for r in range(rounds):
                for label, ds in (("hf://", "hf://datasets/bench/data/data"), ("s3://", "s3://bench/corpus/")):
                    out = Path(tmp) / f"{label[:2]}{r}"
                    t = time.perf_counter()
                    proc = subprocess.run([sys.executable, "-m", "nanostream.cli", "fetch", "--dataset", ds, "-n",
                                           "-1", "--data-dir", str(out), "--quiet"], env=env, capture_output=True,
                                          text=True)
                    times[label].append(time.perf_counter() - t)
                    same = same and proc.returncode == 0 and all(
                        (out / p.relative_to(repo / "data")).read_bytes() == p.read_bytes() for p in paths)
                    if proc.returncode:
                        print(f"fetch {label} failed: {proc.stderr.strip()}", flush=True)
        for label, ts in times.items():
            med = statistics.median(ts)
            print(f"fetch {n} files ({total / 1e6:.0f} MB) by {label}: median {med:.2f}s, "
                  f"{total / 1e6 / med:.0f} MB/s over {rounds} rounds", flush=True)
        ratio = statistics.median(times["s3://"]) / statistics.median(times["hf://"])
        print(f"fetch by s3:// / by hf:// time ratio {ratio:.2f}; every file byte-identical by both: "
              f"{'PASS' if same else 'FAIL'}", flush=True)


def first_batch_row(quick: bool) -> None:
    """Time to the first batch of ``stream(data=Source("hf://..."))`` from an empty folder (listing, census and
    the first file's download included) vs one file's download alone, the server throttled per response."""
    from nanostream import ReadAhead, Source, stream
    from nanostream.config import Config
    from nanostream.fetch.many import fetch_files

    n, mb, rate, rounds = (4, 4.0, 4e6, 2) if quick else (6, 8.0, 4e6, 3)
    sys.path.insert(0, str(ROOT / "tests"))
    from datagen import make_big_shard

    with tempfile.TemporaryDirectory(prefix="nanostream-datasets-ttfb.") as tmp:
        repo = Path(tmp) / "repo"
        (repo / "data").mkdir(parents=True)
        for i in range(n + 1):
            name = f"validation-{i:05d}.parquet" if i == n else f"train-{i:05d}.parquet"
            make_big_shard(repo / "data" / name, i, mb)
        times: dict[str, list[float]] = {"one file alone": [], "stream(): first batch": []}
        with hub_server(repo, 1000, rate) as url:
            cfg = Config(base_dir=Path(tmp), hf_endpoint=url)
            for r in range(rounds):
                t = time.perf_counter()
                s = stream("train", data=Source("hf://datasets/bench/data", folder=Path(tmp) / f"s{r}", num_shards=n),
                           read_ahead=ReadAhead(connections=4), config=cfg)

                async def first(s=s) -> None:
                    async with s:
                        await s.__anext__()

                asyncio.run(first())
                times["stream(): first batch"].append(time.perf_counter() - t)
                file = s.plan.files[0]
                t = time.perf_counter()
                [res] = asyncio.run(fetch_files([file], data_dir=Path(tmp) / f"f{r}", workers=4))
                times["one file alone"].append(time.perf_counter() - t)
                assert res.error is None, res.error
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in med.items():
            print(f"hf:// {k}: median {v:.2f}s over {rounds} rounds ({mb:.0f} MB files, {rate / 1e6:.0f} MB/s "
                  "per connection, 4 connections)", flush=True)
        ratio = med["stream(): first batch"] / med["one file alone"]
        print(f"hf:// first batch / one file alone = {ratio:.2f}; target <= 1.5: "
              f"{'PASS' if ratio <= 1.5 else 'FAIL'}", flush=True)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
