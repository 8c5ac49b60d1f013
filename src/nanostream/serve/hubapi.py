"""The Hub API that ``nanostream serve`` answers for a folder fetched from an ``hf://`` dataset.

With ``HF_ENDPOINT`` at the mirror, nanostream, ``huggingface_hub`` and ``datasets`` list and download
the recorded commit as from the Hub (routes and answers: docs/serve.md). ``hubrequest.py`` reads and
checks each request and makes the JSON errors; ``hubtree.py`` makes the git tree entries.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..errors import DatasetError
from ..sources.catalog import Catalog, read_catalog
from ..sources.hub import parse_hub_url
from .files import ShardFiles
from .hubrequest import asked_paths, cursor_start, hub_error, next_link, quoted, target
from .hubtree import Held, Tree, blob_oid_of_file, build_tree, listing

PREFIX = "hf://datasets/"
PAGE_SIZE = 1000  # tree entries a page, as the Hub
EXPANDED_PAGE_SIZE = 50
REST = r"{rest:[\s\S]+}"  # the rest of the path, a quoted newline (%0A) included: it reaches the 404s below


class HubMirror:
    """Routes for the Hub API of the one dataset recorded in ``root``."""

    def __init__(self, cat: Catalog, files: ShardFiles) -> None:
        self.root, self.cat, self.files = files.root, cat, files
        hp = parse_hub_url(cat.source)
        self.repo, self.path = hp.repo_id, hp.path
        self.sha = cat.revision or ""
        named = parse_hub_url(cat.name).revision if cat.name.startswith(PREFIX) else None
        self.revisions = {"main", "refs/heads/main", self.sha} | ({named} if named else set())
        self._tree: tuple[tuple, Tree] | None = None
        self._blobs: dict[tuple[str, int, int], str] = {}

    @classmethod
    def of(cls, files: ShardFiles) -> HubMirror | None:
        """The Hub API of the hf:// dataset recorded in the served folder, or None if it holds none."""
        try:
            cat = read_catalog(files.root)
        except DatasetError:
            return None
        if cat is None or not cat.source.startswith(PREFIX) or not cat.revision:
            return None
        return cls(cat, files)

    def add_routes(self, app: web.Application) -> None:
        """The Hub's routes for this dataset, added to ``app``."""
        base = "/api/datasets/{org}/{name}"
        app.router.add_get(base, self.info)
        app.router.add_get(base + "/revision/" + REST, self.info)
        app.router.add_get(base + "/tree/" + REST, self.tree)
        app.router.add_post(base + "/paths-info/" + REST, self.paths_info)
        app.router.add_get("/datasets/{org}/{name}/resolve/" + REST, self.resolve, allow_head=True)

    # -- what the request names ---------------------------------------------------------------
    def _target(self, request: web.Request, action: str) -> tuple[str, str]:
        """(revision, path) of ``.../ACTION/REV[/PATH]``; 404 for another repo or an unknown revision."""
        repo, rev, path = target(request, action)
        if repo != self.repo:
            raise hub_error(web.HTTPNotFound, f"Repository {quoted(repo)} not found (this mirror holds {self.repo})",
                            code="RepoNotFound")
        if rev not in self.revisions:
            raise hub_error(web.HTTPNotFound, f"Invalid rev id: {quoted(rev)} (this mirror holds {self.sha})",
                            code="RevisionNotFound")
        return rev, path

    def _missing(self, path: str) -> web.HTTPException:
        return hub_error(web.HTTPNotFound, f"{quoted(path)} does not exist at {self.sha} in this mirror",
                         code="EntryNotFound", commit=self.sha)

    async def _current(self) -> Tree:
        """The tree of the recorded files present now (rebuilt when a file appears or changes)."""
        def scan() -> tuple[tuple, list[Held]]:
            held = []
            for f in self.cat.files:
                local = self.root / f.path
                try:
                    st = local.stat()
                except OSError:
                    continue
                full = f"{self.path}/{f.path}" if self.path else f.path
                blob = "" if f.sha256 else self._blob(local, st.st_size, st.st_mtime_ns)
                held.append(Held(full, st.st_size, f.sha256, local, blob))
            return tuple((h.path, h.size, h.sha256, h.blob) for h in held), held

        key, held = await asyncio.to_thread(scan)
        if self._tree is None or self._tree[0] != key:
            self._tree = (key, build_tree(held))
        return self._tree[1]

    def _blob(self, local: Path, size: int, mtime: int) -> str:
        k = (str(local), size, mtime)
        if k not in self._blobs:
            self._blobs[k] = blob_oid_of_file(local)
        return self._blobs[k]

    # -- endpoints ----------------------------------------------------------------------------
    async def info(self, request: web.Request) -> web.Response:
        """``GET /api/datasets/ORG/NAME[/revision/REV]``: id, sha and siblings (``blobs=true``: with sizes
        and ids; ``expand=K``: only those keys)."""
        self._target(request, "revision")
        tree = await self._current()
        blobs = request.query.get("blobs", "").lower() == "true"
        siblings = []
        for e in tree.values():
            if e["type"] != "file":
                continue
            s: dict[str, Any] = {"rfilename": e["path"]}
            if blobs:
                s.update(size=e["size"], blobId=e["oid"])
                if "lfs" in e:
                    s["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": e["lfs"]["pointerSize"]}
            siblings.append(s)
        body: dict[str, Any] = {"id": self.repo, "author": self.repo.split("/")[0], "sha": self.sha,
                                "private": False, "gated": False, "disabled": False, "tags": [],
                                "siblings": siblings}
        wanted = request.query.getall("expand", []) + request.query.getall("expand[]", [])
        if wanted:
            body = {k: v for k, v in body.items() if k == "id" or k in wanted}
        return web.json_response(body)

    async def tree(self, request: web.Request) -> web.Response:
        """``GET .../tree/REV[/PATH]``: one page of the folder's entries (``recursive=true``: all below it),
        the next page's URL in ``Link``."""
        rev, path = self._target(request, "tree")
        recursive = request.query.get("recursive", "").lower() == "true"
        expand = request.query.get("expand", "").lower() == "true"
        start = cursor_start(request)
        entries = listing(await self._current(), path, recursive)
        if entries is None:
            raise self._missing(path)
        size = EXPANDED_PAGE_SIZE if expand else PAGE_SIZE
        headers = {}
        if start + size < len(entries):
            route = f"/api/datasets/{self.repo}/tree/{quote(rev, safe='')}" + (f"/{quote(path)}" if path else "")
            params = {k: "true" for k, on in (("recursive", recursive), ("expand", expand)) if on}
            headers["Link"] = next_link(request, route, start + size, params)
        return web.json_response(entries[start: start + size], headers=headers)

    async def paths_info(self, request: web.Request) -> web.Response:
        """``POST .../paths-info/REV``: the entries of the asked paths that exist, in the order asked."""
        self._target(request, "paths-info")
        asked = await asked_paths(request)
        entries = await self._current()
        return web.json_response([entries[p] for p in (x.strip("/") for x in asked) if p in entries])

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        """``GET|HEAD /datasets/ORG/NAME/resolve/REV/PATH``: the file, with ``X-Repo-Commit``."""
        _, full = self._target(request, "resolve")
        entry = (await self._current()).get(full)
        prefix = f"{self.path}/" if self.path else ""
        if entry is None or entry["type"] != "file":
            raise self._missing(full)
        return await self.files.respond(request, full[len(prefix):], headers={"X-Repo-Commit": self.sha})

