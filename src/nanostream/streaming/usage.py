"""A data folder on disk under a ``cache_limit``: what it holds, as allocated, and who is using it.

Owns the blocking facts the budget (``budget.py``) decides with:

* ``scan``: every file under the folder with the blocks it takes (``st_blocks * 512``; a part
  file is reserved whole with ``posix_fallocate``, so a download in progress counts at its
  full size), sorted by the folder's record (``.nanostream.json``) into ``data`` (listed with
  a URL: may be evicted), ``local`` (listed without a source), ``unlisted`` (not in the
  record: never evicted), parts (with their state file: a download in progress, or left
  by a killed process) and bookkeeping (the other ``.nanostream*`` files).
* holders: every stream under a limit keeps ``.nanostream.cache.<pid>-<n>.holder``, with an
  exclusive flock held for the stream's life and, as JSON, its limit, its reservations
  (downloads admitted and not yet held by a reader), what it waits for, and its
  ``future`` (file -> row groups until a reader of the node needs it). A holder whose flock
  can be taken belongs to a dead process (kill -9): it is removed with what it reserved.
  Holders are written and read only under the folder's cache lock (``cache_lock``).
* ``ReadHold``: a reader's shared flock on the data file it reads. ``evict`` takes an
  exclusive one without waiting (and the file's download lock), so it skips held files.
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
from typing import Any

from ..errors import ConfigError
from ..fetch.outcomes import try_lock
from ..fetch.partial import SLOT, discard, part_path, state_path
from ..shards import BOOKKEEPING_PREFIX
from ..sources.catalog import Catalog

BLOCK = 4096  # allocation unit assumed for a file not on disk yet (one more is added as slack)
STATE_BYTES = 2 * SLOT  # a download's state file, reserved whole (``partial.PartFiles``)
CACHE_LOCK = f"{BOOKKEEPING_PREFIX}.cache.lock"
HOLDER_PREFIX = f"{BOOKKEEPING_PREFIX}.cache."
HOLDER_SUFFIX = ".holder"
HOLDER_ROOM = 16 << 10  # the most a holder file takes (its ``future`` is cut to fit)
_PART = (f"{BOOKKEEPING_PREFIX}.", ".part")
_STATE = (f"{BOOKKEEPING_PREFIX}.", ".state")
_count = itertools.count()


def allocated(st: os.stat_result) -> int:
    return st.st_blocks * 512


def file_blocks(size: int) -> int:
    """What a ``size``-byte file takes on disk: whole blocks, and one more of slack."""
    return -(-size // BLOCK) * BLOCK + BLOCK


def reserve_size(size: int) -> int:
    """What a download of a ``size``-byte file may take while it runs: its part file and its state file."""
    return file_blocks(size) + STATE_BYTES


def filesystem_bytes(folder: Path) -> int:
    """Size of the filesystem ``folder`` is (or will be) on: its nearest existing ancestor's."""
    at = folder
    while not at.exists() and at != at.parent:
        at = at.parent
    st = os.statvfs(at)
    return st.f_blocks * st.f_frsize


def folder_bytes(folder: Path) -> int:
    """Every file under ``folder``, as allocated on disk: what a ``cache_limit`` bounds."""
    total = 0
    for root, _dirs, names in os.walk(folder):
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                total += allocated(os.lstat(os.path.join(root, n)))
    return total


@dataclass
class FolderScan:
    """A folder's files by kind (paths relative to the folder; a part is filed under its data file's path)."""

    folder: Path
    files: dict[str, int] = field(default_factory=dict)  # data files (final names): allocated bytes
    kinds: dict[str, str] = field(default_factory=dict)  # data file -> "data" | "local" | "unlisted"
    atime: dict[str, int] = field(default_factory=dict)  # data file or part -> last read (ns)
    parts: dict[str, int] = field(default_factory=dict)  # data file -> its part + state files' bytes
    bookkeeping: int = 0  # the other .nanostream* files (record, census, holders, locks)
    holders: int = 0  # of which holder files
    total: int = 0

    def on_disk(self, rel: str) -> int:
        return self.files.get(rel, 0) + self.parts.get(rel, 0)

    def pinned(self) -> int:
        """Bytes that no eviction can free: local-only and unlisted files, bookkeeping but the holders."""
        keep = sum(n for rel, n in self.files.items() if self.kinds[rel] != "data")
        return keep + self.bookkeeping - self.holders


def _owner(name: str, affix: tuple[str, str]) -> str | None:
    head, tail = affix
    if name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail):
        return name[len(head):-len(tail)]
    return None


def scan(folder: Path, record: Catalog | None) -> FolderScan:
    """Every file under ``folder`` (see the module docstring), sorted by ``record``."""
    out = FolderScan(folder)
    urls = {f.path: bool(f.url) for f in record.files} if record is not None else {}
    for root, _dirs, names in os.walk(folder):
        rel_dir = os.path.relpath(root, folder)
        for n in names:
            try:
                st = os.lstat(os.path.join(root, n))
            except FileNotFoundError:
                continue
            size = allocated(st)
            out.total += size
            owner = _owner(n, _PART) or _owner(n, _STATE)
            rel = n if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{n}"
            if owner is not None:
                key = owner if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{owner}"
                out.parts[key] = out.parts.get(key, 0) + size
                if n.endswith(".part"):
                    out.atime[key] = max(out.atime.get(key, 0), st.st_atime_ns)
            elif n.startswith(BOOKKEEPING_PREFIX):
                out.bookkeeping += size
                if n.startswith(HOLDER_PREFIX) and n.endswith(HOLDER_SUFFIX):
                    out.holders += size
            else:
                out.files[rel] = size
                out.kinds[rel] = "unlisted" if rel not in urls else "data" if urls[rel] else "local"
                out.atime[rel] = st.st_atime_ns
    return out


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


@dataclass
class HolderInfo:
    """What a live stream's holder says."""

    name: str
    limit: int | None = None
    reserved: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    future: dict[str, int] = field(default_factory=dict)
    pid: int = 0


def live_holders(folder: Path, skip: str | None = None) -> list[HolderInfo]:
    """The holders of live streams (under the cache lock); those of dead processes are removed."""
    out = []
    for name in sorted(os.listdir(folder)):
        if name == skip or not (name.startswith(HOLDER_PREFIX) and name.endswith(HOLDER_SUFFIX)):
            continue
        path = folder / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its stream is alive
                raw = os.pread(fd, HOLDER_ROOM, 0)
                out.append(_holder_info(name, raw))
                continue
            path.unlink(missing_ok=True)  # nobody holds it: its process died (kill -9) and left it
        finally:
            os.close(fd)
    return out


def _holder_info(name: str, raw: bytes) -> HolderInfo:
    try:
        d: Any = json.loads(raw or b"{}")
        return HolderInfo(name, d.get("limit"), {k: int(v) for k, v in d.get("reserved", {}).items()},
                          {k: int(v) for k, v in d.get("waiting", {}).items()},
                          {k: int(v) for k, v in d.get("future", {}).items()}, int(d.get("pid", 0)))
    except (ValueError, TypeError, AttributeError):
        return HolderInfo(name)  # being written for the first time: it reserves nothing yet


class Holder:
    """This stream's own holder file (create and write it under the cache lock)."""

    def __init__(self, folder: Path, limit: int, policy: str) -> None:
        self.name = f"{HOLDER_PREFIX}{os.getpid()}-{next(_count)}-{time.monotonic_ns() % 10**9}{HOLDER_SUFFIX}"
        self.path = folder / self.name
        self.info = HolderInfo(self.name, limit, pid=os.getpid())
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
        future = sorted(i.future.items(), key=lambda kv: kv[1])
        while True:
            data = json.dumps({"pid": i.pid, "limit": i.limit, "policy": self.policy, "reserved": i.reserved,
                               "waiting": i.waiting, "future": dict(future)}, separators=(",", ":")).encode()
            if len(data) <= HOLDER_ROOM - BLOCK or not future:
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


class ReadHold:
    """A shared flock on the data file a reader reads: no process evicts it until ``release``."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def take(cls, path: Path) -> ReadHold | None:
        """Hold ``path``; None if it is absent or being evicted right now (fetch it, or try again). Blocking."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            st = os.fstat(fd)
            now = os.stat(path)
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                raise FileNotFoundError(path)
        except (BlockingIOError, FileNotFoundError):  # evicted, or being evicted, under our feet
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # when it was last read (LRU order, and ties); mtime kept
            os.utime(fd, ns=(time.time_ns(), st.st_mtime_ns))
        return cls(path, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


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
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # a reader holds it
            st = os.fstat(fd)
            now = os.stat(path)
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                return 0
            path.unlink()
            return allocated(st)
        finally:
            os.close(fd)
    finally:
        download.release()
