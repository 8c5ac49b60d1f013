"""The real huggingface_hub (HfApi, hf_hub_download, snapshot_download, HfFileSystem) against
``nanostream serve`` of a folder fetched from hf:// and against tests/hubserver.py itself."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nanostream.config import Config
from nanostream.fetch.many import fetch_files
from nanostream.serve.server import open_mirror
from nanostream.sources.catalog import write_catalog
from nanostream.sources.resolve import open_catalog

from datagen import write_shard
from hubserver import TOKEN, HubServer

pytest.importorskip("huggingface_hub")

LAYOUT = ["data/train/a-0.parquet", "data/train/a-1.parquet", "data/train/more/b-0.parquet",
          "data/validation/v-0.parquet"]
FILE = "data/train/more/b-0.parquet"
HERE = Path(__file__).parent


def make_repo(root: Path) -> Path:
    for i, name in enumerate(LAYOUT):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_shard(root / name, i, 2, 5)
    (root / "README.md").write_text("# corpus\n")
    return root


async def clients(endpoint: str, repo: str, tmp: Path, *extra: str, token: str | None = None) -> dict:
    """tests/hubclients.py in a subprocess with HF_ENDPOINT (read at import) and a fresh HF_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_XET="1")
    if token:
        env["HF_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(sys.executable, str(HERE / "hubclients.py"), repo, FILE, *extra,
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(got: dict, repo: Path, sha: str, names: list[str], endpoint: str) -> None:
    """What every Hub must answer for the repo at ``repo`` holding ``names`` at commit ``sha``."""
    files = [e for e in got["tree"] if e["type"] == "file"]
    dirs = sorted(e["path"] for e in got["tree"] if e["type"] == "directory")
    assert got["info"] == got["info_main"] == got["info_sha"] == sha
    assert got["info_other"]["error"] == "RevisionNotFoundError"
    assert got["tree_other"]["error"] == "RevisionNotFoundError"
    assert sorted(f["path"] for f in files) == sorted(got["files"]) == names
    assert dirs == ["data", "data/train", "data/train/more", "data/validation"]
    assert got["tree_sha"] == got["tree"]
    for f in files:
        if f["path"].endswith(".parquet"):
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(repo / f['path'])}\n" \
                      f"size {f['size']}\n".encode()
            assert f["lfs"] == {"size": (repo / f["path"]).stat().st_size, "sha256": sha256(repo / f["path"]),
                                "pointer_size": len(pointer)}
            assert f["oid"] == hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    assert sorted(s[0] for s in got["siblings"]) == names
    assert [e["path"] for e in got["tree_folder"]] == ["data/train/more/b-0.parquet"]
    assert [e["path"] for e in got["paths_info"]] == [FILE, "data/train/more"]
    assert got["metadata"] == {"commit": sha, "etag": sha256(repo / FILE), "size": (repo / FILE).stat().st_size}
    assert got["download"] == sha256(repo / FILE)
    assert got["download_missing"]["error"] == "RemoteEntryNotFoundError"
    assert got["snapshot"] == {n: sha256(repo / n) for n in names}
    root = f"datasets/{'/'.join(endpoint_repo(got))}"
    assert got["fs_ls"] == [[f"{root}/data/train/more/b-0.parquet", "file"]]
    parquet = sorted(f"{root}/{n}" for n in names if n.endswith(".parquet"))
    assert got["fs_glob"] == parquet and got["fs_glob_sha"] == [p.replace(root, f"{root}@{sha}") for p in parquet]
    assert got["fs_info"] == {"name": f"{root}/{FILE}", "size": (repo / FILE).stat().st_size, "type": "file"}
    assert got["fs_open"] == {"sha256": sha256(repo / FILE), "rows": pq.read_metadata(repo / FILE).num_rows}
    assert got["fs_rows"] == sum(pq.read_metadata(repo / n).num_rows for n in names if n.endswith(".parquet"))


def endpoint_repo(got: dict) -> list[str]:
    return got["fs_info"]["name"].split("/")[1:3]


@pytest.mark.slow
async def test_serve_of_a_fetched_folder_is_a_hub_for_huggingface_hub(tmp_path, monkeypatch):
    """Every HfApi / hf_hub_download / snapshot_download / HfFileSystem call of issue 16's table, at the
    mirror: the same files, bytes, sha256, git ids and rows as the Hub it was fetched from."""
    monkeypatch.setattr("nanostream.serve.hubapi.PAGE_SIZE", 3)  # the tree's pages, as the double's
    repo = make_repo(tmp_path / "repo")
    async with HubServer(page_size=3) as hub:
        sha = hub.add_repo("org/corpus", repo)
        cat = await open_catalog("hf://datasets/org/corpus/data", config=Config(base_dir=tmp_path,
                                                                               hf_endpoint=hub.url))
        write_catalog(tmp_path / "node0", cat)
        assert all(r.error is None for r in await fetch_files(cat.files, data_dir=tmp_path / "node0"))
        at_hub = await clients(hub.url, "org/corpus", tmp_path / "a")
    async with open_mirror(tmp_path / "node0") as mirror:
        url = mirror.url
        got = await clients(url, "org/corpus", tmp_path / "b", "--odd")
    check(got, repo, sha, LAYOUT, url)
    # control characters in what is asked: the class from X-Error-Code, the message from the JSON body
    assert got["odd_revision"] == {"error": "RevisionNotFoundError",
                                   "server": f"Invalid rev id: 'a\\x00b\\nc' (this mirror holds {sha})"}
    assert got["odd_tree"] == {"error": "RemoteEntryNotFoundError",
                               "server": f"'data/\\x01x' does not exist at {sha} in this mirror"}
    # the double answers the same, README included (the mirror holds what fetch kept: the parquet files)
    check({**at_hub, "snapshot": {k: v for k, v in at_hub["snapshot"].items() if k != "README.md"},
           "files": [f for f in at_hub["files"] if f != "README.md"],
           "siblings": [s for s in at_hub["siblings"] if s[0] != "README.md"],
           "tree": [e for e in at_hub["tree"] if e["path"] != "README.md"],
           "tree_sha": [e for e in at_hub["tree_sha"] if e["path"] != "README.md"]}, repo, sha, LAYOUT, hub.url)
    ids = lambda tree: {e["path"]: e["oid"] for e in tree if e["path"] != "README.md"}  # noqa: E731
    assert ids(got["tree"]) == ids(at_hub["tree"])  # blob and tree ids, computed apart, agree


@pytest.mark.slow
async def test_a_gated_repo_lists_without_a_token_and_refuses_the_download(tmp_path):
    repo = make_repo(tmp_path / "repo")
    async with HubServer() as hub:
        hub.add_repo("org/gated", repo, gated=True)
        anonymous = await clients(hub.url, "org/gated", tmp_path / "a", "--gated")
        with_token = await clients(hub.url, "org/gated", tmp_path / "b", "--gated", token=TOKEN)
    for got in (anonymous, with_token):
        assert isinstance(got["info"], str) and FILE in [e["path"] for e in got["tree"]]
        assert got["download"]["error"] == "GatedRepoError"
    assert "401" in anonymous["download"]["message"] and "403" in with_token["download"]["message"]


def test_the_tree_ids_are_gits_own(tmp_path):
    """hubtree's blob and tree ids equal what git computes for the same files."""
    from nanostream.serve.hubtree import Held, blob_oid, build_tree

    git = subprocess.run(["git", "--version"], capture_output=True)
    if git.returncode != 0:
        pytest.skip("git is not installed")
    names = ["README.md", "data/a.txt", "data/sub/b.bin", "data/sub/c d.txt", "data-x/e"]
    for i, n in enumerate(names):
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(bytes(range(i * 7 % 256)) * (i + 1))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(tmp_path), *cmd], check=True, env=env)
    listed = subprocess.run(["git", "-C", str(tmp_path), "ls-tree", "-r", "-t", "HEAD"], check=True,
                            capture_output=True, text=True).stdout
    expected = {line.split("\t")[1]: line.split()[2] for line in listed.splitlines()}
    stats = {n: (tmp_path / n).stat() for n in names}
    tree = build_tree(Held(n, st.st_size, None, blob_oid(tmp_path / n, st.st_size, st.st_mtime_ns))
                      for n, st in stats.items())
    assert {p: e["oid"] for p, e in tree.items()} == expected


async def test_the_mirror_answers_the_hub_api_details(tmp_path, monkeypatch):
    """What the table of the hubapi docstring says beyond the clients' calls: expand=, JSON paths-info,
    the expanded page size, refs/heads/main and the fetched revision, and each 404's X-Error-Code."""
    import aiohttp

    monkeypatch.setattr("nanostream.serve.hubapi.EXPANDED_PAGE_SIZE", 2)
    repo = make_repo(tmp_path / "repo")
    async with HubServer() as hub:
        sha = hub.add_repo("org/corpus", repo)
        hub.repos["org/corpus"].refs["v1"] = sha
        cat = await open_catalog("hf://datasets/org/corpus@v1", config=Config(base_dir=tmp_path, hf_endpoint=hub.url))
        write_catalog(tmp_path / "node0", cat)
        assert all(r.error is None for r in await fetch_files(cat.files, data_dir=tmp_path / "node0"))
    async with open_mirror(tmp_path / "node0") as mirror:
        url = mirror.url
        api = f"{url}/api/datasets/org/corpus"
        async with aiohttp.ClientSession() as s:
            async with s.get(api, params={"expand": "sha"}) as r:
                assert await r.json() == {"id": "org/corpus", "sha": sha}
            for rev in ("v1", "refs%2Fheads%2Fmain", sha):
                async with s.get(f"{api}/revision/{rev}") as r:
                    assert (await r.json())["sha"] == sha
            async with s.post(f"{api}/paths-info/main", json={"paths": [FILE, "nope"], "expand": False}) as r:
                assert [e["path"] for e in await r.json()] == [FILE]
            async with s.get(f"{api}/tree/main", params={"recursive": "true", "expand": "true"}) as r:
                assert len(await r.json()) == 2 and 'rel="next"' in r.headers["Link"]
            for path, code in ((f"{api}/tree/main/{FILE}", "EntryNotFound"), (f"{api}/tree/v2", "RevisionNotFound"),
                               (f"{url}/api/datasets/org/other/tree/main", "RepoNotFound"),
                               (f"{url}/datasets/org/corpus/resolve/main/README.md", "EntryNotFound")):
                async with s.get(path) as r:
                    assert (r.status, r.headers["X-Error-Code"]) == (404, code), path
