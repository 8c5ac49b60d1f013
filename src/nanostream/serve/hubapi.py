"""The Hub API that ``nanostream serve`` answers for a folder fetched from an ``hf://`` dataset: with
``HF_ENDPOINT`` at the mirror, nanostream, ``huggingface_hub`` and ``datasets`` list and download the recorded
commit as from the Hub (routes and answers: docs/serve.md). Bad requests get the Hub's JSON errors; no request
text ever goes into a response header."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote, urlencode

from aiohttp import web

from ..errors import DatasetError
from ..sources.catalog import Catalog, read_catalog
from ..sources.hub import parse_hub_url
from .files import ShardFiles
from .hubtree import Held, Tree, blob_oid, build_tree, listing

HUB_ROUTES = ("api", "datasets")  # the first part of the paths the Hub API answers
FORM_TYPES = ("", "application/x-www-form-urlencoded")
_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
PREFIX = "hf://datasets/"
PAGE_SIZE = 1000  # tree entries a page, as the Hub
EXPANDED_PAGE_SIZE = 50
REST = r"{rest:[\s\S]+}"  # the rest of the path, a quoted newline (%0A) included: it reaches the 404s below


def quoted(text: object, n: int = 120) -> str:
    """``text`` as Python writes it (control characters escaped), clipped to about ``n`` characters."""
    r = repr(text)
    return r if len(r) <= n else r[:n] + "..."


def hub_error(cls: type[web.HTTPException], message: str, *, code: str | None = None,
              commit: str | None = None) -> web.HTTPException:
    """An HTTP error of class ``cls`` saying ``message`` (``json_errors`` makes it the body ``{"error": message}``);
    ``code`` goes to ``X-Error-Code`` (a fixed name, never request text), ``commit`` to ``X-Repo-Commit``."""
    headers = {k: v for k, v in (("X-Error-Code", code), ("X-Repo-Commit", commit)) if v}
    return cls(text=message, headers=headers)


def bad_request(message: str) -> web.HTTPException:
    return hub_error(web.HTTPBadRequest, message)


async def asked_paths(request: web.Request) -> list[str]:
    """The ``paths`` of a paths-info body: JSON ``{"paths": [...]}`` (or one string), or a form with ``paths=``
    repeated; 400 for anything else of those types, 415 for another type, 413 past aiohttp's size limit."""
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except (ValueError, LookupError) as exc:  # not JSON, not in its charset, or an unknown charset
            raise bad_request(f"the body is not JSON ({quoted(str(exc), 80)}); send {{\"paths\": [...]}}") from None
        if not isinstance(body, dict) or "paths" not in body:
            raise bad_request("the JSON body must be an object with a list of strings under \"paths\"")
        paths = body["paths"]
    elif request.content_type in FORM_TYPES:
        try:
            paths = (await request.post()).getall("paths", None)
        except (ValueError, LookupError) as exc:
            raise bad_request(f"the form cannot be read ({quoted(str(exc), 80)}); send paths=...&paths=...") from None
        if paths is None:
            raise bad_request("the form has no paths= field")
    else:
        raise hub_error(web.HTTPUnsupportedMediaType, f"a paths-info body is JSON or a urlencoded form, not "
                        f"{quoted(request.content_type, 60)}")
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise bad_request(f"paths must be a list of strings, got {quoted(paths, 80)}")
    return paths


def cursor_start(request: web.Request) -> int:
    """Where a tree page starts: 0, or the entry a ``cursor`` from an earlier page's ``Link`` names."""
    cursor = request.query.get("cursor")
    if not cursor:
        return 0
    with contextlib.suppress(ValueError):  # not base64 (binascii.Error), not UTF-8, or past int's 4300 digits
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        if text.isascii() and text.isdigit():
            return int(text)
    raise bad_request(f"bad cursor {quoted(cursor, 80)}: use the Link of the previous page")


def next_link(request: web.Request, route: str, start: int, params: dict[str, str]) -> str:
    """The ``Link`` header to the page at ``start`` of ``route`` (a path the mirror built and quoted)."""
    host = request.headers.get("Host", "")
    if not _HOST.fullmatch(host):  # the client's Host is echoed only when it is a plain host[:port]
        sock = request.get_extra_info("sockname") or ("127.0.0.1", 0)
        host = f"[{sock[0]}]:{sock[1]}" if ":" in str(sock[0]) else f"{sock[0]}:{sock[1]}"
    scheme = "https" if request.secure else "http"
    query = urlencode({**params, "cursor": base64.urlsafe_b64encode(str(start).encode()).decode()})
    return f'<{scheme}://{host}{route}?{query}>; rel="next"'


@web.middleware
async def json_errors(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every 4xx under the Hub's routes (the file server's refusals, 405, 413, 416 included) gets a JSON
    ``{"error": ...}`` body, its headers kept."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not (400 <= exc.status < 500 and request.path.split("/")[1] in HUB_ROUTES):
            raise
        text = (exc.text or exc.reason or "").strip()
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return web.json_response({"error": text}, status=exc.status, headers=headers)


class HubMirror:
    """Routes for the Hub API of the one dataset recorded in ``root``."""

    def __init__(self, cat: Catalog, files: ShardFiles) -> None:
        self.root, self.cat, self.files = files.root, cat, files
        hp = parse_hub_url(cat.source)
        self.repo, self.path = hp.repo_id, hp.path
        self.sha = cat.revision or ""
        named = parse_hub_url(cat.name).revision if cat.name.startswith(PREFIX) else None
        self.revisions = {"main", "refs/heads/main", self.sha} | ({named} if named else set())

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
    def _target(self, request: web.Request) -> tuple[str, str]:
        """(revision, path) of ``.../ACTION/REV[/PATH]``, read from the raw path (REV may hold ``%2F``; ``main``
        where the route has none); 404 for another repo or an unknown revision."""
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        segs = request.raw_path.split("?", 1)[0].split("/")
        at = 5 if segs[1] == "api" else 4  # segs[at] is ACTION
        rev = unquote(segs[at + 1]) if at + 1 < len(segs) else "main"
        if repo != self.repo:
            raise hub_error(web.HTTPNotFound, f"Repository {quoted(repo)} not found (this mirror holds {self.repo})",
                            code="RepoNotFound")
        if rev not in self.revisions:
            raise hub_error(web.HTTPNotFound, f"Invalid rev id: {quoted(rev)} (this mirror holds {self.sha})",
                            code="RevisionNotFound")
        return rev, unquote("/".join(segs[at + 2:])).strip("/")

    def _missing(self, path: str) -> web.HTTPException:
        return hub_error(web.HTTPNotFound, f"{quoted(path)} does not exist at {self.sha} in this mirror",
                         code="EntryNotFound", commit=self.sha)

    async def _current(self) -> Tree:
        """The tree of the recorded files present now (rebuilt when a file appears or changes)."""
        def scan() -> tuple[Held, ...]:
            held = []
            for f in self.cat.files:
                local = self.root / f.path
                try:
                    st = local.stat()
                except OSError:
                    continue
                full = f"{self.path}/{f.path}" if self.path else f.path
                blob = "" if f.sha256 else blob_oid(local, st.st_size, st.st_mtime_ns)
                held.append(Held(full, st.st_size, f.sha256, blob))
            return tuple(held)

        return build_tree(await asyncio.to_thread(scan))

    # -- endpoints ----------------------------------------------------------------------------
    async def info(self, request: web.Request) -> web.Response:
        """``GET /api/datasets/ORG/NAME[/revision/REV]``: id, sha and siblings (``blobs``, ``expand``: serve.md)."""
        self._target(request)
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
        """``GET .../tree/REV[/PATH]``: one page of the folder's entries, the next page's URL in ``Link``."""
        rev, path = self._target(request)
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
        self._target(request)
        asked = await asked_paths(request)
        entries = await self._current()
        return web.json_response([entries[p] for p in (x.strip("/") for x in asked) if p in entries])

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        """``GET|HEAD /datasets/ORG/NAME/resolve/REV/PATH``: the file, with ``X-Repo-Commit``."""
        _, full = self._target(request)
        entry = (await self._current()).get(full)
        prefix = f"{self.path}/" if self.path else ""
        if entry is None or entry["type"] != "file":
            raise self._missing(full)
        return await self.files.respond(request, full[len(prefix):], headers={"X-Repo-Commit": self.sha})

