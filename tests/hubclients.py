"""The real huggingface_hub against a Hub endpoint, as a user runs it; prints one JSON object.

    HF_ENDPOINT=http://127.0.0.1:PORT python tests/hubclients.py ORG/NAME FILE [--gated] [--odd]

Run in a subprocess with HF_ENDPOINT (read at import time), HF_HOME (a temp cache) and
HF_HUB_DISABLE_TELEMETRY=1 set. Each call's outcome is a key of the output: what it
returned, or ``{"error": ExceptionClass}``. FILE is one parquet file of the repo; ``--gated``
runs only the calls a gated repo answers (info, tree) and the download it refuses; ``--odd`` adds
calls with control characters in the revision and path, each as ``{"error", "server"}``: the
exception's class and the server's message the client shows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def outcome(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001  (the test asserts on the class the client raised)
        return {"error": type(exc).__name__, "message": str(exc).splitlines()[0] if str(exc) else ""}


def server_said(fn) -> dict:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001  (the test asserts on the class and the server's message)
        return {"error": type(exc).__name__, "server": getattr(exc, "server_message", None)}
    return {"error": None}


def entry(e) -> dict:
    from huggingface_hub.hf_api import RepoFile

    if isinstance(e, RepoFile):
        lfs = dict(e.lfs) if e.lfs else None
        return {"type": "file", "path": e.path, "size": e.size, "oid": e.blob_id, "lfs": lfs}
    return {"type": "directory", "path": e.path, "oid": e.tree_id}


def main(repo: str, file: str, gated: bool, odd: bool = False) -> dict:
    import pyarrow.parquet as pq
    from huggingface_hub import (
        HfApi,
        HfFileSystem,
        get_hf_file_metadata,
        hf_hub_download,
        hf_hub_url,
        snapshot_download,
    )

    api = HfApi()
    out: dict = {}
    info = lambda **kw: api.dataset_info(repo, **kw).sha  # noqa: E731
    out["info"] = outcome(info)
    out["tree"] = outcome(lambda: [entry(e) for e in api.list_repo_tree(repo, repo_type="dataset", recursive=True)])
    if gated:
        out["download"] = outcome(lambda: hf_hub_download(repo, file, repo_type="dataset"))
        return out
    sha = out["info"]
    out["info_main"] = outcome(lambda: info(revision="main"))
    out["info_sha"] = outcome(lambda: info(revision=sha))
    out["info_other"] = outcome(lambda: info(revision="no-such-branch"))
    out["siblings"] = outcome(lambda: sorted(
        (s.rfilename, s.size, s.blob_id, s.lfs["sha256"] if s.lfs else None)
        for s in api.dataset_info(repo, files_metadata=True).siblings))
    out["tree_sha"] = outcome(lambda: [entry(e) for e in api.list_repo_tree(
        repo, repo_type="dataset", recursive=True, revision=sha)])
    out["tree_other"] = outcome(lambda: list(api.list_repo_tree(repo, repo_type="dataset", revision="nope")))
    folder = file.rsplit("/", 1)[0]
    out["tree_folder"] = outcome(lambda: [entry(e) for e in api.list_repo_tree(repo, folder, repo_type="dataset")])
    out["files"] = outcome(lambda: api.list_repo_files(repo, repo_type="dataset"))
    out["paths_info"] = outcome(lambda: [entry(e) for e in api.get_paths_info(
        repo, [file, folder, "no/such.parquet"], repo_type="dataset")])
    meta = outcome(lambda: get_hf_file_metadata(hf_hub_url(repo, file, repo_type="dataset")))
    out["metadata"] = meta if isinstance(meta, dict) else {"commit": meta.commit_hash, "etag": meta.etag,
                                                          "size": meta.size}
    out["download"] = outcome(lambda: sha256(Path(hf_hub_download(repo, file, repo_type="dataset")).read_bytes()))
    out["download_missing"] = outcome(lambda: hf_hub_download(repo, "no/such.parquet", repo_type="dataset"))
    if odd:
        out["odd_revision"] = server_said(lambda: info(revision="a\x00b\nc"))
        out["odd_tree"] = server_said(lambda: list(api.list_repo_tree(repo, "data/\x01x", repo_type="dataset")))

    def snapshot():
        where = Path(snapshot_download(repo, repo_type="dataset", local_dir=tempfile.mkdtemp()))
        return {p.relative_to(where).as_posix(): sha256(p.read_bytes()) for p in sorted(where.rglob("*"))
                if p.is_file() and ".cache" not in p.parts}
    out["snapshot"] = outcome(snapshot)

    fs = HfFileSystem()
    root = f"datasets/{repo}"
    out["fs_ls"] = outcome(lambda: sorted((e["name"], e["type"]) for e in fs.ls(f"{root}/{folder}")))
    out["fs_glob"] = outcome(lambda: sorted(fs.glob(f"{root}/**/*.parquet")))
    out["fs_glob_sha"] = outcome(lambda: sorted(fs.glob(f"{root}@{sha}/**/*.parquet")))
    out["fs_info"] = outcome(lambda: {k: v for k, v in fs.info(f"{root}/{file}", refresh=True).items()
                                      if k in ("name", "size", "type")})

    def read():
        with fs.open(f"{root}/{file}", "rb") as f:
            data = f.read()
        return {"sha256": sha256(data), "rows": pq.read_table(io.BytesIO(data)).num_rows}
    out["fs_open"] = outcome(read)
    out["fs_rows"] = outcome(lambda: sum(pq.ParquetFile(fs.open(p, "rb")).metadata.num_rows
                                         for p in fs.glob(f"{root}/**/*.parquet")))
    return out


if __name__ == "__main__":
    assert os.environ.get("HF_ENDPOINT"), "set HF_ENDPOINT"
    print(json.dumps(main(sys.argv[1], sys.argv[2], "--gated" in sys.argv[3:], "--odd" in sys.argv[3:])))
