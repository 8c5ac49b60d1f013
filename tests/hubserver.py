"""A Hub-like HTTP server on 127.0.0.1 for tests and benches: revision, tree and resolve endpoints.

    async with HubServer() as hub:                      # hub.url is HF_ENDPOINT
        sha = hub.add_repo("org/name", folder)          # commits the folder's files, moves "main" there
        sha2 = hub.commit("org/name", other_folder)     # a later commit ("main" moves, sha stays valid)
        hub.add_repo("org/private", folder, private=True)   # needs "Authorization: Bearer <hub.token>"
        hub.add_repo("org/gated", folder, gated=True)       # 401 without a token, 403 with one
        hub.fail_next(503, 503)                         # the next two API requests answer 503
        hub.requests                                    # [Seen(method, host, path_qs, authorization)]

Endpoints, answered as the Hub does:

    GET /api/datasets/ORG/NAME/revision/REV       {"id", "sha"}; 404 X-Error-Code: RevisionNotFound
    GET /api/datasets/ORG/NAME/tree/REV[/PATH]    entries {"type", "oid", "size", "path"[, "lfs"]};
        ?recursive=true walks subfolders; ``page_size`` entries a page, the next page in
        ``Link: <...&cursor=...>; rel="next"`` (on host ``next_host`` when set); 404 EntryNotFound
    GET|HEAD /datasets/ORG/NAME/resolve/REV/PATH  302 to /cdn/<sha256> with X-Linked-Etag: "<sha256>",
        X-Linked-Size and X-Repo-Commit; /cdn/ serves the bytes (Range, If-Range) via nanostream.serve.server

A missing repo answers 401 to a request without a valid token and 404 to one with
it (the Hub does not tell a missing repo from a private one); X-Error-Code says
RepoNotFound / GatedRepo. ``*.parquet`` files carry ``lfs`` (oid = sha256); other
files do not. REV and PATH may be URL-quoted (``%2F``).

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
import os
import shutil
import signal
import sys
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode

from aiohttp import web

from nanostream.serve.server import ShardFiles, iter_file

TOKEN = "hf_test_token"


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class HubServer:
    def __init__(self, *, token: str = TOKEN, page_size: int = 1000, next_host: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, rate: float | None = None) -> None:
        self.token, self.page_size, self.next_host = token, page_size, next_host
        self.host, self.port = host, port
        self.repos: dict[str, Repo] = {}
        self.requests: list[Seen] = []
        self._faults: deque[int] = deque()
        self._content: dict[str, str] = {}  # a file entry's oid -> its sha256 (the blob's name)
        self._blobs = Path(tempfile.mkdtemp(prefix="nanostream-hub-blobs."))
        writer = functools.partial(_throttled, rate=rate) if rate else None  # bytes/s per response
        self._files = ShardFiles(self._blobs, body_writer=writer)
        self._runner: web.AppRunner | None = None
        self.url = ""

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
                sha = _sha256(path)
                blob = self._blobs / sha
                if not blob.exists():
                    shutil.copyfile(path, blob)
                size = path.stat().st_size
                entry = {"type": "file", "oid": hashlib.sha1(f"blob {size}\0{sha}".encode()).hexdigest(),
                         "size": size, "path": rel}
                self._content[entry["oid"]] = sha
                if n.endswith(".parquet"):
                    entry["lfs"] = {"oid": sha, "size": size, "pointerSize": 134}
                entries.append(entry)
                parts = rel.split("/")[:-1]
                dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        entries += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                    for d in dirs]
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

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> HubServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.url = f"http://{self.host}:{self._runner.addresses[0][1]}"
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
        if len(segs) < 5 or segs[0] != "datasets":
            return _error(404, "EntryNotFound", "no such endpoint")
        if api and self._faults:
            return web.Response(status=self._faults.popleft(), text="scripted failure\n")
        repo_id, action, rev, path = f"{segs[1]}/{segs[2]}", segs[3], segs[4], "/".join(segs[5:]).strip("/")
        repo, authorized = self.repos.get(repo_id), auth == f"Bearer {self.token}"
        if repo is None or (repo.private and not authorized):
            return _error(404 if authorized else 401, "RepoNotFound", f"Repository {repo_id} not found")
        if repo.gated:
            return _error(403 if authorized else 401, "GatedRepo", f"{repo_id} is gated: accept its terms")
        sha = repo.refs.get(rev, rev if rev in repo.commits else None)
        if sha is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        entries = repo.commits[sha]
        if api and action == "revision" and not path:
            return web.json_response({"id": repo_id, "sha": sha})
        if api and action == "tree":
            return self._tree(request, entries, path)
        if not api and action == "resolve" and request.method in ("GET", "HEAD"):
            found = next((e for e in entries if e["path"] == path and e["type"] == "file"), None)
            if found is None:
                return _error(404, "EntryNotFound", f"{path} does not exist at {sha}")
            oid = self._content[found["oid"]]
            return web.Response(status=302, headers={
                "Location": f"{self.url}/cdn/{oid}", "X-Linked-Etag": f'"{oid}"',
                "X-Linked-Size": str(found["size"]), "ETag": f'"{oid}"', "X-Repo-Commit": sha})
        return _error(404, "EntryNotFound", "no such endpoint")

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


async def _throttled(request: web.BaseRequest, response: web.StreamResponse, path: Path, start: int, end: int, *,
                     rate: float) -> None:
    async with contextlib.aclosing(iter_file(path, start, end, 64 << 10)) as chunks:
        async for data in chunks:
            await response.write(data)
            await asyncio.sleep(len(data) / rate)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={"X-Error-Code": code})


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
