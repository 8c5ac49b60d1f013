"""The reference downloader, re-implemented for comparison: a ``multiprocessing.Pool`` of blocking fetches.

Faithful to the nanochat-style original: one process per worker maps a blocking
download over the shard indices; each download streams the body with
``urllib.request`` in 1 MiB chunks into ``NAME.tmp`` and renames it; up to 5
attempts with sleeps of 2, 4, 8, 16 s between them; every error (404 included)
deletes the partial file and is retried; nothing written is ever verified.

    python -m bench.baseline_pool URL DIR N WORKERS     # downloads shards 0..N-1
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from functools import partial
from multiprocessing import Pool
from pathlib import Path

ATTEMPTS = 5
CHUNK = 1 << 20


def download(index: int, *, base_url: str, data_dir: Path) -> bool:
    name = f"shard_{index:05d}.parquet"
    path = data_dir / name
    if path.exists():
        return True
    tmp = data_dir / (name + ".tmp")
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(f"{base_url}/{name}", timeout=30) as response, tmp.open("wb") as f:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
            os.rename(tmp, path)
            return True
        except OSError as exc:  # URLError, HTTPError and socket errors are all OSError
            for leftover in (tmp, path):
                leftover.unlink(missing_ok=True)
            if attempt == ATTEMPTS:
                print(f"baseline: giving up on {name}: {exc}", file=sys.stderr)
                return False
            time.sleep(2**attempt)
    return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 4:
        print("usage: python -m bench.baseline_pool URL DIR N WORKERS", file=sys.stderr)
        return 2
    base_url, data_dir, n, workers = argv[0].rstrip("/"), Path(argv[1]), int(argv[2]), int(argv[3])
    data_dir.mkdir(parents=True, exist_ok=True)
    with Pool(processes=workers) as pool:
        ok = pool.map(partial(download, base_url=base_url, data_dir=data_dir), range(n))
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
