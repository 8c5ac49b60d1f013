"""Every exception nanostream raises, in one tree rooted at ``NanostreamError`` (drawn in docs/errors.md).
Every ``__init__`` takes the message alone too: DataLoader workers re-raise errors as ``cls(message)``."""

from __future__ import annotations


class NanostreamError(Exception):
    """Root of every error nanostream raises on purpose."""


class ConfigError(NanostreamError, ValueError):
    """Invalid user input: a flag, an env var, a dataset name, an unusable folder."""


class DatasetError(ConfigError):
    """A dataset cannot be used as given: its URL, listing, splits or text column."""


class FetchError(NanostreamError):
    """A shard could not be downloaded. ``shard`` and ``url`` say which."""

    def __init__(self, message: str, *, shard: str | None = None, url: str | None = None):
        super().__init__(message)
        self.shard, self.url = shard, url


class HTTPStatusError(FetchError):
    """The server answered with a status that retrying will not fix."""

    def __init__(self, message: str, *, status: int = 0, shard: str | None = None, url: str | None = None):
        super().__init__(message, shard=shard, url=url)
        self.status = status


class AccessDenied(HTTPStatusError):
    """The source refuses every file (401/403: gated, private, a token without access): the fetch stops."""


class RetriesExhausted(FetchError):
    """Transient failures kept happening until the attempts ran out."""

    def __init__(self, message: str, *, attempts: int = 0, shard: str | None = None, url: str | None = None):
        super().__init__(message, shard=shard, url=url)
        self.attempts = attempts


class VerificationError(FetchError):
    """Downloaded bytes failed a check (length, sha256, MD5, parquet magic), or the file changed at its source."""


class DiskFullError(FetchError):
    """The data folder's filesystem has too little free space for the shards asked for."""


class ShardError(NanostreamError):
    """A shard file on disk cannot be used. ``path`` says which."""

    def __init__(self, message: str, *, path: object = None):
        super().__init__(message)
        self.path = path


class MissingShardError(ShardError, FileNotFoundError):
    """A shard file or data folder that should exist does not."""


class CorruptShardError(ShardError):
    """pyarrow could not read a shard (truncated, not parquet, missing text column)."""


class TokenizerError(NanostreamError):
    """A tokenizer could not be trained, saved or loaded."""


class LoaderError(NanostreamError, ValueError):
    """TokenDataset was given bad arguments or a resume state it cannot use."""
