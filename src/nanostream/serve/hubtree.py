"""The git view of a mirrored ``hf://`` folder: the tree entries the Hub's API answers, with git's ids (an LFS
file's is its pointer file's blob id, another file's its bytes', a folder's the tree id of what is under it)."""

from __future__ import annotations

import functools
import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..shards import file_digest

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"


def git_oid(kind: str, body: bytes) -> str:
    """The id git gives an object of ``kind`` (blob, tree) with this body."""
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


@functools.cache
def blob_oid(path: Path, size: int, mtime_ns: int) -> str:
    """The git blob id of the bytes of one version (size, mtime) of a file (blocking: hashes it all)."""
    return file_digest(path, hashlib.sha1(f"blob {size}\0".encode()))


def tree_oid(children: Iterable[dict[str, Any]]) -> str:
    """The git tree id of a folder holding these entries (git's order: a folder sorts as ``name/``)."""
    def key(e: dict[str, Any]) -> bytes:
        name = e["path"].rpartition("/")[2].encode()
        return name + b"/" if e["type"] == "directory" else name

    body = b""
    for e in sorted(children, key=key):
        mode = b"40000" if e["type"] == "directory" else b"100644"
        body += mode + b" " + e["path"].rpartition("/")[2].encode() + b"\0" + bytes.fromhex(e["oid"])
    return git_oid("tree", body)


@dataclass(frozen=True)
class Held:
    """One file the mirror holds: its path in the repo, size, and sha256 (LFS) or git blob id (not in LFS)."""

    path: str
    size: int
    sha256: str | None
    blob: str = ""


Tree = dict[str, dict[str, Any]]  # tree entries by path, sorted


def listing(tree: Tree, path: str, recursive: bool) -> list[dict[str, Any]] | None:
    """Entries under folder ``path`` ("" = the root): its children, or every descendant with
    ``recursive``; None if ``path`` is no folder here."""
    if path and tree.get(path, {}).get("type") != "directory":
        return None
    prefix = f"{path}/" if path else ""
    return [e for p, e in tree.items() if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])]


def file_entry(f: Held) -> dict[str, Any]:
    if f.sha256:
        pointer = LFS_POINTER.format(sha256=f.sha256, size=f.size).encode()
        return {"type": "file", "oid": git_oid("blob", pointer), "size": f.size, "path": f.path,
                "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": len(pointer)}}
    return {"type": "file", "oid": f.blob, "size": f.size, "path": f.path}


@functools.lru_cache(maxsize=1)  # the mirror asks again with the same files until one appears or changes
def build_tree(files: Iterable[Held]) -> Tree:
    """Entries for ``files`` and every folder above them, folder ids computed bottom-up (read-only)."""
    entries = {f.path: file_entry(f) for f in files}
    children: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)  # by the folder they are in
    for path, entry in entries.items():
        children[path.rpartition("/")[0]].append(entry)
    folders = {path.rsplit("/", up)[0] for path in entries for up in range(1, path.count("/") + 1)}
    for d in sorted(folders, key=lambda d: -d.count("/")):  # deepest first: a folder's subfolders are done
        entries[d] = {"type": "directory", "oid": tree_oid(children[d]), "size": 0, "path": d}
        children[d.rpartition("/")[0]].append(entries[d])
    return dict(sorted(entries.items()))
