"""s3:// listing, verification kinds, the credential chain and signed ranged GETs, against moto on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from nanostream.errors import DatasetError
from nanostream.retry import RetryPolicy
from nanostream.sources.credentials import Credentials

pytest.importorskip("botocore")
moto_server = pytest.importorskip("moto.server")

from nanostream.sources.s3 import S3Path, parse_s3_url, s3_catalog, verification_summary  # noqa: E402

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.02)
BODY = b"PAR1" + bytes(range(256)) * 64 + b"PAR1"


@pytest.fixture(scope="module")
def moto_url():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """A clean credential chain: env keys, empty ~/.aws files, no instance role lookups."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


@pytest.fixture
def bucket(moto_url, aws_env):
    """A fresh bucket and a botocore client to fill it (setup only; nanostream never uses the client)."""
    import botocore.session

    client = botocore.session.get_session().create_client("s3", region_name="us-east-1", endpoint_url=moto_url)
    name = f"nano-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield name, client
    client.close()


@pytest.fixture(scope="module")
def strict_moto():
    """moto in a subprocess that checks every SigV4 signature (after 3 unsigned IAM set-up calls).

    Yields (url, access key, secret) of an IAM user allowed s3:*, and a bucket filled by it.
    """
    import botocore.session

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", "AWS_ACCESS_KEY_ID": "setup",
           "AWS_SECRET_ACCESS_KEY": "setup", "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto server did not start")
                time.sleep(0.1)
        session = botocore.session.get_session()
        iam = session.create_client("iam", region_name="us-east-1", endpoint_url=url,
                                    aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="nano")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="nano", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="nano")["AccessKey"]
        iam.close()
        s3 = session.create_client("s3", region_name="us-east-1", endpoint_url=url,
                                   aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        s3.create_bucket(Bucket="strict")
        for k in ("p/a.parquet", "p/odd key+(1)=&.parquet", "p/z/b.parquet"):
            put(s3, "strict", k, sha=True)
        s3.close()
        yield url, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def put(client, bucket, key, body=BODY, *, sha=False):
    kwargs = {"ChecksumAlgorithm": "SHA256"} if sha else {}
    client.put_object(Bucket=bucket, Key=key, Body=body, **kwargs)


def put_multipart(client, bucket, key):
    up = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")
    parts = []
    for n, body in enumerate((b"x" * (5 << 20), b"tail"), 1):
        r = client.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=body,
                               ChecksumAlgorithm="SHA256")
        parts.append({"ETag": r["ETag"], "PartNumber": n, "ChecksumSHA256": r["ChecksumSHA256"]})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                     MultipartUpload={"Parts": parts})


async def resolved(endpoint: str | None = None) -> Credentials:
    """Credentials with the AWS chain resolved, as a download of an s3:// file has them."""
    credentials = Credentials(s3_endpoint=endpoint)
    await credentials.prepare(["s3://"])
    return credentials


@pytest.mark.parametrize("url, expected", [
    ("s3://my-bucket", S3Path("my-bucket", "")),
    ("s3://my-bucket/", S3Path("my-bucket", "")),
    ("s3://my-bucket/corpus", S3Path("my-bucket", "corpus/")),
    ("s3://my.bucket/a/b/", S3Path("my.bucket", "a/b/")),
])
def test_urls(url, expected):
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize("url", ["http://b/x", "s3://", "s3://Bad_Bucket/x", "s3://ab/x", "s3://a..b/x"])
def test_bad_urls(url):
    with pytest.raises(DatasetError, match="s3://"):
        parse_s3_url(url)


async def test_listing_paginates_and_records_what_each_file_is_checked_against(moto_url, bucket):
    name, client = bucket
    put(client, name, "corpus/train/a.parquet", sha=True)
    put(client, name, "corpus/train/b.parquet")
    put_multipart(client, name, "corpus/train/c.parquet")
    put(client, name, "corpus/val/d.parquet")
    put(client, name, "corpus/notes.txt", b"x")
    put(client, name, "corpus2/e.parquet")  # outside the prefix "corpus/"
    cat = await s3_catalog(f"s3://{name}/corpus", endpoint=moto_url, page_size=2, retry=FAST)
    assert [f.path for f in cat.files] == ["train/a.parquet", "train/b.parquet", "train/c.parquet",
                                           "val/d.parquet"]
    a, b, c, _ = cat.files
    assert a.sha256 == hashlib.sha256(BODY).hexdigest() and a.verification == "sha256"
    assert b.sha256 is None and b.md5 == hashlib.md5(BODY).hexdigest() and b.verification == "md5"
    assert c.sha256 is None and c.md5 is None and c.size == (5 << 20) + 4 and c.verification == "size"
    assert a.url == f"s3://{name}/corpus/train/a.parquet" and cat.source == f"s3://{name}/corpus/"
    assert verification_summary(cat) == ("MD5 (single-part ETag) for 2 files, sha256 for 1 file, "
                                         "size alone for 1 file")
    assert [f.path for f in cat.split("val")] == ["val/d.parquet"]


async def test_include_and_empty_prefixes(moto_url, bucket):
    name, client = bucket
    put(client, name, "x/a.parquet")
    put(client, name, "x/b.parquet")
    put(client, name, "x/readme.md", b"x")
    cat = await s3_catalog(f"s3://{name}/x/", endpoint=moto_url, include="b*")
    assert [f.path for f in cat.files] == ["b.parquet"]
    with pytest.raises(DatasetError, match=r"no \*\.parquet objects .*\(0 objects seen\)"):
        await s3_catalog(f"s3://{name}/nothing/", endpoint=moto_url)
    with pytest.raises(DatasetError, match=r"no \*\.parquet objects matching --include 'z\*' \(3 objects seen\)"):
        await s3_catalog(f"s3://{name}/x/", endpoint=moto_url, include="z*")


async def test_a_missing_bucket_says_so(moto_url, aws_env):
    with pytest.raises(DatasetError, match=r"s3://no-such-bucket-here: no such bucket \(HTTP 404\).*AWS_ENDPOINT_URL"):
        await s3_catalog("s3://no-such-bucket-here/x/", endpoint=moto_url, retry=FAST)


async def test_signed_ranged_get_reads_the_bytes(moto_url, bucket):
    name, client = bucket
    put(client, name, "data/odd key+(1).parquet")
    credentials = await resolved(moto_url)
    url = credentials.http_url(f"s3://{name}/data/odd key+(1).parquet")
    headers = credentials.get(url, True, 4, 100)
    assert "range" in headers["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert headers["Range"] == "bytes=4-99" and "Credential=AKIDENV/" in headers["Authorization"]
    async with aiohttp.ClientSession() as s:
        async with s.get(URL(url, encoded=True), headers=headers) as resp:
            assert resp.status == 206 and await resp.read() == BODY[4:100]
            assert resp.headers["Content-Range"] == f"bytes 4-99/{len(BODY)}"
        async with s.get(URL(url, encoded=True), headers=credentials.get(url, True)) as resp:
            assert resp.status == 200 and await resp.read() == BODY
            etag = resp.headers["ETag"]
        async with s.get(URL(url, encoded=True), headers=credentials.get(url, True, 4, 8, etag)) as resp:
            assert resp.status == 206 and await resp.read() == BODY[4:8]
        changed = credentials.get(url, True, 4, 8, '"0123456789abcdef0123456789abcdef"')
        async with s.get(URL(url, encoded=True), headers=changed) as resp:
            assert resp.status == 412  # another version: no bytes of it


async def test_credentials_come_from_the_standard_chain(aws_env, tmp_path):
    (tmp_path / "aws-credentials").write_text("[nano]\naws_access_key_id = AKIDPROFILE\n"
                                              "aws_secret_access_key = s\n")
    (tmp_path / "aws-config").write_text("[profile nano]\nregion = eu-west-3\n")
    aws_env.setenv("AWS_PROFILE", "nano")
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    credentials = await resolved()
    headers = credentials.get(credentials.http_url("s3://bkt/k.parquet"), True, 0, 10)
    assert "Credential=AKIDPROFILE/" in headers["Authorization"] and "/eu-west-3/s3/" in headers["Authorization"]
    assert credentials.http_url("s3://bkt/k.parquet") == "https://bkt.s3.eu-west-3.amazonaws.com/k.parquet"
    aws_env.delenv("AWS_PROFILE")
    anonymous = await resolved("http://127.0.0.1:9")
    assert anonymous.get("http://127.0.0.1:9/b/k", True, 0, 10) == {
        "Accept-Encoding": "identity", "Range": "bytes=0-9"}


async def test_missing_extra_is_one_clear_error(aws_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "botocore.session", None)
    with pytest.raises(DatasetError, match=r"pip install 'nanostream\[s3\]'"):
        await Credentials().prepare(["s3://b/k"])


@pytest.fixture
def refusing_store(aiohttp_server):
    """``await refusing_store(handler)``: a store answering request n with ``handler(n)``;
    (its URL, the Authorization headers it saw). Stopped at the test's end."""

    async def start(handler) -> tuple[str, list]:
        seen: list = []

        async def handle(request: web.Request) -> web.StreamResponse:
            seen.append(request.headers.get("Authorization", ""))
            return handler(len(seen))

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return f"http://127.0.0.1:{(await aiohttp_server(app)).port}", seen

    return start


LISTING = (b'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           b"<IsTruncated>false</IsTruncated><Contents><Key>p/a.parquet</Key><Size>5</Size>"
           b"<ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag></Contents></ListBucketResult>")


async def test_access_denied_and_another_region(aws_env, refusing_store):
    def deny(n: int) -> web.Response:
        return web.Response(status=403, body=b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>")

    def moved(n: int) -> web.Response:
        return web.Response(status=301, headers={"x-amz-bucket-region": "ap-south-1"},
                            body=b"<Error><Code>PermanentRedirect</Code></Error>")

    url, _ = await refusing_store(deny)
    with pytest.raises(DatasetError, match=r"access denied \(HTTP 403\) \(AccessDenied: no\): the credentials"):
        await s3_catalog("s3://bkt/p/", endpoint=url, retry=FAST)
    url, seen = await refusing_store(moved)  # listings and downloads sign for the chain's region: say which to set
    with pytest.raises(DatasetError, match=r"s3://bkt is in region ap-south-1, not us-east-1 \(HTTP 301 "
                                           r"\(PermanentRedirect: \)\): set AWS_REGION=ap-south-1"):
        await s3_catalog("s3://bkt/p/", endpoint=url, retry=FAST)
    assert len(seen) == 1 and "/us-east-1/s3/" in seen[0]


def test_checksum_header_decodes_to_the_hex_digest():
    assert base64.b64decode("a3z7P5F+ZjDm2QzTpb9CfZoidd2Hs4k90h45dKkga58=").hex() == (
        hashlib.sha256(b"PAR1" + bytes(range(256)) * 40 + b"PAR1").hexdigest())


def test_config_reads_the_s3_endpoint():
    from nanostream.config import Config
    from nanostream.errors import ConfigError

    assert Config.from_env({}).s3_endpoint is None
    assert Config.from_env({"AWS_ENDPOINT_URL": "http://minio:9000/"}).s3_endpoint == "http://minio:9000"
    both = {"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "https://r2.example"}
    assert Config.from_env(both).s3_endpoint == "https://r2.example"
    with pytest.raises(ConfigError, match=r"AWS_ENDPOINT_URL\(_S3\)='minio:9000' is not an http"):
        Config.from_env({"AWS_ENDPOINT_URL": "minio:9000"})


async def test_signatures_pass_a_store_that_checks_them(strict_moto, aws_env):
    url, key_id, secret = strict_moto
    aws_env.setenv("AWS_ACCESS_KEY_ID", key_id)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", secret)
    cat = await s3_catalog("s3://strict/p/", endpoint=url, page_size=1, retry=FAST)  # continuation tokens
    assert [(f.path, f.verification) for f in cat.files] == [
        ("a.parquet", "sha256"), ("odd key+(1)=&.parquet", "sha256"), ("z/b.parquet", "sha256")]
    credentials = await resolved(url)
    obj = credentials.http_url("s3://strict/p/odd key+(1)=&.parquet")
    async with aiohttp.ClientSession() as s:
        async with s.get(URL(obj, encoded=True), headers=credentials.get(obj, True, 2, 6)) as resp:
            assert resp.status == 206 and await resp.read() == BODY[2:6]
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(DatasetError, match=r"access denied \(HTTP 403\) \(SignatureDoesNotMatch.*credentials found "
                                           r"were refused; set AWS_ACCESS_KEY_ID"):
        await s3_catalog("s3://strict/p/", endpoint=url, retry=FAST)


async def test_an_object_gone_between_listing_and_head_is_an_error(aws_env, refusing_store):
    listing = LISTING.replace(b"</ETag>", b"</ETag><ChecksumAlgorithm>SHA256</ChecksumAlgorithm>")

    def list_then_gone(n: int) -> web.Response:
        return web.Response(body=listing) if n == 1 else web.Response(status=404)

    url, _ = await refusing_store(list_then_gone)
    with pytest.raises(DatasetError, match=r"/bkt/p/a\.parquet: the object was listed but is gone"):
        await s3_catalog("s3://bkt/p/", endpoint=url, retry=FAST)


async def test_no_credentials_anywhere_is_the_403_hint(moto_url, bucket, aws_env):
    name, client = bucket
    put(client, name, "p/a.parquet", sha=True)  # moto lists anonymously, but refuses the anonymous HEAD
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DatasetError, match=rf"s3://{name}: access denied \(HTTP 403\).*no AWS credentials found; "
                                           "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"):
        await s3_catalog(f"s3://{name}/p/", endpoint=moto_url, retry=FAST)


# -- downloads: the same downloader, signed, with ranges, If-Match and the catalog's checksums -----
async def test_objects_download_split_verified_and_a_changed_object_is_an_error(moto_url, bucket, tmp_path):
    from nanostream.errors import VerificationError
    from nanostream.fetch.many import fetch_files

    name, client = bucket
    big = b"PAR1" + os.urandom(1 << 20) + b"PAR1"
    put(client, name, "c/a.parquet", big, sha=True)
    put(client, name, "c/sub/b b.parquet", BODY)
    cat = await s3_catalog(f"s3://{name}/c/", endpoint=moto_url, retry=FAST)
    results = await fetch_files(cat.files, data_dir=tmp_path / "d", s3_endpoint=moto_url, workers=4,
                                min_split=64 << 10, retry=FAST)
    assert [r.error for r in results] == [None, None] and [r.name for r in results] == ["a.parquet", "sub/b b.parquet"]
    assert (tmp_path / "d" / "a.parquet").read_bytes() == big
    assert (tmp_path / "d" / "sub" / "b b.parquet").read_bytes() == BODY
    put(client, name, "c/sub/b b.parquet", BODY[:-8] + b"zzzzPAR1")  # same size, other bytes
    [res] = await fetch_files([cat.files[1]], data_dir=tmp_path / "e", s3_endpoint=moto_url, retry=FAST)
    assert isinstance(res.error, VerificationError) and "changed at the source since it was listed" in str(res.error)
    assert not (tmp_path / "e" / "sub" / "b b.parquet").exists()


def test_cli_fetches_a_prefix_and_says_what_was_verified(moto_url, bucket, tmp_path):
    name, client = bucket
    put(client, name, "p/train-0.parquet", BODY, sha=True)
    put(client, name, "p/train-1.parquet", BODY)
    put(client, name, "p/val-0.parquet", BODY)
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_url}
    run = [sys.executable, "-m", "nanostream.cli", "fetch", "--data-dir", str(tmp_path / "d")]
    out = subprocess.run([*run, "--dataset", f"s3://{name}/p/"], capture_output=True, text=True, env=env, timeout=90)
    assert out.returncode == 0, out.stderr
    assert "verification: MD5 (single-part ETag) for 2 files, sha256 for 1 file" in out.stderr
    assert sorted(p.name for p in (tmp_path / "d").iterdir() if not p.name.endswith(".lock")) == [
        ".nanostream.json", "train-0.parquet", "train-1.parquet", "val-0.parquet"]
    out = subprocess.run([*run[:-1], str(tmp_path / "x"), "--dataset", "s3://no-such-bucket-here/p/"],
                         capture_output=True, text=True, env=env, timeout=90)
    assert out.returncode == 2 and "no such bucket" in out.stderr and len(out.stderr.strip().splitlines()) == 1


async def test_stream_reads_a_prefix_while_downloading(moto_url, bucket, tmp_path):
    import asyncio
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from nanostream import Source, stream
    from nanostream.config import Config

    name, client = bucket
    for split, k in (("train", 0), ("train", 1), ("val", 2)):
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": [f"doc:{k}:{r}" for r in range(12)]}), buf, row_group_size=4)
        put(client, name, f"p/{split}/{k}.parquet", buf.getvalue(), sha=k == 0)
    cfg = Config(base_dir=tmp_path, s3_endpoint=moto_url)
    s = await asyncio.to_thread(stream, "train", data=Source(f"s3://{name}/p/", num_shards=2), config=cfg)
    texts = [t async for b in s for t in b.texts]
    assert sorted(texts) == sorted(f"doc:{k}:{r}" for k in (0, 1) for r in range(12))
    folder = tmp_path / "data" / "s3" / name / "p"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.parquet")) == [
        "train/0.parquet", "train/1.parquet"]


async def test_a_resumed_range_sends_if_match_and_a_changed_object_answers_412(moto_url, bucket, tmp_path):
    """A part file saved against an old ETag: the continuation's If-Match gets 412. A listed file fails
    ("changed since listed"); one the catalog knows nothing about starts over and gets the new bytes."""
    from nanostream.fetch.many import fetch_files
    from nanostream.fetch.partial import PartFiles, PartState
    from nanostream.sources.catalog import DataFile

    name, client = bucket
    old, new = b"PAR1" + os.urandom(4000) + b"PAR1", b"PAR1" + os.urandom(4000) + b"PAR1"
    put(client, name, "r/x.parquet", old)
    etag = client.head_object(Bucket=name, Key="r/x.parquet")["ETag"]
    put(client, name, "r/x.parquet", new)  # same size, another ETag
    credentials = await resolved(moto_url)
    url = credentials.http_url(f"s3://{name}/r/x.parquet")
    for k, listed in enumerate((True, False)):
        final = tmp_path / f"d{k}" / "x.parquet"
        final.parent.mkdir()
        pf = PartFiles(final, size=len(old))
        pf.save(PartState(url, len(old), etag, None, [[2000, len(old)]]))  # bytes [0, 2000) "written" before
        pf.close()
        file = DataFile("x.parquet", len(old) if listed else None, url=f"s3://{name}/r/x.parquet")
        [res] = await fetch_files([file], data_dir=final.parent, s3_endpoint=moto_url, retry=FAST)
        if listed:
            assert "changed at the source since it was listed: it answers 412 to If-Match" in str(res.error)
            assert not final.exists()
        else:
            assert res.error is None and final.read_bytes() == new
