"""A Hub-like HTTP server on 127.0.0.1 for tests and benches, modelling the Hub as huggingface_hub parses it.

    async with HubServer() as hub:                      # hub.url is HF_ENDPOINT
        sha = hub.add_repo("org/name", folder)          # commits the folder's files, moves "main" there
        sha2 = hub.commit("org/name", other_folder)     # a later commit ("main" moves, sha stays valid)
        hub.add_repo("org/private", folder, private=True)   # needs "Authorization: Bearer <hub.token>"
        hub.add_repo("org/gated", folder, gated=True)       # listed by anyone; downloads refused (below)
        hub.fail_next(503, 503)                         # the next two API requests answer 503
        hub.rate_limit(2.0, "resolvers")                # from the next /resolve/, 2 s of 429 RateLimit t=N
        hub.requests                                    # [Seen(method, host, path_qs, authorization)]

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

    python tests/hubserver.py ORG/NAME=DIR [ORG/NAME=DIR ...] [--page-size N] [--rate BYTES_PER_S]

prints the endpoint URL alone on its first stdout line and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
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

from aiohttp import web

from nanostream.serve.server import ShardFiles, iter_file

TOKEN = "hf_test_token"
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n"


@dataclass(frozen=True)
class Seen:
    method: str
    host: str
    path_qs: str
    authorization: str | None


@dataclass
class Repo:
    commits: dict[str, list[dict]] = field(default_factory=dict)  # sha -> tree entries, sorted by path
    refs: dict[str, str] = field(default_factory=dict)
    private: bool = False
    gated: bool = False
    granted: bool = False  # a gated repo whose terms the token's user accepted


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
                 host: str = "127.0.0.1", port: int = 0, rate: float | None = None) -> None:
        self.token, self.page_size, self.next_host = token, page_size, next_host
        self.host, self.port = host, port
        self.repos: dict[str, Repo] = {}
        self.requests: list[Seen] = []
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
        auth = request.headers.get("Authorization")
        self.requests.append(Seen(request.method, request.host, request.raw_path, auth))
        segs = [unquote(s) for s in request.raw_path.split("?", 1)[0].split("/")[1:]]
        if segs[:1] == ["cdn"] and len(segs) == 2:
            return await self._files.respond(request, segs[1])
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
        if api and self._faults:
            return web.Response(status=self._faults.popleft(), text="scripted failure\n")
        repo_id = f"{segs[1]}/{segs[2]}"
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


def _error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status,
                             headers={"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})


# -- subprocess mode -----------------------------------------------------------------------------
async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with HubServer(page_size=args.page_size, rate=args.rate) as hub:
        for spec in args.repo:
            repo_id, _, folder = spec.partition("=")
            hub.add_repo(repo_id, Path(folder))
        print(hub.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests/hubserver.py", description="Hub-like dataset server")
    p.add_argument("repo", nargs="+", metavar="ORG/NAME=DIR")
    p.add_argument("--page-size", type=int, default=1000)
    p.add_argument("--rate", type=float, default=None, help="bytes/s per file response (default: unthrottled)")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
