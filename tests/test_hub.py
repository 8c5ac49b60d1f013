"""hf:// URLs, revision pinning, the paginated tree listing and every refusal, against tests/hubserver.py."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest

from nanostream.errors import DatasetError, RetriesExhausted
from nanostream.retry import RetryPolicy
from nanostream.sources.hub import HubPath, hub_catalog, hub_headers, parse_hub_url

from datagen import write_shard
from hubserver import TOKEN, HubServer

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.02)


@pytest.mark.parametrize("url, expected", [
    ("hf://datasets/org/name", HubPath("org/name", None, "")),
    ("hf://datasets/org/name/", HubPath("org/name", None, "")),
    ("hf://datasets/org/name@v1.0", HubPath("org/name", "v1.0", "")),
    ("hf://datasets/HuggingFaceFW/fineweb/data/CC-MAIN-2024-10",
     HubPath("HuggingFaceFW/fineweb", None, "data/CC-MAIN-2024-10")),
    ("hf://datasets/org/name@main/data/x", HubPath("org/name", "main", "data/x")),
    ("hf://datasets/org/name@refs/pr/3/data", HubPath("org/name", "refs/pr/3", "data")),
    ("hf://datasets/org/name@refs/convert/parquet", HubPath("org/name", "refs/convert/parquet", "")),
    ("hf://datasets/org/name@refs%2Fheads%2Fdev/data", HubPath("org/name", "refs/heads/dev", "data")),
])
def test_urls_parse_as_hffilesystem_does(url, expected):
    assert parse_hub_url(url) == expected


@pytest.mark.parametrize("url, why", [
    ("https://huggingface.co/datasets/org/name", "not an hf:// URL"),
    ("hf://org/name", "only dataset repos"),
    ("hf://datasets/org", "names no repo"),
    ("hf://datasets/org/name@", "empty revision"),
    ("hf://datasets/org/na--me", "not a valid repo name"),
    ("hf://datasets/org/name/data@x", "may only follow the repo name"),
])
def test_bad_urls_say_what_is_wrong(url, why):
    with pytest.raises(DatasetError, match=why):
        parse_hub_url(url)


def test_the_token_goes_to_the_hub_origin_only():
    assert hub_headers("http://127.0.0.1:9/api/x", "http://127.0.0.1:9", "t") == {"Authorization": "Bearer t"}
    for other in ("http://localhost:9/api/x", "http://127.0.0.1:8/x", "https://127.0.0.1:9/x", "http://cdn/x"):
        assert hub_headers(other, "http://127.0.0.1:9", "t") == {}
    assert hub_headers("http://127.0.0.1:9/api/x", "http://127.0.0.1:9", None) == {}


def make_repo(root, names) -> dict[str, str]:
    """Tiny parquet files (and any other file) at ``names``; their sha256 by path."""
    shas = {}
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".parquet"):
            write_shard(path, i, 1, 2)
        else:
            path.write_text("# readme\n")
        shas[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return shas


LAYOUT = ["README.md", "data/train-00000.parquet", "data/train-00001.parquet", "data/validation-00000.parquet",
          "data/sub/train-00002.parquet", "other/x.parquet"]


async def test_listing_pins_the_commit_and_follows_pagination(tmp_path):
    shas = make_repo(tmp_path / "repo", LAYOUT)
    async with HubServer(page_size=2) as hub:
        sha = hub.add_repo("org/name", tmp_path / "repo")
        cat = await hub_catalog("hf://datasets/org/name/data", endpoint=hub.url)
        trees = [s for s in hub.requests if "/tree/" in s.path_qs]
    assert cat.revision == sha and cat.source == "hf://datasets/org/name/data"
    assert [f.path for f in cat.files] == ["sub/train-00002.parquet", "train-00000.parquet",
                                           "train-00001.parquet", "validation-00000.parquet"]
    first = cat.files[1]
    assert first.sha256 == shas["data/train-00000.parquet"]
    assert first.size == (tmp_path / "repo/data/train-00000.parquet").stat().st_size
    assert first.url == f"{hub.url}/datasets/org/name/resolve/{sha}/data/train-00000.parquet"
    assert len(trees) == 3 and all(f"/tree/{sha}/data?" in s.path_qs for s in trees)  # 5 entries, 2 a page
    assert [f.path for f in cat.split("validation")] == ["validation-00000.parquet"]


async def test_a_later_commit_does_not_change_a_pinned_listing(tmp_path):
    make_repo(tmp_path / "v1", ["a.parquet", "b.parquet"])
    make_repo(tmp_path / "v2", ["a.parquet", "b.parquet", "c.parquet"])
    async with HubServer() as hub:
        old = hub.add_repo("org/name", tmp_path / "v1")
        hub.repos["org/name"].refs["v1"] = old
        new = hub.commit("org/name", tmp_path / "v2")
        main = await hub_catalog("hf://datasets/org/name", endpoint=hub.url)
        tagged = await hub_catalog("hf://datasets/org/name@v1", endpoint=hub.url)
        pinned = await hub_catalog("hf://datasets/org/name", endpoint=hub.url, revision=old)
    assert main.revision == new and len(main.files) == 3
    assert tagged.revision == pinned.revision == old and tagged.files == pinned.files
    assert [f.path for f in pinned.files] == ["a.parquet", "b.parquet"]


async def test_include_narrows_and_a_path_without_parquet_is_an_error(tmp_path):
    make_repo(tmp_path / "repo", LAYOUT)
    async with HubServer() as hub:
        hub.add_repo("org/name", tmp_path / "repo")
        cat = await hub_catalog("hf://datasets/org/name", endpoint=hub.url, include="data/train-*")
        assert [f.path for f in cat.files] == ["data/train-00000.parquet", "data/train-00001.parquet"]
        assert cat.include == "data/train-*"
        with pytest.raises(DatasetError, match=r"no \*\.parquet files matching --include 'x\*'.*6 files seen"):
            await hub_catalog("hf://datasets/org/name", endpoint=hub.url, include="x*")
        make_repo(tmp_path / "docs", ["README.md"])
        hub.add_repo("org/docs", tmp_path / "docs")
        with pytest.raises(DatasetError, match=r"hf://datasets/org/docs at commit \w+: no \*\.parquet files"):
            await hub_catalog("hf://datasets/org/docs", endpoint=hub.url)


async def test_refusals_each_have_their_hint(tmp_path):
    make_repo(tmp_path / "repo", ["a.parquet", "b.parquet"])
    async with HubServer() as hub:
        hub.add_repo("org/name", tmp_path / "repo")
        hub.add_repo("org/private", tmp_path / "repo", private=True)
        hub.add_repo("org/gated", tmp_path / "repo", gated=True)
        cases = [
            ("hf://datasets/org/missing", None, r"not found or private \(HTTP 401\): set HF_TOKEN"),
            ("hf://datasets/org/missing", TOKEN, r"no such dataset repo .*\(HTTP 404\): check ORG/NAME"),
            ("hf://datasets/org/private", None, r"HTTP 401\): set HF_TOKEN"),
            ("hf://datasets/org/private", "hf_wrong", r"HTTP 401\): HF_TOKEN was refused"),
            ("hf://datasets/org/name@nope", None, r"revision 'nope' does not exist"),
            ("hf://datasets/org/name/no/such/dir", None, r"no path 'no/such/dir'"),
        ]
        for url, token, why in cases:
            with pytest.raises(DatasetError, match=why):
                await hub_catalog(url, endpoint=hub.url, token=token, retry=FAST)
        private = await hub_catalog("hf://datasets/org/private", endpoint=hub.url, token=TOKEN)
        # a gated repo is listed by anyone, as on the Hub: its downloads are refused (test_fetch_cli.py)
        gated = [await hub_catalog("hf://datasets/org/gated", endpoint=hub.url, token=t) for t in (None, TOKEN)]
    assert len(private.files) == 2 and [len(g.files) for g in gated] == [2, 2]
    assert all(s.authorization in (None, f"Bearer {TOKEN}", "Bearer hf_wrong") for s in hub.requests)


async def test_later_pages_on_another_host_get_no_token(tmp_path):
    make_repo(tmp_path / "repo", [f"f{i}.parquet" for i in range(5)])
    async with HubServer(page_size=2) as hub:
        hub.add_repo("org/name", tmp_path / "repo", private=False)
        hub.next_host = f"localhost:{hub.url.rsplit(':', 1)[1]}"
        cat = await hub_catalog("hf://datasets/org/name", endpoint=hub.url, token=TOKEN)
    assert len(cat.files) == 5
    pages = [s for s in hub.requests if "/tree/" in s.path_qs]
    assert [(s.host.split(":")[0], s.authorization) for s in pages] == [
        ("127.0.0.1", f"Bearer {TOKEN}"), ("localhost", None), ("localhost", None)]


async def test_transient_failures_are_retried_then_reported(tmp_path):
    make_repo(tmp_path / "repo", ["a.parquet", "b.parquet"])
    async with HubServer() as hub:
        hub.add_repo("org/name", tmp_path / "repo")
        hub.fail_next(503, 429)
        cat = await hub_catalog("hf://datasets/org/name", endpoint=hub.url, retry=FAST)
        assert len(cat.files) == 2
        hub.fail_next(503, 503, 503)
        with pytest.raises(RetriesExhausted, match="gave up after 3 attempts; last: HTTP 503"):
            await hub_catalog("hf://datasets/org/name", endpoint=hub.url, retry=FAST)


async def test_resolve_urls_serve_the_listed_bytes_with_hub_headers(tmp_path):
    shas = make_repo(tmp_path / "repo", ["data/a.parquet", "data/b.parquet"])
    async with HubServer() as hub:
        hub.add_repo("org/name", tmp_path / "repo")
        cat = await hub_catalog("hf://datasets/org/name", endpoint=hub.url)
        f = cat.files[0]
        async with aiohttp.ClientSession() as s:
            async with s.get(f.url, headers={"Range": "bytes=4-"}) as resp:
                body = await resp.read()
                linked = resp.history[0].headers
    assert resp.status == 206 and body == (tmp_path / "repo/data/a.parquet").read_bytes()[4:]
    assert linked["X-Linked-Etag"] == f'"{shas["data/a.parquet"]}"' == f'"{f.sha256}"'
    assert linked["X-Linked-Size"] == str(f.size) and linked["X-Repo-Commit"] == cat.revision


async def test_a_path_may_name_one_file(tmp_path):
    shas = make_repo(tmp_path / "repo", LAYOUT)
    async with HubServer() as hub:
        hub.add_repo("org/name", tmp_path / "repo")
        cat = await hub_catalog("hf://datasets/org/name/data/train-00001.parquet", endpoint=hub.url)
        with pytest.raises(DatasetError, match=r"at commit \w+: no \*\.parquet files"):
            await hub_catalog("hf://datasets/org/name/data/nope.parquet", endpoint=hub.url)
    assert [(f.path, f.sha256) for f in cat.files] == [("train-00001.parquet", shas["data/train-00001.parquet"])]
    assert cat.files[0].url.endswith("/data/train-00001.parquet")


async def test_todays_downloader_fetches_and_verifies_a_listed_file(tmp_path):
    """The resolve endpoint behaves as the Hub's for nanostream.fetch.fetcher (redirect, X-Linked-Etag, ranges)."""
    from nanostream.fetch.many import fetch_shards

    shas = make_repo(tmp_path / "repo", ["shard_00000.parquet", "shard_00001.parquet"])
    async with HubServer() as hub:
        hub.add_repo("org/name", tmp_path / "repo")
        cat = await hub_catalog("hf://datasets/org/name", endpoint=hub.url)
        base = cat.files[0].url.rsplit("/", 1)[0]
        results = await fetch_shards([0, 1], data_dir=tmp_path / "out", base_url=base, workers=2)
    assert [r.error for r in results] == [None, None]
    for f in cat.files:
        assert hashlib.sha256((tmp_path / "out" / f.path).read_bytes()).hexdigest() == f.sha256 == shas[f.path]


@pytest.mark.parametrize("headers", [
    {"RateLimit": '"api";r=0;t=55', "RateLimit-Policy": '"fixed window";"api";q=500;w=300'},
    {"ratelimit": '"resolvers";r=0;t=7'},
    {"RateLimit": '"api";r=3;t=55'},  # requests left in the window: no wait named
    {"RateLimit": "api;r=0;t=55"},  # not the draft's syntax
    {"Retry-After": "4"},
    {},
])
def test_rate_limit_headers_are_read_as_huggingface_hub_reads_them(headers):
    from huggingface_hub.utils import parse_ratelimit_headers
    from multidict import CIMultiDict

    from nanostream.retry import rate_limit_wait

    theirs, ours = parse_ratelimit_headers(headers), rate_limit_wait(CIMultiDict(headers))
    if theirs is not None and theirs.remaining == 0:
        assert ours is not None and ours[0] == theirs.reset_in_seconds + 1  # huggingface_hub sleeps t+1
    elif "Retry-After" in headers:
        assert ours == (4.0, "Retry-After 4")
    else:
        assert ours is None
