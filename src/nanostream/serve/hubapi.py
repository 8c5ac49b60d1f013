"""The Hub API subset ``nanostream serve`` answers for a folder fetched from an ``hf://`` dataset.

With ``HF_ENDPOINT=http://mirror:8000``, ``hf://datasets/ORG/NAME[@REV][/PATH]`` then lists and
downloads from the mirror as from the Hub: the same commit sha, paths, sizes and sha256, so
a cluster's nodes fetch a dataset once fetched by one of them. The folder's record
(``.nanostream.json``) says which repo, path and commit it holds; only those are answered:

    GET /api/datasets/ORG/NAME/revision/REV       {"id", "sha"}: the recorded commit (the mirror holds
                                                  one commit: every revision resolves to it)
    GET /api/datasets/ORG/NAME/tree/REV[/PATH]    the recorded files present in the folder (one page)
    GET|HEAD /datasets/ORG/NAME/resolve/REV/PATH  the file's bytes, with ShardFiles' headers

Anything else under those prefixes answers 404 with the Hub's ``X-Error-Code``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web

from ..errors import DatasetError
from ..sources.catalog import Catalog
from ..sources.record import read_catalog

PREFIX = "hf://datasets/"


class HubMirror:
    """Routes for the Hub API of the one dataset recorded in ``root``."""

    def __init__(self, root: Path, cat: Catalog, files) -> None:
        self.root, self.cat, self.files = root, cat, files
        parts = cat.source[len(PREFIX):].split("/")
        self.repo, self.path = "/".join(parts[:2]), "/".join(parts[2:])
        self.sha = cat.revision or ""

    @classmethod
    def of(cls, root: Path, files) -> HubMirror | None:
        """The mirror of ``root``'s recorded hf:// dataset, or None if it holds none."""
        try:
            cat = read_catalog(root)
        except DatasetError:
            return None
        if cat is None or not cat.source.startswith(PREFIX) or not cat.revision:
            return None
        return cls(root, cat, files)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/datasets/{org}/{name}/revision/{rev:.+}", self.revision)
        app.router.add_get("/api/datasets/{org}/{name}/tree/{rest:.+}", self.tree)
        app.router.add_get("/datasets/{org}/{name}/resolve/{rev}/{path:.+}", self.resolve, allow_head=True)

    def _repo(self, request: web.Request) -> None:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        if repo != self.repo:
            raise _error("RepoNotFound", f"Repository {repo} not found (this mirror holds {self.repo})")

    def _full(self, rel: str) -> str:
        return f"{self.path}/{rel}" if self.path else rel

    async def revision(self, request: web.Request) -> web.Response:
        self._repo(request)
        return web.json_response({"id": self.repo, "sha": self.sha})

    async def tree(self, request: web.Request) -> web.Response:
        self._repo(request)
        rev, _, path = request.match_info["rest"].partition("/")
        if rev != self.sha:
            raise _error("RevisionNotFound", f"Invalid rev id: {rev} (this mirror holds {self.sha})")
        path = path.strip("/")
        recursive = request.query.get("recursive", "").lower() == "true"
        present = await asyncio.to_thread(lambda: [f for f in self.cat.files if (self.root / f.path).is_file()])
        entries = []
        for f in present:
            full = self._full(f.path)
            rest = full[len(path) + 1:] if path else full
            if (path and not full.startswith(path + "/")) or (not recursive and "/" in rest):
                continue
            entry = {"type": "file", "oid": f.sha256 or "", "size": f.size, "path": full}
            if f.sha256:
                entry["lfs"] = {"oid": f.sha256, "size": f.size}
            entries.append(entry)
        if path and not entries:
            raise _error("EntryNotFound", f"{path} does not exist in this mirror")
        return web.json_response(entries)

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        self._repo(request)
        full = request.match_info["path"]
        prefix = f"{self.path}/" if self.path else ""
        if request.match_info["rev"] not in (self.sha, "main") or not full.startswith(prefix):
            raise _error("EntryNotFound", f"{full} is not in this mirror")
        return await self.files.respond(request, full[len(prefix):])


def _error(code: str, message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": message}), content_type="application/json",
                            headers={"X-Error-Code": code})
