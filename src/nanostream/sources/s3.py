"""S3 and S3-compatible stores (R2, MinIO, Ceph): ``s3://BUCKET/PREFIX/`` to a Catalog, and SigV4 signing.

botocore (the ``s3`` extra) gives the credential chain and the signer only; requests go out through aiohttp.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp
from yarl import URL

from ..concurrency import run_each
from ..errors import DatasetError
from ..retry import LIST_RETRY, RETRY_STATUSES, Retries, RetryPolicy, client_session, transient, with_retries
from .catalog import Catalog, DataFile, parquet_only

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
MISSING_EXTRA = "s3:// datasets need botocore: pip install 'nanostream[s3]'"
HEADS = 16  # checksum HEADs at once while listing


@dataclass(frozen=True)
class S3Path:
    bucket: str
    prefix: str  # "" or ends with "/"

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key or self.prefix}"


def parse_s3_url(url: str) -> S3Path:
    """``s3://BUCKET[/PREFIX[/]]`` -> S3Path (the prefix is a folder: a missing ``/`` is added)."""
    if not url.startswith("s3://"):
        raise DatasetError(f"{url!r} is not an s3:// URL (use s3://BUCKET/PREFIX/)")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise DatasetError(f"{url!r}: {bucket!r} is not a valid bucket name (use s3://BUCKET/PREFIX/)")
    prefix = prefix.lstrip("/")
    return S3Path(bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/")


class S3Signer:
    """Credentials from the AWS chain, the region and the endpoint; signs each request (SigV4). Build with
    ``await S3Signer.create(endpoint)``; with no credentials in the chain, requests go unsigned."""

    def __init__(self, credentials: Any, region: str, endpoint: str | None = None) -> None:
        self.credentials, self.region = credentials, region
        self.endpoint = endpoint.rstrip("/") if endpoint else None

    @classmethod
    async def create(cls, endpoint: str | None = None) -> S3Signer:
        """Resolve credentials and region in a thread (the chain may read files or ask IMDS)."""
        try:
            import botocore.session
        except ImportError as exc:
            raise DatasetError(MISSING_EXTRA) from exc

        def resolve() -> tuple[Any, str]:
            session = botocore.session.Session()
            return session.get_credentials(), session.get_config_variable("region") or "us-east-1"

        try:
            creds, reg = await asyncio.to_thread(resolve)
        except Exception as exc:  # a broken profile, an unreachable SSO: botocore's own errors
            raise DatasetError(f"AWS credentials could not be resolved: {exc}") from exc
        return cls(creds, reg, endpoint)

    def bucket_url(self, bucket: str) -> str:
        if self.endpoint:
            return f"{self.endpoint}/{bucket}"
        if "." in bucket:  # a dotted name does not match the wildcard certificate: path-style
            return f"https://s3.{self.region}.amazonaws.com/{bucket}"
        return f"https://{bucket}.s3.{self.region}.amazonaws.com"

    def object_url(self, bucket: str, key: str) -> str:
        """The HTTP(S) URL of an object, already in SigV4's canonical encoding (send it as encoded)."""
        return f"{self.bucket_url(bucket)}/{quote(key, safe='/~')}"

    def headers(self, method: str, url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """``extra`` (e.g. Range, If-Range) plus the SigV4 headers for ``method url`` with no body."""
        headers = dict(extra or {})
        creds = self.credentials.get_frozen_credentials() if self.credentials is not None else None
        if creds is None:
            return headers
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method=method, url=url, headers=headers)
        S3SigV4Auth(creds, "s3", self.region).add_auth(request)
        return dict(request.headers.items())


async def s3_catalog(url: str, *, endpoint: str | None = None, include: str | None = None,
                     retry: RetryPolicy = LIST_RETRY, page_size: int | None = None) -> Catalog:
    """The parquet objects under ``url`` as a Catalog (paths relative to the prefix, sorted); at most
    ``HEADS`` checksum HEADs at once; ``page_size``: ListObjectsV2's max-keys (None: the store's)."""
    sp = parse_s3_url(url)
    signer = await S3Signer.create(endpoint)
    async with client_session(retry) as session:
        lister = Lister(session, signer, sp, retry, page_size)
        listed, with_sha256 = await lister.list()
        files = parquet_only(listed, include, sp.url(), "objects")
        sha256: dict[str, str] = {}
        await run_each((lister.checksum(f.path, sha256) for f in files if f.path in with_sha256), HEADS)
    files = [replace(f, sha256=sha256.get(f.path)) for f in files]
    return Catalog(url, tuple(files), source=sp.url(), include=include)


def verification_summary(cat: Catalog) -> str:
    """What downloads of ``cat`` are checked against, e.g. ``sha256 for 3 files, size alone for 1``."""
    words = {"sha256": "sha256", "md5": "MD5 (single-part ETag)", "size": "size alone", "none": "nothing"}
    counts = Counter(f.verification for f in cat.files)
    return ", ".join(f"{words[k]} for {n} file{'s' if n > 1 else ''}" for k, n in counts.most_common())


class Lister:
    """ListObjectsV2 pages and checksum HEADs for one prefix, with retries and error translation."""

    def __init__(self, session: aiohttp.ClientSession, signer: S3Signer, sp: S3Path, retry: RetryPolicy,
                 page_size: int | None = None):
        self.session, self.signer, self.sp, self.retry = session, signer, sp, retry
        self.page_size = page_size
        self.moved = False

    async def list(self) -> tuple[list[DataFile], set[str]]:
        """Every object under the prefix (paths relative to it), and the paths of those listed with a sha256."""
        files, with_sha256 = [], set()
        token: str | None = None
        while True:
            params = {"list-type": "2", "prefix": self.sp.prefix, "continuation-token": token,
                      "max-keys": str(self.page_size) if self.page_size else None}
            query = "&".join(f"{k}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()) if v is not None)
            _, body = await self._request("GET", lambda q=query: f"{self.signer.bucket_url(self.sp.bucket)}?{q}")
            try:
                root = ET.fromstring(body)
            except ET.ParseError as exc:
                raise DatasetError(f"{self.sp.url()}: the listing is not S3 XML ({exc}); is AWS_ENDPOINT_URL an "
                                   "S3 store?") from exc
            for c in root.iter(f"{NS}Contents"):
                key, etag = c.findtext(f"{NS}Key") or "", (c.findtext(f"{NS}ETag") or "").strip('"').lower()
                path = key[len(self.sp.prefix):]
                files.append(DataFile(path, int(c.findtext(f"{NS}Size") or 0), None,
                                      etag if _MD5_RE.match(etag) else None, f"s3://{self.sp.bucket}/{key}"))
                if any(a.text == "SHA256" for a in c.iter(f"{NS}ChecksumAlgorithm")):
                    with_sha256.add(path)
            token = root.findtext(f"{NS}NextContinuationToken")
            if root.findtext(f"{NS}IsTruncated") != "true" or not token:
                return files, with_sha256

    async def checksum(self, path: str, sha256: dict[str, str]) -> None:
        """Set ``sha256[path]`` (hex) if the object carries a full-object sha256."""
        key = self.sp.prefix + path
        headers, _ = await self._request("HEAD", lambda: self.signer.object_url(self.sp.bucket, key),
                                         {"x-amz-checksum-mode": "ENABLED"})
        value = headers.get("x-amz-checksum-sha256", "")
        kind = headers.get("x-amz-checksum-type", "")
        multipart = "-" in headers.get("ETag", "")
        if value and "-" not in value and (kind == "FULL_OBJECT" or (not kind and not multipart)):
            with contextlib.suppress(ValueError):
                sha256[path] = base64.b64decode(value, validate=True).hex()

    async def _request(self, method: str, url_of, extra: dict[str, str] | None = None):
        """(headers, body) of a 200 answer, retried (``retry.with_retries``); a bucket in another
        region is followed once, not counted as a failure."""
        async def attempt():
            url = url_of()
            async with self.session.request(method, URL(url, encoded=True), allow_redirects=False,
                                            headers=self.signer.headers(method, url, extra)) as resp:
                body = await resp.read()
                if resp.status == 200:
                    return resp.headers, body
                region = resp.headers.get("x-amz-bucket-region")
                if not region or region == self.signer.region or self.moved or resp.status not in (301, 400):
                    self._refuse(resp, body, url)
            self.moved = True  # the bucket is in another region: follow it once
            self.signer = S3Signer(self.signer.credentials, region, self.signer.endpoint)
            return await attempt()

        return await with_retries(Retries(self.retry, f"listing {self.sp.url()}", url=url_of()), attempt)

    def _refuse(self, resp: aiohttp.ClientResponse, body: bytes, url: str) -> NoReturn:
        code = message = ""
        if body:
            with contextlib.suppress(ET.ParseError):
                err = ET.fromstring(body)
                code, message = err.findtext("Code") or "", err.findtext("Message") or ""
        if resp.status in RETRY_STATUSES or code in ("SlowDown", "InternalError"):
            raise transient(resp.status, f"HTTP {resp.status} {code}".strip(), resp.headers)
        where, detail = f"s3://{self.sp.bucket}", f" ({code}: {message})" if code else ""
        if resp.method == "HEAD" and resp.status == 404:
            raise DatasetError(f"{url}: the object was listed but is gone (HTTP 404): the prefix is changing "
                               "under the listing; list again when it is stable")
        if resp.status == 404 or code == "NoSuchBucket":
            raise DatasetError(f"{where}: no such bucket (HTTP {resp.status}){detail}: check the name, and "
                               "AWS_ENDPOINT_URL for R2/MinIO")
        if resp.status in (401, 403):
            has = "the credentials found were refused" if self.signer.credentials else "no AWS credentials found"
            raise DatasetError(f"{where}: access denied (HTTP {resp.status}){detail}: {has}; set "
                               "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, with s3:ListBucket and "
                               "s3:GetObject on the bucket")
        raise DatasetError(f"{where}: the store answered HTTP {resp.status}{detail}")

