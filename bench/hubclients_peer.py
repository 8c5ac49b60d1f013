"""Run with the bench venv (datasets, huggingface_hub): ``datasets``' streaming loads of one Hub repo.

    HF_ENDPOINT=URL HF_HOME=TMP .bench/venv/bin/python bench/hubclients_peer.py ORG/NAME GLOB_TRAIN GLOB_VAL

Prints one JSON object: for ``load_dataset(ORG/NAME, streaming=True)`` and for
``load_dataset("parquet", data_files={split: hf://datasets/ORG/NAME/GLOB}, streaming=True)``,
each split's row count and the sha256 of its texts in order, or the error the load raised.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time


def digest(ds) -> dict:
    out = {}
    for split, rows in ds.items():
        h, n = hashlib.sha256(), 0
        for row in rows:
            h.update(row["text"].encode() + b"\n")
            n += 1
        out[split] = {"rows": n, "sha256": h.hexdigest()}
    return out


def main(repo: str, train: str, val: str) -> dict:
    import datasets
    import huggingface_hub

    out: dict = {"datasets": datasets.__version__, "huggingface_hub": huggingface_hub.__version__}
    for key, call in (
        ("repo", lambda: datasets.load_dataset(repo, streaming=True)),
        ("parquet", lambda: datasets.load_dataset("parquet", streaming=True, data_files={
            "train": f"hf://datasets/{repo}/{train}", "validation": f"hf://datasets/{repo}/{val}"})),
    ):
        t0 = time.monotonic()
        try:
            out[key] = digest(call())
        except Exception as exc:  # noqa: BLE001  (the bench prints what the load raised)
            out[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        out[key + "_s"] = round(time.monotonic() - t0, 2)
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
