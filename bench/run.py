"""`make bench`: every benchmark part in one run, each printing nanostream vs its baseline.

Parts: fetch (downloader vs process pool), stream (row-group producer vs bare pyarrow),
tokenizer (rustbpe+tiktoken vs HF tokenizers), loader (TokenDataset vs encode_batch and
the reference best-fit loop), cluster (bytes per node of a simulated 4-node run, node-aware
vs every node reading everything), order (row groups equal work leaves out, through stream()), mix (token
shares, throughput and first batch of weighted mixes), serve (the mirror vs http.server and nginx; 1000
concurrent GETs), datasets (listing 10,000 files from a Hub-like tree API and from moto's S3), hubclients
(Hugging Face ``datasets``' streaming load_dataset against ``nanostream serve`` of an hf:// folder; skipped
without the bench venv's ``datasets``), cache (2 ranks streaming 2 epochs through a cache_limit of a quarter
of the data vs unbounded, Belady vs LRU), scale (ClimbMix's 6,543 shards behind a Hub double with its quota:
first batch, requests before it and over an epoch, 1 and 2 nodes, against main at df8d4ea), nanochat
(nanochat's own loader vs the drop-in ``nanostream.nanochat``; skipped without ``NANOCHAT_DIR``).
``BENCH_QUICK=1`` runs smaller sizes; ``BENCH_PARTS=fetch,stream``
picks parts.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback

PARTS = ("fetch", "stream", "tokenizer", "loader", "cluster", "order", "mix", "cache", "serve", "datasets",
         "hubclients", "scale", "nanochat")


def main() -> int:
    quick = os.environ.get("BENCH_QUICK", "0") not in ("", "0")
    wanted = [p for p in os.environ.get("BENCH_PARTS", ",".join(PARTS)).split(",") if p]
    failed = []
    for part in wanted:
        if part not in PARTS:
            print(f"bench: unknown part {part!r}; choose from {', '.join(PARTS)}", file=sys.stderr)
            return 2
        print(f"\n=== bench: {part} {'(quick)' if quick else ''} ===", flush=True)
        t0 = time.monotonic()
        try:
            importlib.import_module(f"bench.{part}_bench").main(quick=quick)
        except Exception:  # noqa: BLE001  (one broken part must not hide the others' figures)
            traceback.print_exc()
            failed.append(part)
        print(f"--- {part}: {time.monotonic() - t0:.1f}s", flush=True)
    if failed:
        print(f"bench: parts that crashed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
