"""``nanostream fetch``: turn CLI flags into a shard list, run the downloader, report.

Validates every input before any network work (bad input is ``ConfigError``, exit
2), records which dataset the folder holds (``.nanostream.json``), picks the event
loop, shows progress, and prints one summary line plus one line per failed shard.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

from .config import Config, check_url, get_dataset
from .errors import ConfigError
from .fetch import ShardResult, fetch_shards
from .progress import make_progress
from .retry import RetryPolicy
from .shards import FolderRecord, read_record, write_record

log = logging.getLogger(__name__)


def check_writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and prove we can write there, else ConfigError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=".nanostream.probe.", dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"data dir {path} cannot be created or written: {exc.strerror or exc}") from exc
    return path


def plan(args: argparse.Namespace, cfg: Config) -> tuple[Path, str, int, list[int], FolderRecord]:
    """Validate flags; return (data_dir, base_url, max_shard, indices, record)."""
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.num_shards < -1:
        raise ConfigError(f"-n must be -1 (all) or >= 0, got {args.num_shards}")
    if args.retries < 1:
        raise ConfigError(f"--retries must be >= 1, got {args.retries}")
    if args.max_shard is not None and args.max_shard < 0:
        raise ConfigError(f"--max-shard must be >= 0, got {args.max_shard}")
    dataset = get_dataset(args.dataset)
    hub_url = dataset.base_url(cfg.hf_endpoint)
    base_url = check_url(args.base_url) if args.base_url else hub_url
    data_dir = check_writable_dir((args.data_dir or cfg.data_dir(dataset.name)).expanduser())
    max_shard = args.max_shard
    if max_shard is None:
        record = read_record(data_dir)
        same_source = record is not None and record.base_url == base_url
        max_shard = record.max_shard if same_source else dataset.max_shard
    n = max_shard if args.num_shards == -1 else min(args.num_shards, max_shard)
    indices = [*range(n), max_shard]
    record = FolderRecord(base_url=base_url, max_shard=max_shard,
                          dataset=dataset.name if base_url == hub_url else None)
    return data_dir, base_url, max_shard, indices, record


def _run_loop(coro, loop: str):
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            coro.close()
            raise ConfigError("--loop uvloop needs the uvloop package (not available on Windows)") from exc
        return uvloop.run(coro)
    return asyncio.run(coro)


def summarize(results: list[ShardResult], data_dir: Path, seconds: float) -> str:
    ok = [r for r in results if r.error is None]
    got = sum(r.downloaded for r in results)
    fetched = sum(1 for r in ok if not r.skipped)
    retries = sum(r.attempts for r in results)
    return (f"fetch: {len(ok)}/{len(results)} shards present in {data_dir} ({fetched} downloaded, "
            f"{len(ok) - fetched} already there), {got / 1e6:.1f} MB in {seconds:.1f}s "
            f"({got / 1e6 / max(seconds, 1e-9):.1f} MB/s), {retries} retries, "
            f"{len(results) - len(ok)} failed")


def run_fetch(args: argparse.Namespace, cfg: Config) -> int:
    data_dir, base_url, max_shard, indices, record = plan(args, cfg)
    loop = args.loop or cfg.loop
    if args.quiet:  # retries and resumes are logged at INFO; --quiet keeps warnings and errors only
        logging.getLogger("nanostream").setLevel(logging.WARNING)
    write_record(data_dir, record)
    if not args.quiet:
        print(f"fetch: {len(indices) - 1} train shards + validation shard {max_shard} from {base_url} "
              f"into {data_dir} ({args.workers} connections, {loop} loop)", file=sys.stderr, flush=True)
    progress = make_progress(len(indices), quiet=args.quiet)
    retry = RetryPolicy(attempts=args.retries)
    start = time.monotonic()
    try:
        results = _run_loop(fetch_shards(indices, data_dir=data_dir, base_url=base_url, workers=args.workers,
                                         token=cfg.hf_token, retry=retry, verify=args.verify,
                                         progress=progress), loop)
    except KeyboardInterrupt:
        progress.close()
        print(f"nanostream: interrupted; partial downloads kept in {data_dir} and resumed by the same "
              "command", file=sys.stderr)
        return 130
    progress.close()
    for r in results:
        if r.error is not None:
            print(f"nanostream: failed {r.error}", file=sys.stderr)
    print(summarize(results, data_dir, time.monotonic() - start), flush=True)
    return 0 if all(r.error is None for r in results) else 1
