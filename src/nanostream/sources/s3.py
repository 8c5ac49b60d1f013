"""S3 and S3-compatible stores (R2, MinIO, Ceph): ``s3://BUCKET/PREFIX/`` to a Catalog (ListObjectsV2 and
checksum HEADs, signed by ``Credentials``).
"""

from __future__ import annotations

import base64
import contextlib
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, replace
from typing import NoReturn
from urllib.parse import quote

import aiohttp
from yarl import URL

from ..concurrency import run_each
from ..errors import DatasetError
from ..retry import LIST_RETRY, RETRY_STATUSES, Retries, RetryPolicy, client_session, transient, with_retries
from .catalog import Catalog, DataFile, parquet_only
from .credentials import Credentials

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
HEADS = 16  # checksum HEADs at once while listing


@dataclass(frozen=True)
class S3Path:
    bucket: str
    prefix: str  # "" or ends with "/"

    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_url(url: str) -> S3Path:
    """``s3://BUCKET[/PREFIX[/]]`` -> S3Path (the prefix is a folder: a missing ``/`` is added)."""
    if not url.startswith("s3://"):
        raise DatasetError(f"{url!r} is not an s3:// URL (use s3://BUCKET/PREFIX/)")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise DatasetError(f"{url!r}: {bucket!r} is not a valid bucket name (use s3://BUCKET/PREFIX/)")
    prefix = prefix.lstrip("/")
    return S3Path(bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/")


async def s3_catalog(url: str, *, endpoint: str | None = None, include: str | None = None,
                     retry: RetryPolicy = LIST_RETRY, page_size: int | None = None) -> Catalog:
    """The parquet objects under ``url`` as a Catalog (paths relative to the prefix, sorted); at most
    ``HEADS`` checksum HEADs at once; ``page_size``: ListObjectsV2's max-keys (None: the store's)."""
    sp, credentials = parse_s3_url(url), Credentials(s3_endpoint=endpoint)
    await credentials.prepare([url])
    async with client_session(retry) as session:
        lister = Lister(session, credentials, sp, retry)
        listed, with_sha256 = await lister.list(page_size)
        files = parquet_only(listed, include, sp.url(), "objects")
        sha256: dict[str, str] = {}
        await run_each((lister.checksum(f.path, sha256) for f in files if f.path in with_sha256), HEADS)
    files = [replace(f, sha256=sha256[f.path]) if f.path in sha256 else f for f in files]
    return Catalog(url, tuple(files), source=sp.url(), include=include)


def verification_summary(cat: Catalog) -> str:
    """What downloads of ``cat`` are checked against, e.g. ``sha256 for 3 files, size alone for 1``."""
    words = {"sha256": "sha256", "md5": "MD5 (single-part ETag)", "size": "size alone", "none": "nothing"}
    counts = Counter(f.verification for f in cat.files)
    return ", ".join(f"{words[k]} for {n} file{'s' if n > 1 else ''}" for k, n in counts.most_common())


class Lister:
    """ListObjectsV2 pages and checksum HEADs for one prefix, with retries and error translation."""

    def __init__(self, session: aiohttp.ClientSession, credentials: Credentials, sp: S3Path, retry: RetryPolicy):
        self.session, self.credentials, self.sp, self.retry = session, credentials, sp, retry

    async def list(self, page_size: int | None) -> tuple[list[DataFile], set[str]]:
        """Every object under the prefix (paths relative to it), and the paths of those listed with a sha256."""
        files, with_sha256 = [], set()
        token: str | None = None
        while True:
            params = {"list-type": "2", "prefix": self.sp.prefix, "continuation-token": token,
                      "max-keys": str(page_size) if page_size else None}
            query = "&".join(f"{k}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()) if v is not None)
            _, body = await self._request("GET", f"{self.credentials.bucket_url(self.sp.bucket)}?{query}")
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
        url = self.credentials.http_url(f"s3://{self.sp.bucket}/{self.sp.prefix}{path}")
        headers, _ = await self._request("HEAD", url, {"x-amz-checksum-mode": "ENABLED"})
        value = headers.get("x-amz-checksum-sha256", "")
        kind = headers.get("x-amz-checksum-type", "")
        multipart = "-" in headers.get("ETag", "")
        if value and "-" not in value and (kind == "FULL_OBJECT" or (not kind and not multipart)):
            with contextlib.suppress(ValueError):
                sha256[path] = base64.b64decode(value, validate=True).hex()

    async def _request(self, method: str, url: str, extra: dict[str, str] | None = None):
        """(headers, body) of a 200 answer, retried (``retry.with_retries``)."""
        async def attempt():
            async with self.session.request(method, URL(url, encoded=True), allow_redirects=False,
                                            headers=self.credentials.sign(method, url, extra)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    self._refuse(resp, body, url)
                return resp.headers, body

        return await with_retries(Retries(self.retry, f"listing {self.sp.url()}", url=url), attempt)

    def _refuse(self, resp: aiohttp.ClientResponse, body: bytes, url: str) -> NoReturn:
        code = message = ""
        if body:
            with contextlib.suppress(ET.ParseError):
                err = ET.fromstring(body)
                code, message = err.findtext("Code") or "", err.findtext("Message") or ""
        if resp.status in RETRY_STATUSES or code in ("SlowDown", "InternalError"):
            raise transient(resp.status, f"HTTP {resp.status} {code}".strip(), resp.headers)
        where, detail = f"s3://{self.sp.bucket}", f" ({code}: {message})" if code else ""
        region = resp.headers.get("x-amz-bucket-region")
        if resp.status in (301, 400) and region and region != self.credentials.region:  # we sign for the chain's
            raise DatasetError(f"{where} is in region {region}, not {self.credentials.region} (HTTP {resp.status}"
                               f"{detail}): set AWS_REGION={region}")
        if resp.method == "HEAD" and resp.status == 404:
            raise DatasetError(f"{url}: the object was listed but is gone (HTTP 404): the prefix is changing "
                               "under the listing; list again when it is stable")
        if resp.status == 404 or code == "NoSuchBucket":
            raise DatasetError(f"{where}: no such bucket (HTTP {resp.status}){detail}: check the name, and "
                               "AWS_ENDPOINT_URL for R2/MinIO")
        if resp.status in (401, 403):
            has = "the credentials found were refused" if self.credentials.aws else "no AWS credentials found"
            raise DatasetError(f"{where}: access denied (HTTP {resp.status}){detail}: {has}; set "
                               "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, with s3:ListBucket and "
                               "s3:GetObject on the bucket")
        raise DatasetError(f"{where}: the store answered HTTP {resp.status}{detail}")

