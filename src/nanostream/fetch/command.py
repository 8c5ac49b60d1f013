"""``nanostream fetch``: turn CLI flags into a catalog's files, run the downloader, report (docs/fetch.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from ..config import DEFAULT_DATASET, Config, check_url, get_dataset
from ..errors import AccessDenied, ConfigError, HTTPStatusError
from ..progress import make_progress
from ..sources.catalog import Catalog, DataFile, read_catalog, write_catalog
from ..sources.resolve import folder_name, numbered_catalog_for, open_catalog, url_prefix

log = logging.getLogger(__name__)
NANOCHAT_DATASET = "climbmix-400b"  # what nanochat trains on (its base_data_climbmix folder)


class Terminated(Exception):
    """SIGTERM arrived: the fetch was cancelled like Ctrl-C."""


def plan(args: argparse.Namespace, cfg: Config) -> tuple[Path, Catalog, tuple[DataFile, ...]]:
    """Validate flags, list (or read the folder's record of) the dataset; (data_dir, catalog, files to fetch)."""
    if args.num_shards < -1:
        raise ConfigError(f"-n must be -1 (all) or >= 0, got {args.num_shards}")
    for flag, value, least in (("--workers", args.workers, 1), ("--retries", args.retries, 1),
                               ("--max-shard", args.max_shard, 0)):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    if args.nanochat and args.data_dir is not None:
        raise ConfigError("--nanochat names the data folder (nanochat's): leave out --data-dir")
    dataset = args.dataset or (NANOCHAT_DATASET if args.nanochat else DEFAULT_DATASET)
    numbered = args.base_url is not None or args.max_shard is not None
    if numbered and "://" in dataset:
        raise ConfigError("--base-url and --max-shard apply to the built-in datasets, not to a URL --dataset")
    if numbered or "://" not in dataset:
        get_dataset(dataset)  # an unknown name: one line listing the built-in ones
    if args.base_url:
        check_url(args.base_url)
    folder = cfg.nanochat_data_dir(reading=False) if args.nanochat else args.data_dir
    data_dir = (folder or cfg.data_dir(folder_name(dataset))).expanduser()
    try:  # create it if needed and prove we can write there
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=".nanostream.probe.", dir=data_dir):
            pass
    except OSError as exc:
        raise ConfigError(f"data dir {data_dir} cannot be created or written: {exc.strerror or exc}") from exc
    recorded = read_catalog(data_dir)
    if numbered:  # from a mirror of a built-in dataset: --base-url defaults to the Hub, not the record
        base_url = args.base_url or get_dataset(dataset).base_url(cfg.hf_endpoint)
        cat = numbered_catalog_for(dataset, data_dir, base_url, args.max_shard, recorded, cfg,
                                   text_column=args.text_column, val=args.val)
    else:
        pinned = recorded is not None and recorded.name == dataset
        cat = asyncio.run(open_catalog(dataset, config=cfg, data_dir=data_dir if pinned else None,
                                       include=args.include, val=args.val, text_column=args.text_column))
    if recorded is not None and url_prefix(recorded) != url_prefix(cat):
        present = any((data_dir / f.path).exists() for f in recorded.files)
        if present and not args.verify:
            raise ConfigError(
                f"{data_dir} holds files of {recorded.name} fetched from {url_prefix(recorded)}, not {url_prefix(cat)}: "
                f"fetch into another --data-dir, or add --verify to check every file there against "
                f"{url_prefix(cat)} (and re-fetch those that differ)")
    return data_dir, cat, cat.pick(None if args.num_shards == -1 else args.num_shards)


def _run_loop(coro, loop: str):
    """Run ``coro`` on the ``--loop`` event loop; SIGTERM cancels it (cleanup runs as for Ctrl-C) and raises
    Terminated."""
    run = asyncio.run
    if loop == "uvloop":
        try:
            from uvloop import run
        except ImportError as exc:
            coro.close()
            raise ConfigError("--loop uvloop needs the uvloop package (not available on Windows)") from exc

    async def until_sigterm():
        task, terminated = asyncio.ensure_future(coro), []

        def on_term() -> None:
            terminated.append(True)
            task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
        try:
            return await task
        except asyncio.CancelledError:
            if terminated:
                raise Terminated from None
            raise
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)

    return run(until_sigterm())


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
    """One line per distinct failure: a host that is down or refuses access fails every shard with one
    error, and the same HTTP status with the same hint for several files is one line naming them."""
    groups: dict[tuple[int | None, str], list] = {}  # (the HTTP status or None, what was said) -> results
    for r in results:
        err = r.error
        if err is None:
            continue
        by_status = isinstance(err, HTTPStatusError) and not isinstance(err, AccessDenied) and err.__cause__
        groups.setdefault((err.status, str(err.__cause__)) if by_status else (None, str(err)), []).append(r)
    lines = []
    for (status, said), rs in groups.items():
        if len(rs) == 1:
            lines.append(f"nanostream: failed {rs[0].error}")
        elif status is not None:
            names = ", ".join(r.name for r in rs[:3]) + (f" and {len(rs) - 3} more" if len(rs) > 3 else "")
            where = (rs[0].error.url or "").rsplit("/", 1)[0]
            lines.append(f"nanostream: failed ({len(rs)} shards) {said} from {where}: {names}")
        else:
            lines.append(f"nanostream: failed ({len(rs)} shards) {said}")
    return lines


def run_fetch(args: argparse.Namespace, cfg: Config) -> int:
    if args.quiet:  # retries and resumes are logged at INFO; --quiet keeps warnings and errors only
        logging.getLogger("nanostream").setLevel(logging.WARNING)
    data_dir, cat, files = plan(args, cfg)
    loop = args.loop or cfg.loop
    write_catalog(data_dir, cat)  # before any byte: later fetches and every rank read this pin
    if not args.verify and all((data_dir / f.path).exists() for f in files):
        done = [SimpleNamespace(error=None, downloaded=0, skipped=True, attempts=0) for _ in files]
        print(summarize(done, data_dir, 0.0), flush=True)  # nothing to download: no aiohttp, no loop
        return 0
    from ..retry import RetryPolicy
    from ..sources.s3 import verification_summary
    from .many import fetch_files  # aiohttp is imported only when something is downloaded
    val = set(cat.splits().validation)  # none for a one-file dataset: fetch its train file
    if not args.quiet:
        pin = f" at commit {cat.revision[:12]}" if cat.revision and cat.revision != "main" else ""
        print(f"fetch: {sum(f not in val for f in files)} train files + {len(val)} validation file(s) of "
              f"{cat.name}{pin} into {data_dir} ({args.workers} connections, {loop} loop)",
              file=sys.stderr, flush=True)
        print(f"fetch: verification: {verification_summary(replace(cat, files=files))}", file=sys.stderr,
              flush=True)
    progress = make_progress(len(files), quiet=args.quiet)
    start = time.monotonic()
    try:
        results = _run_loop(fetch_files(files, data_dir=data_dir, workers=args.workers, token=cfg.hf_token,
                                        token_hosts=cfg.token_hosts, s3_endpoint=cfg.s3_endpoint,
                                        retry=RetryPolicy(attempts=args.retries), verify=args.verify,
                                        progress=progress, check_space=True), loop)
    except (KeyboardInterrupt, Terminated) as exc:
        progress.close()
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        kept = any(p.name.endswith(".part") for p in data_dir.iterdir())
        tail = (f"partial downloads and their state kept in {data_dir}; the same command resumes them" if kept
                else "nothing partial was left")
        print(f"nanostream: {what}; {tail}", file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    finally:
        progress.close()
    for line in failure_lines(results):
        print(line, file=sys.stderr)
    print(summarize(results, data_dir, time.monotonic() - start), flush=True)
    if any(isinstance(r.error, AccessDenied) for r in results):
        return 2  # the dataset cannot be used as given (gated, private, a token without access)
    return 0 if all(r.error is None for r in results) else 1

