"""Fuzz of the mirror's Hub routes: real HTTP requests to a running ``nanostream serve`` of an hf:// folder.

Random methods, repos, revisions and paths (quoted text of any kind, control characters and
broken escapes included), query strings (cursor, recursive, expand, blobs), Host headers and
bodies (JSON of every shape, forms, multipart, bytes, over the 1 MiB limit). Every answer is
2xx/3xx/4xx, an error has a JSON ``{"error": str}`` body, nothing is dropped, and the server
stays up and logs no traceback. Derandomized, with no example database, so CI runs the same
requests every time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nanostream.config import Config
from nanostream.fetch.many import fetch_files
from nanostream.sources.catalog import write_catalog
from nanostream.sources.resolve import open_catalog

from datagen import write_shard
from hubserver import HubServer

REPO = "org/corpus"
FILES = [f"data/train/part-{i:02d}.parquet" for i in range(48)] + ["data/train/more/b-0.parquet",
                                                                   "data/validation/v-0.parquet"]
ERROR_CODES = {"RepoNotFound", "RevisionNotFound", "EntryNotFound"}
MAX_BODY = 1 << 20  # aiohttp's client_max_size


class Mirror:
    def __init__(self, url: str, sha: str, log: Path) -> None:
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.port, self.sha, self.log = int(port), sha, log


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory):
    """``nanostream serve`` (a subprocess) of a folder fetched from a Hub double: 50 files, so that
    a recursive tree with ``expand=true`` has a second page."""
    tmp = tmp_path_factory.mktemp("hubfuzz")

    async def fetch() -> str:
        for i, name in enumerate(FILES):
            (tmp / "repo" / name).parent.mkdir(parents=True, exist_ok=True)
            write_shard(tmp / "repo" / name, i, 1, 2, words=3)
        async with HubServer() as hub:
            sha = hub.add_repo(REPO, tmp / "repo")
            cat = await open_catalog(f"hf://datasets/{REPO}", config=Config(base_dir=tmp, hf_endpoint=hub.url))
            write_catalog(tmp / "node0", cat)
            assert all(r.error is None for r in await fetch_files(cat.files, data_dir=tmp / "node0"))
        return sha

    sha = asyncio.run(fetch())
    log = tmp / "serve.log"
    with open(log, "w") as err:  # a file, not a pipe: the server's log lines never block it
        proc = subprocess.Popen([sys.executable, "-m", "nanostream.cli", "serve", str(tmp / "node0"), "--port", "0"],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving "), log.read_text()
        yield Mirror(line.split(" at ")[1].split()[0], sha, log)
        assert proc.poll() is None, f"the server died: {log.read_text()[-3000:]}"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def exchange(m: Mirror, method: str, target: str, headers: list[tuple[str, bytes]],
             body: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request, byte for byte, on a keep-alive connection of its own (as an HTTP client sends a
    body); (status, headers, body) of the answer, read to its Content-Length."""
    head = f"{method} {target} HTTP/1.1\r\n".encode() + b"".join(k.encode() + b": " + v + b"\r\n" for k, v in headers)
    head += f"Content-Length: {len(body)}\r\n\r\n".encode() if body else b"\r\n"
    with socket.create_connection((m.host, m.port), timeout=20) as s:
        try:
            s.sendall(head + body)
        except OSError:  # the server answered before reading all of a big body: read its answer
            pass
        raw = b""
        while b"\r\n\r\n" not in raw and (chunk := s.recv(1 << 16)):
            raw += chunk
        assert raw, f"the connection was dropped without an answer: {method} {target[:200]}"
        top, _, rest = raw.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        got = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        status = int(lines[0].split()[1])
        size = 0 if method == "HEAD" or status in (204, 304) else int(got["content-length"])
        while len(rest) < size and (chunk := s.recv(1 << 16)):
            rest += chunk
    assert len(rest) == size, f"the answer was cut short: {method} {target[:200]}"
    return status, got, rest


# -- what the requests are made of ------------------------------------------------------------------
odd = st.sampled_from(["%00", "%0A", "%0D%0A", "%", "%zz", "%C3", "%FF%FE", "%2F", "%2e%2e", "..", ".", "~",
                       "%20", "+", "a%00b", "\\", "%5C", ":", "@", "%7F"])
text = st.text(max_size=12).map(lambda t: quote(t, safe=""))  # any characters, control ones included
segment = st.one_of(text, odd, st.sampled_from(["main", "data", "train", "more", "refs%2Fheads%2Fmain"]))
known_path = st.sampled_from([*FILES, "data", "data/train", "data/train/more", "data/validation", ""])
path = st.one_of(known_path.map(quote), st.lists(segment, max_size=4).map("/".join))


def weighted(*choices: tuple[st.SearchStrategy, int]) -> st.SearchStrategy:
    """A draw from one of the strategies, each ``weight`` times as likely."""
    return st.sampled_from([c for c, weight in choices for _ in range(weight)]).flatmap(lambda c: c)


ROUTE_METHOD = {"info": "GET", "revision": "GET", "tree": "GET", "paths-info": "POST", "resolve": "GET",
                "other": "GET"}


@st.composite
def requests(draw, sha: str) -> tuple[str, str, str]:
    """(route, method, target): mostly the route's own method, repo and a revision it holds, so that
    most requests get past the routing to the checks of each endpoint."""
    route = draw(st.sampled_from(list(ROUTE_METHOD)))
    method = draw(weighted((st.just(ROUTE_METHOD[route]), 3),
                           (st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]), 1)))
    org, name = draw(weighted((st.just(("org", "corpus")), 4), (st.tuples(segment, segment), 1)))
    rev = draw(weighted((st.sampled_from(["main", sha, "refs%2Fheads%2Fmain"]), 4), (segment, 1)))
    where = {"info": f"/api/datasets/{org}/{name}",
             "revision": f"/api/datasets/{org}/{name}/revision/{rev}",
             "tree": f"/api/datasets/{org}/{name}/tree/{rev}/{draw(path)}",
             "paths-info": f"/api/datasets/{org}/{name}/paths-info/{rev}",
             "resolve": f"/datasets/{org}/{name}/resolve/{rev}/{draw(path)}",
             "other": draw(st.sampled_from(["/api/datasets/", "/datasets/", "/api/"])) + draw(path)}[route]
    if draw(st.booleans()):
        where = where.rstrip("/") if draw(st.booleans()) else where + "/"
    cursor = st.one_of(st.integers(-5, 10**6).map(lambda n: base64.urlsafe_b64encode(str(n).encode()).decode()),
                       st.text(max_size=20))
    huge = st.sampled_from(["9" * 5000, base64.urlsafe_b64encode(b"9" * 4400).decode()])  # past int's 4300 digits
    value = st.one_of(st.sampled_from(["true", "false", "True", "1", ""]), st.text(max_size=10))
    key = st.one_of(st.sampled_from(["cursor", "recursive", "expand", "expand[]", "blobs", "limit"]), st.text(max_size=6))
    pairs = draw(st.lists(st.tuples(key, st.one_of(value, cursor)), max_size=4))
    if draw(st.booleans()):
        pairs.append(("cursor", draw(st.one_of(cursor, cursor, huge))))
    return route, method, where + ("?" + urlencode(pairs) if pairs else "")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=4), max_leaves=12)
asked = st.lists(st.one_of(known_path, known_path, st.text(max_size=10)), max_size=6)
good_bodies = st.one_of(  # what huggingface_hub (a form) and nanostream (JSON) send
    st.tuples(st.just("application/json"), st.builds(lambda p, e: {"paths": p, **e}, asked,
                                                     st.sampled_from([{}, {"expand": True}])).map(json.dumps)),
    st.tuples(st.sampled_from(["application/x-www-form-urlencoded", ""]),
              asked.map(lambda ps: urlencode([("paths", p) for p in ps] + [("expand", "false")]))),
).map(lambda ct_body: (ct_body[0], ct_body[1].encode()))
bad_bodies = st.one_of(
    st.just((None, b"")),
    st.tuples(st.just("application/json"), st.one_of(json_values, st.builds(lambda p: {"paths": p}, json_values))
              .map(lambda v: json.dumps(v).encode())),
    st.tuples(st.sampled_from(["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=nope",
                               "application/json; charset=latin-1", "application/json; charset=nope", ""]),
              st.lists(st.tuples(st.sampled_from(["paths", "expand", "x"]), st.one_of(known_path, st.text(max_size=8))),
                       max_size=5).map(lambda kv: urlencode(kv).encode())),
    st.tuples(st.sampled_from(["multipart/form-data; boundary=b", "multipart/form-data", "text/plain"]),
              st.just(b'--b\r\nContent-Disposition: form-data; name="paths"\r\n\r\ndata\r\n--b--\r\n')),
    st.tuples(st.sampled_from(["application/json", "application/x-www-form-urlencoded"]), st.binary(max_size=64)),
    st.tuples(st.sampled_from(["application/json", "application/x-www-form-urlencoded"]),
              st.just(b'{"paths": ["' + b"a" * (MAX_BODY + 10) + b'"]}')),
)
hosts = st.sampled_from([None, b"localhost", b"x:99999", b"[::1", b"a b", b"\x80\xff", b"%00", b"h/p?q"])


@settings(max_examples=500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_every_answer_to_the_hub_routes_is_a_4xx_with_a_json_error_at_worst(mirror: Mirror, data) -> None:
    route, method, target = data.draw(requests(mirror.sha))
    content_type, body = data.draw(weighted((good_bodies, 2), (bad_bodies, 1)) if route == "paths-info" else bad_bodies)
    host = data.draw(hosts)
    headers = [("Host", host if host is not None else f"{mirror.host}:{mirror.port}".encode())]
    if content_type is not None:
        headers.append(("Content-Type", content_type.encode()))
    status, got, answer = exchange(mirror, method, target, headers, body)
    event(f"{route} {method} {status}")
    assert 200 <= status < 500, (status, method, target[:300], answer[:300])
    assert got.get("x-error-code", "RepoNotFound") in ERROR_CODES
    if status >= 400 and method != "HEAD":
        assert got.get("content-type", "").startswith("application/json"), (status, method, target[:300], answer[:300])
        assert isinstance(json.loads(answer)["error"], str)


def test_after_the_fuzz_the_mirror_still_answers_and_logged_no_traceback(mirror: Mirror) -> None:
    host = f"{mirror.host}:{mirror.port}".encode()
    status, _, body = exchange(mirror, "GET", f"/api/datasets/{REPO}", [("Host", host)], b"")
    assert status == 200 and json.loads(body)["sha"] == mirror.sha
    status, got, body = exchange(mirror, "GET", "/api/datasets/org/corpus/tree/main?recursive=true&expand=true",
                                 [("Host", b"a b")], b"")  # a Host that is no host: the Link names the socket
    assert status == 200 and len(json.loads(body)) == 50
    nxt = got["link"].removeprefix("<").split(">")[0]
    assert nxt.startswith(f"http://{mirror.host}:{mirror.port}/api/datasets/{REPO}/tree/main?"), nxt
    status, _, body = exchange(mirror, "GET", nxt.split(str(mirror.port), 1)[1], [("Host", host)], b"")
    assert status == 200 and len(json.loads(body)) == len(FILES) + 4 - 50  # the rest: files and 4 folders
    log = mirror.log.read_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]
