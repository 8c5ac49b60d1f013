"""The ``nanostream`` command line: one subcommand per library entry point, each ``NanostreamError`` one
line on stderr and an exit code (0 ok, 1 work failed, 2 bad input, 130 Ctrl-C, 143 SIGTERM in fetch)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import DATASETS, DEFAULT_DATASET, LOOPS, Config
from .errors import ConfigError, NanostreamError

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 with usage; keep it to one line + hint
        self.exit(EXIT_USAGE, f"nanostream: error: {message} (see `{self.prog} --help`)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Append ``(default: X)`` unless the help already says its default or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nanostream", description="Async data path for small-LLM pretraining shards.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    f = sub.add_parser("fetch", help="download parquet shards", formatter_class=_Help)
    f.add_argument("-n", "--num-shards", type=int, default=8,
                   help="the first N train files to fetch (plus the validation files); -1 = all")
    f.add_argument("--workers", type=int, default=8, help="concurrent connections")
    f.add_argument("--dataset", default=None,
                   help=f"a built-in name ({', '.join(sorted(DATASETS))}), hf://datasets/ORG/NAME[@REV][/PATH] "
                   f"or s3://BUCKET/PREFIX/ (default: {DEFAULT_DATASET}; climbmix-400b with --nanochat)")
    f.add_argument("--include", default=None, help="glob over paths under PATH/PREFIX: keep only those "
                   "(hf:// and s3://; default: every *.parquet)")
    f.add_argument("--val", default=None, help="glob of the validation files (default: the files named as "
                   "validation, else the last file)")
    f.add_argument("--text-column", default=None, help="the text column (default: text, or the folder's record)")
    f.add_argument("--base-url", default=None, help="shard_XXXXX.parquet URL prefix for a built-in dataset "
                   "(default: the dataset's Hub URL)")
    f.add_argument("--max-shard", type=int, default=None, help="index of the validation (last) shard with "
                   "--base-url (default: the dataset's, or the folder's record)")
    f.add_argument("--data-dir", type=Path, default=None, help="where files go (default: "
                   "$NANOSTREAM_BASE_DIR/data/DATASET, a URL's parts as folders: hf/ORG/NAME/PATH, s3/BUCKET/PREFIX)")
    f.add_argument("--nanochat", action="store_true", help="into nanochat's data folder: "
                   "$NANOCHAT_BASE_DIR/base_data_climbmix (default ~/.cache/nanochat), or datasets/$NANOCHAT_DATASET; "
                   "nanochat reads exactly the verified shards there")
    f.add_argument("--verify", action="store_true", help="re-check files already present against the "
                   "catalog's sha256/MD5/size, else the server's sha256")
    f.add_argument("--quiet", action="store_true", help="no progress output, only errors and the summary")
    f.add_argument("--retries", type=int, default=8, help="attempts per shard before giving up")
    f.add_argument("--loop", choices=LOOPS, default=None, help="event loop (default: $NANOSTREAM_LOOP or asyncio)")

    s = sub.add_parser("serve", help="serve a folder of shards over HTTP (offline mirror)", formatter_class=_Help)
    s.add_argument("dir", type=Path, help="folder whose shard files to serve")
    s.add_argument("--host", default="127.0.0.1", help="address to bind")
    s.add_argument("--port", type=int, default=8000, help="port to bind, 0-65535 (0 = any free port)")
    s.add_argument("--max-connections", type=int, default=256,
                   help="connections open at once; more wait in the kernel's backlog")
    s.add_argument("--timeout", type=float, default=30.0,
                   help="seconds a client may take to send a request, stay idle, or stall reading")
    s.add_argument("--max-keepalive-requests", type=int, default=100,
                   help="requests per connection before the server closes it")

    c = sub.add_parser("cache", help="what data folders hold on disk; evict down to a size (--prune-to)",
                       formatter_class=_Help)
    c.add_argument("dir", type=Path, help="a data folder, or a folder of them (e.g. $NANOSTREAM_BASE_DIR/data)")
    c.add_argument("--prune-to", default=None, metavar="SIZE",
                   help="evict files that can be fetched again (never one in use) until each folder takes at "
                   "most SIZE: bytes, 40GB, 500MiB or 75%% of its filesystem (default: evict nothing)")

    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if not args.verbose:  # botocore says "Found credentials in ..." at INFO: keep errors to one line
        logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        cfg = Config.from_env()
        if args.command == "fetch":
            from .fetch.command import run_fetch

            return run_fetch(args, cfg)
        if args.command == "serve":
            from .serve.server import Limits, run_server

            limits = Limits(max_connections=args.max_connections, timeout=args.timeout,
                            max_keepalive_requests=args.max_keepalive_requests)
            return run_server(args.dir, args.host, args.port, limits)
        from .streaming.cache.command import run_cache  # the last of the three subcommands: cache

        return run_cache(args.dir, args.prune_to, cfg.cache_policy)
    except NanostreamError as exc:
        print(f"nanostream: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("nanostream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def console() -> None:
    """The ``nanostream`` console script: ``main``, then an exit that skips the interpreter's teardown
    (every file is durable before ``main`` returns)."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
