"""``Credentials``: what a request for a dataset file carries (the HF token where it may go, or SigV4 for
``s3://``) and where it goes (``s3://BUCKET/KEY`` becomes the object's HTTP(S) URL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable
from typing import Any

from yarl import URL

from ..config import DEFAULT_TOKEN_HOSTS, token_allowed

IDENTITY = {"Accept-Encoding": "identity"}


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


class Credentials:
    """The token and where it may go, plus (for ``s3://`` files) one SigV4 signer, made on first need."""

    def __init__(self, token: str | None = None, token_hosts: Collection[str] = DEFAULT_TOKEN_HOSTS,
                 s3_endpoint: str | None = None, signer: Any = None) -> None:
        self.token, self.token_hosts = token, frozenset(token_hosts)
        self.s3_endpoint, self.signer = s3_endpoint, signer
        self._lock = asyncio.Lock()

    async def prepare(self, urls: Iterable[str]) -> None:
        """Resolve the AWS credential chain once if any of ``urls`` is ``s3://``."""
        if self.signer is None and any(is_s3(u) for u in urls):
            async with self._lock:
                if self.signer is None:
                    from .s3 import S3Signer

                    self.signer = await S3Signer.create(self.s3_endpoint)

    def http_url(self, url: str) -> str:
        """The URL a request goes to (``s3://B/K`` -> the object's URL; call ``prepare`` first)."""
        if not is_s3(url):
            return url
        bucket, _, key = url.removeprefix("s3://").partition("/")
        return self.signer.object_url(bucket, key)

    def target(self, http_url: str, signed: bool) -> str | URL:
        """What to hand aiohttp: a signed URL exactly as signed (no re-quoting)."""
        return URL(http_url, encoded=True) if signed else http_url

    def headers(self, method: str, http_url: str, signed: bool, extra: dict[str, str] | None = None
                ) -> dict[str, str]:
        """``extra`` plus the SigV4 signature (``signed``), or plus the token where it may go."""
        if signed:
            return {**IDENTITY, **self.signer.headers(method, http_url, extra)}
        headers = {**IDENTITY, **(extra or {})}
        if self.token and token_allowed(http_url, self.token_hosts):
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def get(self, http_url: str, signed: bool, start: int | None = None, end: int | None = None,
            validator: str | None = None) -> dict[str, str]:
        """Headers for a GET of ``[start, end)`` (the whole file when ``start`` is None). A continued range
        sends ``If-Range`` over http(s), ``If-Match`` on S3 (which ignores If-Range; a changed object
        answers 412)."""
        extra: dict[str, str] = {}
        if start is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
            if validator:
                extra["If-Match" if signed else "If-Range"] = validator
        return self.headers("GET", http_url, signed, extra)
