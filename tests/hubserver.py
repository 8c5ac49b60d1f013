"""A Hub-like HTTP server on 127.0.0.1 for tests and benches, modelling the Hub as huggingface_hub parses it.

    async with HubServer() as hub:                      # hub.url is HF_ENDPOINT
        sha = hub.add_repo("org/name", folder)          # commits the folder's files, moves "main" there
        sha2 = hub.commit("org/name", other_folder)     # a later commit ("main" moves, sha stays valid)
        hub.add_repo("org/private", folder, private=True)   # needs "Authorization: Bearer <hub.token>"
        hub.add_repo("org/gated", folder, gated=True)       # listed by anyone; downloads refused (below)
        hub.fail_next(503, 503)                         # the next two API requests answer 503
        hub.rate_limit(2.0, "resolvers")                # from the next /resolve/, 2 s of 429 RateLimit t=N
        hub.requests                                    # [Seen(method, host, path_qs, authorization, remote, status)]

    HubServer(quota={"resolvers": (3000, 300)}, latency=0.05)  # the real Hub's quota and answer time
        hub.add_numbered("karpathy/climbmix-400b-shuffle", 6543, row_groups=52)   # shards made on request

Quotas, as the Hub keeps them: one fixed window of ``w`` seconds per client address and kind
("resolvers": /resolve/, "api": /api/), starting at that address's first request of the kind;
every answer of a kind with a quota carries ``RateLimit-Policy: "fixed window";"KIND";q=Q;w=W``
and ``RateLimit: "KIND";r=LEFT;t=SECONDS_TO_THE_WINDOW_END``; the request past ``q`` answers 429
with ``r=0``. ``latency`` delays every answer. A numbered repo's ``shard_XXXXX.parquet`` files are
made when first asked for (``row_groups`` row groups of ``rows`` documents ``doc:<i>:<g>:<r> ...``,
the same bytes every time; their sha256 and size are kept, their bytes only for the latest few),
so thousands of them cost nothing until read; it answers /resolve/ and its info, not the tree API.

Endpoints, answered as the Hub does (tests/test_hub_clients.py runs the real huggingface_hub on them):

    GET /api/datasets/ORG/NAME[/revision/REV]     {"id", "author", "sha", "private", "gated",
        "siblings": [{"rfilename"[, "size", "blobId", "lfs"]}]}; 404 X-Error-Code: RevisionNotFound
    GET /api/datasets/ORG/NAME/tree/REV[/PATH]    entries {"type": "file"|"directory", "oid", "size",
        "path"[, "lfs": {"oid", "size", "pointerSize"}]}; ?recursive=true walks subfolders (folders
        included); ``page_size`` entries a page, the next page in ``Link: <...&cursor=...>; rel="next"``
        (on host ``next_host`` when set); 404 EntryNotFound
    POST /api/datasets/ORG/NAME/paths-info/REV    form or JSON paths=: the entries of those that exist
    GET|HEAD /datasets/ORG/NAME/resolve/REV/PATH  302 to the CDN host (``localhost``, another origin, as
        the Hub's CDN is) /cdn/<sha256>, with X-Linked-Etag: "<sha256>", X-Linked-Size and X-Repo-Commit;
        /cdn/ serves the bytes (Range, If-Range) via nanostream.serve.server

Git ids are git's, computed here apart from nanostream's (``nanostream.serve.hubtree``): a file's
``oid`` is its git blob id, and a ``*.parquet`` file is stored in LFS, so its blob is the LFS
pointer file (``pointerSize`` its length, ``lfs.oid`` the sha256); a folder's ``oid`` is its git
tree id. A missing repo answers 401 to a request without a valid token and 404 to one with it (the
Hub does not tell a missing repo from a private one), X-Error-Code RepoNotFound. A gated repo, as
the Hub's: its info and tree answer without a token, ``/resolve/`` answers 401 without a token and
403 with one that has not been granted access (``hub.repos[ID].granted = True`` grants it), both
X-Error-Code GatedRepo. REV and PATH may be URL-quoted (``%2F``).

Subprocess mode (benches)::

    python tests/hubserver.py [ORG/NAME=DIR ...] [--numbered ORG/NAME=COUNT] [--row-groups N] [--rows N]
                              [--quota KIND=Q/W] [--latency S] [--page-size N] [--rate BYTES_PER_S]

prints the endpoint URL alone on its first stdout line and serves until SIGINT/SIGTERM;
``GET /_hub/stats`` answers its request log in short (``stats()``), ``POST /_hub/reset`` empties it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import io
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode

import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web

from nanostream.serve.files import ShardFiles, parse_range

from servers import iter_file

TOKEN = "hf_test_token"
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n"


@dataclass
class Seen:
    method: str
    host: str
    path_qs: str
    authorization: str | None
    remote: str = ""
    status: int = 0  # the answer's (0 until answered)


@dataclass
class Repo:
    commits: dict[str, list[dict]] = field(default_factory=dict)  # sha -> tree entries, sorted by path
    refs: dict[str, str] = field(default_factory=dict)
    private: bool = False
    gated: bool = False
    granted: bool = False  # a gated repo whose terms the token's user accepted


@dataclass
class Numbered:
    """A repo of ``count`` numbered shards made on request (``HubServer.add_numbered``): one template file,
    uncompressed and without dictionaries, whose ``doc:00000:`` ids are rewritten to each shard's number
    (the same length, so the file stays valid), so a shard costs a copy and a sha256."""

    count: int
    row_groups: int
    rows: int
    sha: str = "0" * 40
    made: dict[int, tuple[str, int]] = field(default_factory=dict)  # index -> (sha256, size)
    recent: dict[int, bytes] = field(default_factory=dict)  # the latest few files' bytes
    template: bytes = b""

    def shard(self, index: int) -> bytes:
        data = self.recent.get(index)
        if data is None:
            if not self.template:
                texts = [f"doc:00000:{g}:{r} " + " ".join(["numbered"] * (8 + (g + r) % 8))
                         for g in range(self.row_groups) for r in range(self.rows)]
                buf = io.BytesIO()
                pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), buf, row_group_size=self.rows,
                               compression="none", use_dictionary=False)
                self.template = buf.getvalue()
            data = self.template.replace(b"doc:00000:", f"doc:{index:05d}:".encode())
            self.made[index] = (hashlib.sha256(data).hexdigest(), len(data))
            self.recent[index] = data
            while len(self.recent) > 64:
                self.recent.pop(next(iter(self.recent)))
        return data


def _hashes(path: Path) -> tuple[str, str]:
    """(sha256 of the bytes, git blob id of the bytes)."""
    h, g = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            g.update(block)
    return h.hexdigest(), g.hexdigest()


def _git_tree(children: list[dict]) -> str:
    """git's tree id: entries "MODE NAME\\0<20 bytes>", sorted by name with folders as "NAME/"."""
    rows = sorted((e["path"].rsplit("/", 1)[-1] + ("/" if e["type"] == "directory" else ""), e) for e in children)
    body = b"".join((b"40000 " if e["type"] == "directory" else b"100644 ") + name.rstrip("/").encode() + b"\0"
                    + bytes.fromhex(e["oid"]) for name, e in rows)
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()


class HubServer:
    def __init__(self, *, token: str = TOKEN, page_size: int = 1000, next_host: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, rate: float | None = None,
                 quota: dict[str, tuple[int, float]] | None = None, latency: float = 0.0) -> None:
        self.token, self.page_size, self.next_host = token, page_size, next_host
        self.host, self.port = host, port
        self.repos: dict[str, Repo] = {}
        self.numbered: dict[str, Numbered] = {}
        self.requests: list[Seen] = []
        self.quota, self.latency = dict(quota or {}), latency
        self._windows: dict[tuple[str, str], list[float]] = {}  # (address, kind) -> [window start, used]
        self._faults: deque[int] = deque()
        self._limits: list[list] = []  # [kind, seconds, until or None]: windows of 429s, in order
        self._content: dict[str, str] = {}  # a file entry's oid -> its sha256 (the blob's name)
        self._blobs = Path(tempfile.mkdtemp(prefix="nanostream-hub-blobs."))
        writer = functools.partial(_throttled, rate=rate) if rate else None  # bytes/s per response
        self._files = ShardFiles(self._blobs, body_writer=writer)
        self._runner: web.AppRunner | None = None
        self.url = self.cdn = ""

    # -- repos --------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, folder: Path, *, private: bool = False, gated: bool = False,
                 ref: str = "main") -> str:
        self.repos[repo_id] = Repo(private=private, gated=gated)
        return self.commit(repo_id, folder, ref=ref)

    def commit(self, repo_id: str, folder: Path, *, ref: str = "main") -> str:
        """Snapshot every file under ``folder`` as a new commit of ``repo_id``; ``ref`` moves to it."""
        entries, dirs = [], set()
        for root, _, names in os.walk(folder):
            for n in names:
                path = Path(root) / n
                rel = path.relative_to(folder).as_posix()
                sha, blob = _hashes(path)
                if not (self._blobs / sha).exists():
                    shutil.copyfile(path, self._blobs / sha)
                size = path.stat().st_size
                entry = {"type": "file", "oid": blob, "size": size, "path": rel}
                if n.endswith(".parquet"):  # in LFS: git holds the pointer file
                    pointer = LFS_POINTER.format(sha=sha, size=size).encode()
                    entry["oid"] = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
                    entry["lfs"] = {"oid": sha, "size": size, "pointerSize": len(pointer)}
                self._content[entry["oid"]] = sha
                entries.append(entry)
                parts = rel.split("/")[:-1]
                dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        for d in sorted(dirs, key=lambda d: -d.count("/")):  # deepest first
            children = [e for e in entries if e["path"].rpartition("/")[0] == d]
            entries.append({"type": "directory", "oid": _git_tree(children), "size": 0, "path": d})
        entries.sort(key=lambda e: e["path"])
        repo = self.repos[repo_id]
        digest = hashlib.sha1(f"{repo_id}:{len(repo.commits)}".encode())
        for e in entries:
            digest.update(f"{e['path']}:{e.get('lfs', {}).get('oid', e['oid'])}".encode())
        sha = digest.hexdigest()
        repo.commits[sha] = entries
        repo.refs[ref] = sha
        return sha

    def add_numbered(self, repo_id: str, count: int, *, row_groups: int = 52, rows: int = 24) -> None:
        """A repo of ``count`` files ``shard_00000.parquet``... made when first asked for (module docstring)."""
        self.numbered[repo_id] = Numbered(count, row_groups, rows, hashlib.sha1(repo_id.encode()).hexdigest())

    def stats(self) -> dict:
        """The request log in short: requests per kind, 429s, /resolve/ requests per file path and per client
        (its ``Authorization``: a test tells its nodes apart by their HF_TOKEN)."""
        per_path: dict[str, int] = {}
        by: dict[str, int] = {}
        for seen in self.requests:
            if "/resolve/" in seen.path_qs:
                name = seen.path_qs.split("/resolve/", 1)[1].split("/", 1)[-1]
                per_path[name] = per_path.get(name, 0) + 1
                who = (seen.authorization or "").removeprefix("Bearer ")
                by[who] = by.get(who, 0) + 1
        return {"requests": len(self.requests), "resolve": sum(per_path.values()),
                "api": sum(s.path_qs.startswith("/api/") for s in self.requests),
                "limited": sum(s.status == 429 for s in self.requests), "per_path": per_path, "resolve_by": by}

    def _counted(self, remote: str, kind: str) -> dict[str, str] | None:
        """The quota headers of this answer (None: no quota for ``kind``); ``r`` is left after it."""
        if kind not in self.quota:
            return None
        q, w = self.quota[kind]
        now = time.monotonic()
        window = self._windows.get((remote, kind))
        if window is None or now >= window[0] + w:
            window = self._windows[(remote, kind)] = [now, 0.0]
        window[1] += 1
        left = max(0, q - int(window[1]))
        return {"RateLimit-Policy": f'"fixed window";"{kind}";q={q};w={int(w)}',
                "RateLimit": f'"{kind}";r={left};t={math.ceil(window[0] + w - now)}',
                **({"X-Over": "1"} if window[1] > q else {})}

    def fail_next(self, *statuses: int) -> None:
        """The next API requests answer these statuses, one each."""
        self._faults.extend(statuses)

    def rate_limit(self, seconds: float, kind: str = "api") -> None:
        """A window of ``seconds`` from the next request of ``kind`` ("api": /api/, "resolvers": /resolve/)
        in which those requests answer 429 as the Hub does: the IETF ``RateLimit: "KIND";r=0;t=<seconds
        left>`` and ``RateLimit-Policy`` headers, no Retry-After. Windows queue up in call order."""
        self._limits.append([kind, seconds, None])

    def _limited(self, kind: str) -> float:
        """Seconds left in the current window for ``kind`` (0: not limited)."""
        now = time.monotonic()
        while self._limits and self._limits[0][0] == kind:
            window = self._limits[0]
            if window[2] is None:
                window[2] = now + window[1]
            if now < window[2]:
                return window[2] - now
            self._limits.pop(0)
        return 0.0

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> HubServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{port}"
        self.cdn = f"http://localhost:{port}"  # another origin, as the Hub's CDN is
        return self

    async def aclose(self) -> None:
        try:
            if self._runner is not None:
                await self._runner.cleanup()
        finally:
            shutil.rmtree(self._blobs, ignore_errors=True)

    async def __aenter__(self) -> HubServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- requests -----------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.host, request.raw_path, request.headers.get("Authorization"),
                    request.remote or "")
        self.requests.append(seen)
        if self.latency:
            await asyncio.sleep(self.latency)
        resp = await self._answer(request, seen.authorization)
        seen.status = resp.status
        return resp

    async def _answer(self, request: web.Request, auth: str | None) -> web.StreamResponse:
        if request.path == "/_hub/stats":
            return web.json_response(self.stats())
        if request.path == "/_hub/reset" and request.method == "POST":
            self.requests.clear()
            return web.json_response({})
        segs = [unquote(s) for s in request.raw_path.split("?", 1)[0].split("/")[1:]]
        if segs[:1] == ["cdn"] and len(segs) == 2:
            return await self._files.respond(request, segs[1])
        if segs[:1] == ["cdn"] and len(segs) == 5 and segs[1] == "n":
            return self._numbered_file(request, f"{segs[2]}/{segs[3]}", segs[4])
        api = segs[:2] == ["api", "datasets"]
        if api:
            segs = segs[1:]
        if len(segs) < 3 or segs[0] != "datasets" or (len(segs) < 5 and not (api and len(segs) == 3)):
            return _error(404, "EntryNotFound", "no such endpoint")
        kind = "api" if api else "resolvers"
        left = self._limited(kind)
        if left > 0:
            return web.json_response({"error": "Too Many Requests"}, status=429, headers={
                "RateLimit": f'"{kind}";r=0;t={math.ceil(left)}',
                "RateLimit-Policy": f'"fixed window";"{kind}";q=500;w=300'})
        counted = self._counted(request.remote or "", kind)
        if counted is not None and counted.pop("X-Over", None):
            return web.json_response({"error": "Too Many Requests"}, status=429, headers=counted)
        resp = await self._route(request, auth, segs, api)
        resp.headers.update(counted or {})
        return resp

    async def _route(self, request: web.Request, auth: str | None, segs: list[str], api: bool) -> web.StreamResponse:
        if api and self._faults:
            return web.Response(status=self._faults.popleft(), text="scripted failure\n")
        repo_id = f"{segs[1]}/{segs[2]}"
        if repo_id in self.numbered:
            return self._numbered_route(request, repo_id, segs, api)
        action, rev = (segs[3], segs[4]) if len(segs) >= 5 else ("revision", "main")
        path = "/".join(segs[5:]).strip("/")
        repo, authorized = self.repos.get(repo_id), auth == f"Bearer {self.token}"
        if repo is None or (repo.private and not authorized):
            return _error(404 if authorized else 401, "RepoNotFound", f"Repository {repo_id} not found")
        sha = repo.refs.get(rev, rev if rev in repo.commits else None)
        if sha is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        entries = repo.commits[sha]
        if api and action == "revision" and not path and request.method == "GET":
            return self._info(request, repo_id, repo, sha, entries)
        if api and action == "tree" and request.method == "GET":
            return self._tree(request, entries, path)
        if api and action == "paths-info" and request.method == "POST":
            return await self._paths_info(request, entries)
        if not api and action == "resolve" and request.method in ("GET", "HEAD"):
            if repo.gated and not (authorized and repo.granted):
                return _error(403 if authorized else 401, "GatedRepo",
                              f"Access to dataset {repo_id} is restricted. You must have access to it and be "
                              "authenticated to access it. Please log in.")
            found = next((e for e in entries if e["path"] == path and e["type"] == "file"), None)
            if found is None:
                return _error(404, "EntryNotFound", f"{path} does not exist at {sha}", {"X-Repo-Commit": sha})
            oid = self._content[found["oid"]]
            return web.Response(status=302, headers={
                "Location": f"{self.cdn}/cdn/{oid}", "X-Linked-Etag": f'"{oid}"',
                "X-Linked-Size": str(found["size"]), "ETag": f'"{found["oid"]}"', "X-Repo-Commit": sha})
        return _error(404, "EntryNotFound", "no such endpoint")

    def _numbered_route(self, request: web.Request, repo_id: str, segs: list[str], api: bool) -> web.Response:
        repo = self.numbered[repo_id]
        action = segs[3] if len(segs) >= 5 else "revision"
        name = "/".join(segs[5:])
        if api and action == "revision" and request.method == "GET":
            return web.json_response({"id": repo_id, "sha": repo.sha, "private": False, "gated": False,
                                      "siblings": [{"rfilename": f"shard_{i:05d}.parquet"} for i in range(repo.count)]})
        index = _shard_index(name)
        if api or action != "resolve" or request.method not in ("GET", "HEAD") or index is None \
                or index >= repo.count:
            return _error(404, "EntryNotFound", f"{name} does not exist at {repo.sha}")
        if index not in repo.made:
            repo.shard(index)
        sha, size = repo.made[index]
        return web.Response(status=302, headers={
            "Location": f"{self.cdn}/cdn/n/{repo_id}/{index}", "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(size), "ETag": f'"{sha[:40]}"', "X-Repo-Commit": repo.sha})

    def _numbered_file(self, request: web.Request, repo_id: str, index: str) -> web.Response:
        repo = self.numbered.get(repo_id)
        if repo is None or not index.isdigit() or int(index) >= repo.count:
            return _error(404, "EntryNotFound", "no such file")
        data = repo.shard(int(index))
        sha = repo.made[int(index)][0]
        headers = {"ETag": f'"{sha}"', "Accept-Ranges": "bytes"}
        try:
            got = parse_range(request.headers.get("Range"), len(data))
        except ValueError:
            got = False
        if got is False:
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{len(data)}"})
        if got is None or request.headers.get("If-Range", f'"{sha}"') != f'"{sha}"':
            return web.Response(status=200, body=data if request.method == "GET" else None, headers=headers)
        a, b = got
        return web.Response(status=206, body=data[a:b] if request.method == "GET" else None,
                            headers={**headers, "Content-Range": f"bytes {a}-{b - 1}/{len(data)}"})

    def _info(self, request: web.Request, repo_id: str, repo: Repo, sha: str, entries: list[dict]) -> web.Response:
        blobs = request.query.get("blobs", "").lower() == "true"
        siblings = []
        for e in entries:
            if e["type"] == "file":
                s = {"rfilename": e["path"]}
                if blobs:
                    s.update(size=e["size"], blobId=e["oid"])
                    if "lfs" in e:
                        s["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["size"],
                                    "pointerSize": e["lfs"]["pointerSize"]}
                siblings.append(s)
        return web.json_response({"_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                                  "author": repo_id.split("/")[0], "sha": sha, "private": repo.private,
                                  "gated": "auto" if repo.gated else False, "disabled": False, "tags": [],
                                  "downloads": 0, "likes": 0, "siblings": siblings})

    def _tree(self, request: web.Request, entries: list[dict], path: str) -> web.Response:
        prefix = f"{path}/" if path else ""
        if path and not any(e["path"] == path and e["type"] == "directory" for e in entries):
            return _error(404, "EntryNotFound", f"{path} does not exist")
        recursive = request.query.get("recursive", "").lower() == "true"
        under = [e for e in entries if e["path"].startswith(prefix)
                 and (recursive or "/" not in e["path"][len(prefix):])]
        cursor = request.query.get("cursor")
        start = int(base64.urlsafe_b64decode(cursor).decode()) if cursor else 0
        page = under[start: start + self.page_size]
        headers = {}
        if start + self.page_size < len(under):
            query = dict(parse_qsl(request.query_string))
            query["cursor"] = base64.urlsafe_b64encode(str(start + self.page_size).encode()).decode()
            host = self.next_host or request.host
            headers["Link"] = f'<http://{host}{request.path}?{urlencode(query)}>; rel="next"'
        return web.json_response(page, headers=headers)

    async def _paths_info(self, request: web.Request, entries: list[dict]) -> web.Response:
        if request.content_type == "application/json":
            asked = (await request.json()).get("paths", [])
        else:
            asked = (await request.post()).getall("paths", [])
        by_path = {e["path"]: e for e in entries}
        return web.json_response([by_path[p] for p in asked if p in by_path])


async def _throttled(request: web.BaseRequest, response: web.StreamResponse, path: Path, start: int, end: int, *,
                     rate: float) -> None:
    async with contextlib.aclosing(iter_file(path, start, end, 64 << 10)) as chunks:
        async for data in chunks:
            await response.write(data)
            await asyncio.sleep(len(data) / rate)


def _shard_index(name: str) -> int | None:
    if name.startswith("shard_") and name.endswith(".parquet") and name[6:-8].isdigit():
        return int(name[6:-8])
    return None


def _error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status,
                             headers={"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})


# -- subprocess mode -----------------------------------------------------------------------------
async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    quota = {}
    for spec in args.quota:
        kind, _, qw = spec.partition("=")
        q, _, w = qw.partition("/")
        quota[kind] = (int(q), float(w))
    async with HubServer(page_size=args.page_size, rate=args.rate, quota=quota, latency=args.latency) as hub:
        for spec in args.repo:
            repo_id, _, folder = spec.partition("=")
            hub.add_repo(repo_id, Path(folder))
        for spec in args.numbered:
            repo_id, _, count = spec.partition("=")
            hub.add_numbered(repo_id, int(count), row_groups=args.row_groups, rows=args.rows)
        print(hub.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests/hubserver.py", description="Hub-like dataset server")
    p.add_argument("repo", nargs="*", metavar="ORG/NAME=DIR")
    p.add_argument("--numbered", action="append", default=[], metavar="ORG/NAME=COUNT")
    p.add_argument("--row-groups", type=int, default=52)
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--quota", action="append", default=[], metavar="KIND=Q/W")
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--page-size", type=int, default=1000)
    p.add_argument("--rate", type=float, default=None, help="bytes/s per file response (default: unthrottled)")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
