"""What a request to the mirror's Hub API asks for, checked, and the JSON errors (``{"error": ...}``, as
the Hub's) a bad one gets. No request text ever goes into a response header, only into a JSON body."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlencode

from aiohttp import web

HUB_ROUTES = ("api", "datasets")  # the first part of the paths the Hub API answers
FORM_TYPES = ("", "application/x-www-form-urlencoded")
_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def quoted(text: object, n: int = 120) -> str:
    """``text`` as Python writes it (control characters escaped), clipped to about ``n`` characters."""
    r = repr(text)
    return r if len(r) <= n else r[:n] + "..."


def hub_error(cls: type[web.HTTPException], message: str, *, code: str | None = None,
              commit: str | None = None) -> web.HTTPException:
    """An HTTP error of class ``cls`` with the JSON body ``{"error": message}``; ``code`` goes to
    ``X-Error-Code`` (a fixed name, never request text), ``commit`` to ``X-Repo-Commit``."""
    headers = {}
    if code is not None:
        headers["X-Error-Code"] = code
    if commit:
        headers["X-Repo-Commit"] = commit
    return cls(text=json.dumps({"error": message}), content_type="application/json", headers=headers)


def bad_request(message: str) -> web.HTTPException:
    return hub_error(web.HTTPBadRequest, message)


def target(request: web.Request, action: str) -> tuple[str, str, str]:
    """(repo, revision, path) of ``.../ACTION/REV[/PATH]``, read from the raw path (REV may hold
    ``%2F``); the revision is ``main`` where the route has none (``/api/datasets/ORG/NAME``)."""
    repo = f"{request.match_info['org']}/{request.match_info['name']}"
    segs = request.raw_path.split("?", 1)[0].split("/")
    at = 5 if segs[1] == "api" else 4  # segs[at] is ACTION
    rev = unquote(segs[at + 1]) if at + 1 < len(segs) else "main"
    return repo, rev, unquote("/".join(segs[at + 2:])).strip("/")


async def asked_paths(request: web.Request) -> list[str]:
    """The ``paths`` of a paths-info body: a JSON object ``{"paths": [...]}`` (or one string), or a
    urlencoded form with ``paths=`` repeated. 400 for anything else of those types, 415 for
    another body type, 413 past aiohttp's size limit."""
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
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        if text.isascii() and text.isdigit():
            return int(text)
    except ValueError:  # not base64 (binascii.Error), not UTF-8, or past int's 4300 digits
        pass
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
    """Every 4xx under the Hub's routes carries a JSON ``{"error": ...}`` body (the file server's own
    refusals, a 405 for another method, a 413 for a body over the limit, a 416) with its headers kept."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not (400 <= exc.status < 500 and request.path.split("/")[1] in HUB_ROUTES) or \
                exc.content_type == "application/json":
            raise
        text = (exc.text or exc.reason or "").strip()
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return web.json_response({"error": text}, status=exc.status, headers=headers)
