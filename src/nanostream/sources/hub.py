"""Hugging Face Hub dataset repos: ``hf://datasets/ORG/NAME[@REVISION][/PATH]`` to a Catalog pinned to a commit
(the revision resolved once, then the tree API); refusals become a ``DatasetError`` with their hint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
from yarl import URL

from ..config import host_of, token_allowed
from ..errors import DatasetError
from ..retry import LIST_RETRY, RETRY_STATUSES, Retries, RetryPolicy, client_session, transient, with_retries
from .catalog import Catalog, DataFile, parquet_only

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SPECIAL_REF_RE = re.compile(r"^(refs/convert/\w+|refs/pr/\d+)(?:/|$)")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubPath:
    """A parsed ``hf://datasets/...`` URL."""

    repo_id: str  # ORG/NAME
    revision: str | None  # None: main
    path: str  # inside the repo, "" for its root

    def source(self) -> str:
        """The URL without the revision (what a record names as the source)."""
        return f"hf://datasets/{self.repo_id}" + (f"/{self.path}" if self.path else "")


def parse_hub_url(url: str) -> HubPath:
    """``hf://datasets/ORG/NAME[@REVISION][/PATH]`` -> HubPath, or DatasetError saying what is wrong."""
    form = "use hf://datasets/ORG/NAME[@REVISION][/PATH]"
    if not url.startswith("hf://"):
        raise DatasetError(f"{url!r} is not an hf:// URL ({form})")
    rest = url[len("hf://"):].strip("/")
    if not rest.startswith("datasets/"):
        raise DatasetError(f"{url!r}: only dataset repos can be read ({form})")
    parts = rest[len("datasets/"):].split("/")
    if len(parts) < 2:
        raise DatasetError(f"{url!r} names no repo ({form})")
    org, name, tail = parts[0], parts[1], "/".join(parts[2:])
    revision = None
    if "@" in name:
        name, first = name.split("@", 1)
        after = "/".join(x for x in (first, tail) if x)
        special = _SPECIAL_REF_RE.match(after)
        if special:
            revision, tail = special.group(1), after[special.end():]
        else:
            revision, _, tail = after.partition("/")
            revision = unquote(revision)
        if not revision:
            raise DatasetError(f"{url!r}: empty revision after '@' ({form})")
    for part in (org, name):
        if not _NAME_RE.match(part) or "--" in part or ".." in part:
            raise DatasetError(f"{url!r}: {part!r} is not a valid repo name part ({form})")
    if "@" in tail:
        raise DatasetError(f"{url!r}: '@' may only follow the repo name ({form})")
    return HubPath(f"{org}/{name}", revision, tail.strip("/"))


def hub_headers(url: str | URL, endpoint: str, token: str | None) -> dict[str, str]:
    """The bearer token for a request to ``url`` where ``config.token_allowed`` lets it go with the Hub's host
    as the one allowed host, over the endpoint's own scheme; else no header."""
    same_scheme = URL(str(url)).scheme == URL(endpoint).scheme
    if token and same_scheme and token_allowed(str(url), {host_of(endpoint)}):
        return {"Authorization": f"Bearer {token}"}
    return {}


async def hub_catalog(url: str, *, endpoint: str, token: str | None = None, include: str | None = None,
                      val: str | None = None, text_column: str = "text", revision: str | None = None,
                      retry: RetryPolicy = LIST_RETRY) -> Catalog:
    """The parquet files under ``url`` at one commit (``revision`` replaces the URL's), as a Catalog pinned
    to that commit's sha; paths relative to ``PATH`` (a ``PATH`` ending in ``.parquet``: that file)."""
    hp, endpoint = parse_hub_url(url), endpoint.rstrip("/")
    async with client_session(retry) as session:
        api = Api(session, endpoint, token, hp, retry)
        sha = await api.resolve(revision or hp.revision or "main")
        if hp.path.endswith(".parquet"):  # one file: list its folder, keep it
            folder = hp.path.rpartition("/")[0]
            entries = [e for e in await api.tree(sha, folder, recursive=False) if e.get("path") == hp.path]
            prefix = f"{folder}/" if folder else ""
        else:
            entries = await api.tree(sha, hp.path)
            prefix = f"{hp.path}/" if hp.path else ""
    files = []
    for e in entries:
        if e.get("type") == "file":
            lfs = e.get("lfs") or {}
            files.append(DataFile(e["path"].removeprefix(prefix), int(e["size"]), lfs.get("oid") or None, None,
                                  f"{endpoint}/datasets/{hp.repo_id}/resolve/{sha}/{quote(e['path'])}"))
    files = parquet_only(files, include, f"{url} at commit {sha[:12]}", "files")
    return Catalog(url, tuple(files), text_column, val=val, source=hp.source(), revision=sha, include=include)


class Api:
    """The two Hub API calls a listing needs, with retries and error translation."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: str, token: str | None, hp: HubPath,
                 retry: RetryPolicy) -> None:
        self.session, self.endpoint, self.token, self.hp, self.retry = session, endpoint, token, hp, retry
        self.base = f"{endpoint}/api/datasets/{hp.repo_id}"

    async def resolve(self, revision: str) -> str:
        body, _ = await self._get(f"{self.base}/revision/{quote(revision, safe='')}", revision)
        sha = body.get("sha") if isinstance(body, dict) else None
        if not isinstance(sha, str) or not _SHA_RE.match(sha):
            raise DatasetError(f"{self.endpoint}: revision {revision!r} of {self.hp.repo_id} resolved to "
                               f"no commit sha (got {sha!r}); is HF_ENDPOINT a Hub?")
        return sha

    async def tree(self, sha: str, folder: str, *, recursive: bool = True) -> list[dict[str, Any]]:
        path = f"/{quote(folder, safe='')}" if folder else ""
        url: str | None = f"{self.base}/tree/{sha}{path}{'?recursive=true' if recursive else ''}"
        entries: list[dict[str, Any]] = []
        while url is not None:
            page, url = await self._get(url, sha)
            if not isinstance(page, list):
                raise DatasetError(f"{self.endpoint}: the tree listing of {self.hp.repo_id} is not a list")
            entries.extend(page)
        return entries

    async def _get(self, url: str, revision: str) -> tuple[Any, str | None]:
        """JSON body and the next page's URL, retried (``retry.with_retries``)."""
        async def attempt() -> tuple[Any, str | None]:
            async with self.session.get(url, headers=hub_headers(url, self.endpoint, self.token)) as resp:
                if resp.status != 200:
                    self._refuse(resp, revision)
                nxt = resp.links.get("next")
                try:
                    body = await resp.json(content_type=None)
                except ValueError as exc:  # a body that is not JSON: not the Hub API
                    raise DatasetError(f"{url}: the answer is not JSON; is HF_ENDPOINT a Hub?") from exc
                return body, (str(nxt["url"]) if nxt else None)

        return await with_retries(Retries(self.retry, f"listing {self.hp.source()}", url=url), attempt)

    def _refuse(self, resp: aiohttp.ClientResponse, revision: str) -> None:
        status, code = resp.status, resp.headers.get("X-Error-Code", "")
        repo = f"hf://datasets/{self.hp.repo_id}"
        if status in RETRY_STATUSES:
            raise transient(status, f"HTTP {status}", resp.headers)
        if code == "RevisionNotFound":
            raise DatasetError(f"{repo}: revision {revision!r} does not exist (check the name after '@')")
        if code == "EntryNotFound":
            raise DatasetError(f"{repo}: no path {self.hp.path!r} at revision {revision[:12]}")
        if status == 401:
            has = "HF_TOKEN was refused" if self.token else "set HF_TOKEN"
            raise DatasetError(f"{repo}: not found or private (HTTP 401): {has}; a private repo needs "
                               "HF_TOKEN with read access")
        if status == 403:
            raise DatasetError(f"{repo}: access denied (HTTP 403): accept the dataset's terms on the Hub "
                               "and check that HF_TOKEN may read it")
        if status == 404:
            raise DatasetError(f"{repo}: no such dataset repo on {self.endpoint} (HTTP 404): check "
                               "ORG/NAME (a private repo also needs HF_TOKEN)")
        raise DatasetError(f"{repo}: the Hub answered HTTP {status} {resp.reason or ''}".rstrip())
