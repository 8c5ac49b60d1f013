"""What the processes streaming a cached folder share: its cache lock, each stream's claim file (flocked for
its life, holding its reservations and its reader's ``Needs``), the readers' read locks, eviction. Blocking.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ...errors import ConfigError
from ...fetch.partial import discard, part_path, state_path, try_lock
from ...shards import BOOKKEEPING_PREFIX
from .usage import BLOCK, CLAIM_PREFIX, CLAIM_ROOM, CLAIM_SUFFIX, allocated

CACHE_LOCK = f"{BOOKKEEPING_PREFIX}.cache.lock"
_count = itertools.count()


@contextlib.contextmanager
def cache_lock(folder: Path) -> Iterator[None]:
    """The folder's cache lock (an flock), held while the budget is read, decided and written. Blocking."""
    try:
        fd = os.open(folder / CACHE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot create {folder / CACHE_LOCK} ({exc.strerror or exc}): a cache_limit needs "
                          "a writable data folder") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise ConfigError(f"{folder} does not support file locks ({exc.strerror or exc}): a cache_limit "
                              "needs flock to share the folder between processes") from exc
        yield
    finally:
        os.close(fd)  # releases the flock


class Needs(NamedTuple):
    """When a stream's reader needs which file (``needs.ReaderNeeds``), as its claim publishes it."""

    future: dict[str, int]  # file -> the place on the run's clock where the reader needs it next
    after: dict[str, int]  # the file read now -> where it is needed again after this read (-1: never)
    at: int = 0  # the reader's own place on the clock
    run: str = ""  # the run's name: places compare only between readers of one run


@dataclass
class ClaimInfo:
    """What a live stream's claim says: its limit, the room it reserves, the demands it waits on, its ``Needs``."""

    name: str
    limit: int | None = None
    reserved: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    needs: Needs = field(default_factory=lambda: Needs({}, {}))


def live_claims(folder: Path, skip: str | None = None) -> list[ClaimInfo]:
    """The claims of live streams (under the cache lock); those of dead processes are removed."""
    out = []
    for name in sorted(os.listdir(folder)):
        if name == skip or not (name.startswith(CLAIM_PREFIX) and name.endswith(CLAIM_SUFFIX)):
            continue
        path = folder / name
        try:
            fd = _flocked(path, fcntl.LOCK_EX)
        except BlockingIOError:  # its stream is alive
            with contextlib.suppress(FileNotFoundError):
                out.append(_claim_info(name, path.read_bytes()))
            continue
        if fd is not None:  # nobody holds it: its process died (kill -9) and left it
            path.unlink(missing_ok=True)
            os.close(fd)
    return out


def _claim_info(name: str, raw: bytes) -> ClaimInfo:
    try:
        d: Any = json.loads(raw)
        return ClaimInfo(name, d["limit"], d["reserved"], d["waiting"], Needs(*d["needs"]))
    except (ValueError, KeyError, TypeError):
        return ClaimInfo(name)  # being written for the first time: it reserves nothing yet


class Claim:
    """This stream's own claim file (create and write it under the cache lock)."""

    def __init__(self, folder: Path, limit: int, policy: str) -> None:
        self.name = f"{CLAIM_PREFIX}{os.getpid()}-{next(_count)}-{time.monotonic_ns() % 10**9}{CLAIM_SUFFIX}"
        self.path = folder / self.name
        self.info = ClaimInfo(self.name, limit)
        self.policy = policy
        self._written = b""
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(self.fd)
            self.path.unlink(missing_ok=True)
            raise
        self.write()

    def write(self) -> None:
        i = self.info
        future = sorted(i.needs.future.items(), key=lambda kv: kv[1])
        while True:
            needs = i.needs._replace(future=dict(future))
            data = json.dumps({"pid": os.getpid(), "limit": i.limit, "policy": self.policy, "reserved": i.reserved,
                               "waiting": i.waiting, "needs": needs}, separators=(",", ":")).encode()
            if len(data) <= CLAIM_ROOM - BLOCK or not future:
                break
            future = future[: len(future) // 2]  # the nearest files matter most
        if data != self._written:
            os.pwrite(self.fd, data, 0)
            os.ftruncate(self.fd, len(data))
            self._written = data

    def close(self) -> None:
        if self.fd >= 0:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = -1


def _flocked(path: Path, mode: int) -> int | None:
    """A descriptor of ``path`` flocked with ``mode`` without waiting, still the file at ``path``; None if it is
    absent or was replaced. BlockingIOError if another descriptor holds a conflicting flock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        st, now = os.fstat(fd), os.stat(path)
        if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
            return fd
    except FileNotFoundError:
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)  # evicted or replaced under our feet
    return None


class ReadLock:
    """A shared flock on the data file a reader reads: no process evicts it until ``release``."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def take(cls, path: Path, touch: bool = False) -> ReadLock | None:
        """Hold ``path``; None if it is absent or being evicted right now (fetch it, or try again). ``touch``
        sets its access time to now (the last read: LRU order, and ties). Blocking."""
        for _ in range(100):  # polled: an eviction's exclusive flock (another process) lasts microseconds
            try:
                fd = _flocked(path, fcntl.LOCK_SH)
            except BlockingIOError:
                time.sleep(0.002)
                continue
            if fd is not None and touch:
                with contextlib.suppress(OSError):  # mtime kept: ``reader.file_id`` stays the same
                    os.utime(fd, ns=(time.time_ns(), os.fstat(fd).st_mtime_ns))
            return None if fd is None else cls(path, fd)
        return None

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def in_use(path: Path) -> bool:
    """Does a reader hold ``path``? (An exclusive flock tried and dropped at once.) Blocking."""
    try:
        fd = _flocked(path, fcntl.LOCK_EX)
    except BlockingIOError:
        return True
    if fd is not None:
        os.close(fd)
    return False


def evict(folder: Path, rel: str, *, part: bool = False) -> int:
    """Delete data file ``rel`` (or, with ``part``, its part and state files) unless a reader holds it or a
    download has it; the bytes freed (0: skipped). Call under the cache lock. Blocking."""
    path = folder / rel
    download = try_lock(path)
    if download is None:
        return 0  # being downloaded (or verified) right now
    try:
        if part:
            freed = 0
            for p in (part_path(path), state_path(path)):
                with contextlib.suppress(FileNotFoundError):
                    freed += allocated(os.lstat(p))
            discard(path)
            return freed
        try:
            fd = _flocked(path, fcntl.LOCK_EX)
        except BlockingIOError:
            return 0  # a reader holds it
        if fd is None:
            return 0
        try:
            freed = allocated(os.fstat(fd))
            path.unlink()
            return freed
        finally:
            os.close(fd)
    finally:
        download.release()
