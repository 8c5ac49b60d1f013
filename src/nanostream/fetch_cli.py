"""``nanostream fetch``: turn CLI flags into a shard list, run the downloader, report.

Validates every input before any network work (bad input is ``ConfigError``, exit
2), refuses a folder that holds another source's shards, records which dataset the
folder holds (``.nanostream.json``), checks the free space when it is tight, picks
the event loop, shows progress, and prints one summary line plus one line per
distinct failure. Ctrl-C and SIGTERM both keep the partial downloads and their
saved state (exit 130 and 143).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from .config import Config, check_url, get_dataset
from .errors import ConfigError
from .progress import make_progress
from .shards import FolderRecord, list_shards, read_record, shard_name, write_record

log = logging.getLogger(__name__)
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(Exception):
    """SIGTERM arrived: the fetch was cancelled like Ctrl-C."""


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
    record = read_record(data_dir)
    same_source = record is not None and record.base_url == base_url
    if record is not None and record.base_url and not same_source and list_shards(data_dir) and not args.verify:
        raise ConfigError(
            f"{data_dir} holds shards fetched from {record.base_url}, not {base_url}: fetch into another "
            f"--data-dir, or add --verify to check every shard there against {base_url} (and re-fetch those "
            "that differ)")
    max_shard = args.max_shard
    if max_shard is None:
        max_shard = record.max_shard if same_source and record is not None else dataset.max_shard
    n = max_shard if args.num_shards == -1 else min(args.num_shards, max_shard)
    indices = [*range(n), max_shard]
    record = FolderRecord(base_url=base_url, max_shard=max_shard,
                          dataset=dataset.name if base_url == hub_url else None)
    return data_dir, base_url, max_shard, indices, record


async def _until_sigterm(coro):
    """Run ``coro``; SIGTERM cancels it (cleanup runs as for Ctrl-C) and raises Terminated."""
    loop, task = asyncio.get_running_loop(), asyncio.ensure_future(coro)
    hit: list[int] = []

    def on_term() -> None:
        hit.append(1)
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    try:
        return await task
    except asyncio.CancelledError:
        if hit:
            raise Terminated from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _run_loop(coro, loop: str):
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            coro.close()
            raise ConfigError("--loop uvloop needs the uvloop package (not available on Windows)") from exc
        return uvloop.run(_until_sigterm(coro))
    return asyncio.run(_until_sigterm(coro))


def summarize(results, data_dir: Path, seconds: float) -> str:
    ok = [r for r in results if r.error is None]
    got = sum(r.downloaded for r in results)
    fetched = sum(1 for r in ok if not r.skipped)
    retries = sum(r.attempts for r in results)
    return (f"fetch: {len(ok)}/{len(results)} shards present in {data_dir} ({fetched} downloaded, "
            f"{len(ok) - fetched} already there), {got / 1e6:.1f} MB in {seconds:.1f}s "
            f"({got / 1e6 / max(seconds, 1e-9):.1f} MB/s), {retries} retries, "
            f"{len(results) - len(ok)} failed")


def failure_lines(results) -> list[str]:
    """One line per distinct failure (a host that is down fails every shard with one message)."""
    counts = Counter(str(r.error) for r in results if r.error is not None)
    return [f"nanostream: failed {msg}" if n == 1 else f"nanostream: failed ({n} shards) {msg}"
            for msg, n in counts.items()]


def _stopped(data_dir: Path, what: str) -> None:
    kept = any(p.name.endswith(".part") for p in data_dir.iterdir())
    tail = ("partial downloads and their state kept in "
            f"{data_dir}; the same command resumes them") if kept else "nothing partial was left"
    print(f"nanostream: {what}; {tail}", file=sys.stderr, flush=True)


def run_fetch(args: argparse.Namespace, cfg: Config) -> int:
    data_dir, base_url, max_shard, indices, record = plan(args, cfg)
    if not args.verify and all((data_dir / shard_name(i)).exists() for i in indices):
        write_record(data_dir, record)  # nothing to download: no aiohttp import, no event loop
        done = [SimpleNamespace(error=None, downloaded=0, skipped=True, attempts=0) for _ in indices]
        print(summarize(done, data_dir, 0.0), flush=True)
        return 0
    from .fetch import fetch_shards  # aiohttp is imported only when something is downloaded
    from .retry import RetryPolicy

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
                                         token=cfg.hf_token, token_hosts=cfg.token_hosts, retry=retry,
                                         verify=args.verify, progress=progress, check_space=True), loop)
    except KeyboardInterrupt:
        progress.close()
        _stopped(data_dir, "interrupted")
        return 130
    except Terminated:
        progress.close()
        _stopped(data_dir, "terminated (SIGTERM)")
        return EXIT_TERMINATED
    finally:
        progress.close()
    for line in failure_lines(results):
        print(line, file=sys.stderr)
    print(summarize(results, data_dir, time.monotonic() - start), flush=True)
    return 0 if all(r.error is None for r in results) else 1

