"""``Credentials``: what a request for a dataset file carries (the HF token where it may go, or a SigV4
signature for ``s3://``: botocore, the ``s3`` extra, gives the AWS chain and the signer only) and where it
goes (``s3://BUCKET/KEY`` becomes the object's HTTP(S) URL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable
from typing import Any
from urllib.parse import quote

from yarl import URL

from ..config import DEFAULT_TOKEN_HOSTS, token_allowed
from ..errors import DatasetError

IDENTITY = {"Accept-Encoding": "identity"}


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


class Credentials:
    """The token and where it may go; for ``s3://`` files the AWS chain's credentials and region, resolved on
    first need (``prepare``). With no AWS credentials in the chain, S3 requests go unsigned."""

    def __init__(self, token: str | None = None, token_hosts: Collection[str] = DEFAULT_TOKEN_HOSTS,
                 s3_endpoint: str | None = None) -> None:
        self.token, self.token_hosts = token, frozenset(token_hosts)
        self.s3_endpoint = s3_endpoint.rstrip("/") if s3_endpoint else None
        self.aws: Any = None  # botocore's credentials; None: none found (or not resolved yet)
        self.region: str | None = None  # None until resolved
        self._lock = asyncio.Lock()

    async def prepare(self, urls: Iterable[str]) -> None:
        """Resolve the AWS chain's credentials and region once, on a thread, if any of ``urls`` is ``s3://``."""
        if self.region is None and any(is_s3(u) for u in urls):
            async with self._lock:
                if self.region is None:
                    self.aws, self.region = await asyncio.to_thread(_aws_chain)

    def bucket_url(self, bucket: str) -> str:
        if self.s3_endpoint:
            return f"{self.s3_endpoint}/{bucket}"
        if "." in bucket:  # a dotted name does not match the wildcard certificate: path-style
            return f"https://s3.{self.region}.amazonaws.com/{bucket}"
        return f"https://{bucket}.s3.{self.region}.amazonaws.com"

    def http_url(self, url: str) -> str:
        """The URL a request goes to: ``s3://B/K`` becomes the object's URL, already in SigV4's canonical
        encoding (send it as encoded; call ``prepare`` first)."""
        if not is_s3(url):
            return url
        bucket, _, key = url.removeprefix("s3://").partition("/")
        return f"{self.bucket_url(bucket)}/{quote(key, safe='/~')}"

    def target(self, http_url: str, signed: bool) -> str | URL:
        """What to hand aiohttp: a signed URL exactly as signed (no re-quoting)."""
        return URL(http_url, encoded=True) if signed else http_url

    def sign(self, method: str, http_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """``extra`` (e.g. Range, If-Match) plus the SigV4 headers for ``method http_url`` with no body."""
        headers = dict(extra or {})
        frozen = self.aws.get_frozen_credentials() if self.aws is not None else None
        if frozen is None:
            return headers
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method=method, url=http_url, headers=headers)
        S3SigV4Auth(frozen, "s3", self.region).add_auth(request)
        return dict(request.headers.items())

    def headers(self, method: str, http_url: str, signed: bool, extra: dict[str, str] | None = None
                ) -> dict[str, str]:
        """``extra`` plus the SigV4 signature (``signed``), or plus the token where it may go."""
        if signed:
            return {**IDENTITY, **self.sign(method, http_url, extra)}
        headers = {**IDENTITY, **(extra or {})}
        if self.token and token_allowed(http_url, self.token_hosts):
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def get(self, http_url: str, signed: bool, start: int | None = None, end: int | None = None,
            validator: str | None = None) -> dict[str, str]:
        """Headers for a GET of ``[start, end)`` (the whole file when ``start`` is None); a continued range sends
        ``If-Range`` over http(s), ``If-Match`` on S3 (which ignores If-Range; a changed object answers 412)."""
        extra: dict[str, str] = {}
        if start is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
            if validator:
                extra["If-Match" if signed else "If-Range"] = validator
        return self.headers("GET", http_url, signed, extra)


def _aws_chain() -> tuple[Any, str]:
    """botocore's credentials (None: none found) and region (default ``us-east-1``); blocking."""
    try:
        import botocore.session
    except ImportError as exc:
        raise DatasetError("s3:// datasets need botocore: pip install 'nanostream[s3]'") from exc
    try:
        session = botocore.session.Session()
        return session.get_credentials(), session.get_config_variable("region") or "us-east-1"
    except Exception as exc:  # a broken profile, an unreachable SSO: botocore's own errors
        raise DatasetError(f"AWS credentials could not be resolved: {exc}") from exc
