"""Hugging Face Hub dataset repos: ``hf://datasets/ORG/NAME[@REVISION][/PATH]`` to a Catalog pinned to a commit
(the revision resolved once, then the tree API); refusals become a ``DatasetError`` with their hint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote, unquote

import aiohttp
from yarl import URL

from ..config import host_of, token_allowed
from ..errors import DatasetError
from ..retry import LIST_RETRY, RETRY_STATUSES, Retries, RetryPolicy, client_session, transient, with_retries
from .catalog import Catalog, DataFile, parquet_only

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SPECIAL_REF_RE = re.compile(r"^(refs/convert/\w+|refs/pr/\d+)(?:/|$)")


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
    """The bearer token for ``url`` where ``config.token_allowed`` lets it go to the Hub's host, over its scheme."""
    same_scheme = URL(str(url)).scheme == URL(endpoint).scheme
    if token and same_scheme and token_allowed(str(url), {host_of(endpoint)}):
        return {"Authorization": f"Bearer {token}"}
    return {}


async def hub_catalog(url: str, *, endpoint: str, token: str | None = None, include: str | None = None,
                      revision: str | None = None, retry: RetryPolicy = LIST_RETRY) -> Catalog:
    """The parquet files under ``url`` at one commit (``revision`` replaces the URL's), as a Catalog pinned
    to that commit's sha; paths relative to ``PATH`` (a ``PATH`` ending in ``.parquet``: that file)."""
    hp, endpoint = parse_hub_url(url), endpoint.rstrip("/")
    revision = revision or hp.revision or "main"
    api = f"{endpoint}/api/datasets/{hp.repo_id}"
    one_file = hp.path.endswith(".parquet")  # list its folder, keep it
    folder = hp.path.rpartition("/")[0] if one_file else hp.path
    async with client_session(retry) as session:
        async def get(url: str, revision: str) -> tuple[Any, str | None]:
            """The JSON body and the next page's URL, retried (``retry.with_retries``)."""
            async def attempt() -> tuple[Any, str | None]:
                async with session.get(url, headers=hub_headers(url, endpoint, token)) as resp:
                    if resp.status != 200:
                        _refuse(resp, hp, revision, endpoint, token)
                    nxt = resp.links.get("next")
                    try:
                        body = await resp.json(content_type=None)
                    except ValueError as exc:  # a body that is not JSON: not the Hub API
                        raise DatasetError(f"{url}: the answer is not JSON; is HF_ENDPOINT a Hub?") from exc
                    return body, (str(nxt["url"]) if nxt else None)

            return await with_retries(Retries(retry, f"listing {hp.source()}", url=url), attempt)

        body, _ = await get(f"{api}/revision/{quote(revision, safe='')}", revision)
        sha = body.get("sha") if isinstance(body, dict) else None
        if not isinstance(sha, str) or not re.fullmatch("[0-9a-f]{40}", sha):
            raise DatasetError(f"{endpoint}: revision {revision!r} of {hp.repo_id} resolved to "
                               f"no commit sha (got {sha!r}); is HF_ENDPOINT a Hub?")
        where = f"/{quote(folder, safe='')}" if folder else ""
        page: str | None = f"{api}/tree/{sha}{where}{'' if one_file else '?recursive=true'}"
        entries: list[dict[str, Any]] = []
        while page is not None:
            listed, page = await get(page, sha)
            if not isinstance(listed, list):
                raise DatasetError(f"{endpoint}: the tree listing of {hp.repo_id} is not a list")
            entries.extend(listed)
    files = [DataFile(e["path"].removeprefix(f"{folder}/"), int(e["size"]), (e.get("lfs") or {}).get("oid") or None,
                      None, f"{endpoint}/datasets/{hp.repo_id}/resolve/{sha}/{quote(e['path'])}")
             for e in entries if e.get("type") == "file" and (not one_file or e["path"] == hp.path)]
    files = parquet_only(files, include, f"{url} at commit {sha[:12]}", "files")
    return Catalog(url, tuple(files), source=hp.source(), revision=sha, include=include)


def _refuse(resp: aiohttp.ClientResponse, hp: HubPath, revision: str, endpoint: str, token: str | None) -> NoReturn:
    """Raise what a Hub API refusal means: a transient error to retry, else a DatasetError with its hint."""
    status, code = resp.status, resp.headers.get("X-Error-Code", "")
    if status in RETRY_STATUSES:
        raise transient(status, f"HTTP {status}", resp.headers)
    has = "HF_TOKEN was refused" if token else "set HF_TOKEN"
    hints: dict[str | int, str] = {
        "RevisionNotFound": f"revision {revision!r} does not exist (check the name after '@')",
        "EntryNotFound": f"no path {hp.path!r} at revision {revision[:12]}",
        401: f"not found or private (HTTP 401): {has}; a private repo needs HF_TOKEN with read access",
        403: "access denied (HTTP 403): accept the dataset's terms on the Hub and check that HF_TOKEN may read it",
        404: f"no such dataset repo on {endpoint} (HTTP 404): check ORG/NAME (a private repo also needs HF_TOKEN)",
    }
    hint = hints.get(code) or hints.get(status) or f"the Hub answered HTTP {status} {resp.reason or ''}".rstrip()
    raise DatasetError(f"hf://datasets/{hp.repo_id}: {hint}")
