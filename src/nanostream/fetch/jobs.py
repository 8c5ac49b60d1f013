"""One file's download in progress: ``Job``, how it begins (present, another process's, resumed or new), its
byte ranges (``Segment``), part and state files, and the saver of its resume state.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

from ..errors import FetchError, VerificationError
from ..retry import Fatal, NoSpace, Retries, RetryPolicy, Transient, with_retries
from ..sources.catalog import DataFile
from ..sources.credentials import is_s3
from .partial import PartFiles, PartState, check_file, discard, finalize, open_job, release_job, try_lock

if TYPE_CHECKING:
    from .partial import Disk

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)  # compared by identity, as a range in flight is
class Segment:
    """A byte range [pos, end) still to download (``end`` None until the size is known): ``pos`` counts
    bytes written, ``buffered`` those after it received but not written yet."""

    pos: int
    end: int | None
    active: bool = False
    buffered: int = 0

    def done(self) -> bool:
        return self.end is not None and self.pos >= self.end


class Job:
    """A catalog file being downloaded from ``url`` to ``final``; ``future`` resolves to its ShardResult.
    ``index``: its place in the list ``fetch_files`` was given."""

    def __init__(self, file: DataFile, final: Path, url: str, disk: Disk, policy: RetryPolicy,
                 spawn: Callable[[Coroutine[Any, Any, Any]], Any], *, index: int | None = None):
        self.file, self.name, self.final, self.url, self.disk, self._spawn = file, file.path, final, url, disk, spawn
        self.retries = Retries(policy, file.path, url=url, shard=file.path)  # failed requests and verifications
        self.index = index
        self.signed = is_s3(file.url)  # every request is SigV4-signed
        self.known = file.size is not None or bool(file.sha256)  # a different answer is an error, not a reset
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.segments: list[Segment] = []
        self.size: int | None = None
        self.validator: str | None = None
        self.sha256: str | None = None
        self.downloaded = self.gen = 0
        self.lock: filelock.BaseFileLock | None = None
        self.finalizing = False
        self.files = asyncio.Lock()  # serialises create / save / discard / finalize of this job's files
        self.hasher: Any = None  # sha256 of bytes [0, hashed) as written, while one range writes them in order
        self.hashed = 0
        self._dirty = False
        self._saver: asyncio.Task | None = None
        self.pfiles: PartFiles | None = None  # open part/state descriptors while downloading

    def live(self, gen: int) -> bool:
        return gen == self.gen and not self.future.done()

    def error(self, text: str, kind: type[FetchError] = FetchError, **extra: Any) -> FetchError:
        """A ``kind`` error saying ``"NAME: text"``, for this file and its URL."""
        return kind(f"{self.name}: {text}", shard=self.name, url=self.url, **extra)

    async def open(self, verify: bool, announced: Callable[[], Awaitable[tuple[str | None, int | None]]]) -> str:
        """Take the file's lock and resume state: "present" (nothing to download), "busy" (another process
        downloads it), "resume" or "start" (``segments`` set: the missing ranges, or the whole file).
        With ``verify`` a present file is checked against the catalog, else against ``announced()`` (the
        server's sha256 and size), and fetched again if it differs. Raises FetchError."""
        try:
            status, self.lock, state, self.pfiles = await self.disk.acquire(release_job, open_job, self.final,
                                                                            self.url, verify)
        except OSError as exc:
            raise self.error(f"cannot lock {self.final.parent}: {exc}") from exc
        if status == "verify":
            sha, size = self.file.sha256, self.file.size
            if not self.known:
                sha, size = await with_retries(self.retries, announced)
            problem = await self.disk.run(check_file, self.final, size, sha, self.file.md5)
            if problem is None:
                return "present"
            log.warning("%s: present but %s; downloading it again", self.name, problem)
            self.final.unlink(missing_ok=True)
        if status in ("present", "busy"):
            return status
        if state is None:
            self.segments = [Segment(0, None)]
            return "start"
        self.size, self.validator, self.sha256 = state.size, state.validator, state.sha256
        self.segments = [Segment(s, e) for s, e in state.missing if s < e]
        log.info("%s: resuming, %d of %d bytes to go", self.name, sum(e - s for s, e in state.missing), state.size)
        return "resume"

    async def other_finished(self, verify: bool) -> bool:
        """Another process holds the lock: True once its file is there, False when that process is gone
        without it (take over). Polled: a lock another process holds wakes nothing here."""
        while True:
            await asyncio.sleep(0.25)
            if self.final.exists() and not verify:
                return True
            probe = try_lock(self.final)
            if probe is not None:
                probe.release()
                return False

    async def learned(self, size: int, sha256: str | None, validator: str | None) -> None:
        """The first response told us what to expect: a fresh part file of ``size`` bytes, reserved."""
        self.size, self.sha256, self.validator = size, sha256, validator
        self.hasher, self.hashed = (hashlib.sha256() if sha256 else None), 0
        gen = self.gen
        async with self.files:
            if gen != self.gen:
                return
            self.close_files()
            try:
                async with self.disk.reserving:
                    self.pfiles = await self.disk.acquire(PartFiles.close, lambda: PartFiles(self.final, size=size))
                await self.disk.run(self.pfiles.save, self.snapshot())  # claims nothing yet: [[0, size]]
            except OSError as exc:
                self.close_files()  # hold no reserved blocks while failed or parked
                await self.disk.run(discard, self.final)
                why = f"cannot create the part file of {self.final} ({size / 1e6:.1f} MB): {exc.strerror or exc}"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    self.size = None  # not started: the next attempt learns again
                    raise NoSpace(why, size) from exc
                raise Fatal(why) from exc

    async def publish(self) -> bool:
        """Verify the complete part file and publish it (``partial.finalize``): True when published, False
        when the bytes failed verification and the file starts again. Raises FetchError when it cannot be
        published, or VerificationError once verification failed more often than the policy allows."""
        gen = self.gen
        async with self.files:
            self.close_files()
            try:
                problem = await self.disk.run_synced(finalize, self.final, self.size, self.sha256,
                                                     self.digest(), self.file.md5)
            except OSError as exc:
                raise self.error(f"cannot publish {self.final}: {exc}") from exc
        if problem is None or not self.live(gen):
            return problem is None
        err = self.error(f"downloaded bytes failed verification: {problem} ({self.url})", VerificationError)
        log.warning("%s", err)
        if not await self.retries.again(Transient(problem)):
            raise err
        self.reset(f"{problem}; discarded the bytes")
        return False

    def changed(self, why: str) -> None:
        """The remote file is not the one this download began with: a listed file fails (raises
        VerificationError, not retried), another starts again from byte 0."""
        if not self.known:
            return self.reset(f"the remote file changed: {why}")
        raise VerificationError(f"{self.name} changed at the source since it was listed: {why} ({self.url}); "
                                "nothing was kept under its name: list it again (a fresh --data-dir, or delete "
                                ".nanostream.json) to fetch the new version", shard=self.name, url=self.url)

    def reset(self, why: str) -> None:
        """Abandon every range in flight and start again from byte 0 (the remote changed, or bad bytes)."""
        log.warning("%s: %s; restarting it from byte 0", self.name, why)
        self.gen += 1
        self.size = self.sha256 = self.validator = self.hasher = None
        self.hashed = 0
        self.segments = [Segment(0, None)]
        self._spawn(self._discard())

    async def _discard(self) -> None:
        async with self.files:
            self.close_files()
            await self.disk.run(discard, self.final)

    def release(self) -> None:
        """Close the part/state descriptors, release the file's flock (another process may take it over)."""
        self.close_files()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def close_files(self) -> None:
        """Close the part/state descriptors (waits for a save in progress in the pool)."""
        if self.pfiles is not None:
            self.pfiles.close()
            self.pfiles = None

    def hasher_for(self, seg: Segment) -> Any:
        """The running sha256 if ``seg``'s next bytes continue the in-order prefix, else None."""
        return self.hasher if self.hasher is not None and self.hashed == seg.pos else None

    def wrote(self, seg: Segment, n: int, *, hashed: bool) -> None:
        """``n`` bytes landed at ``seg.pos``; ``hashed`` if they went through ``hasher`` too."""
        if hashed:
            self.hashed += n
        seg.pos += n
        self.downloaded += n
        self._dirty = True
        if self._saver is None or self._saver.done():
            self._saver = self._spawn(self._save_loop())

    def digest(self) -> str | None:
        """The sha256 computed while writing, when it covers the whole file."""
        return self.hasher.hexdigest() if self.hasher is not None and self.hashed == self.size else None

    def snapshot(self) -> PartState:
        """The resume state as of now: every range not written yet is missing (an open one up to ``size``)."""
        assert self.size is not None
        missing = [[s.pos, self.size if s.end is None else s.end] for s in self.segments if not s.done()]
        return PartState(self.url, self.size, self.validator, self.sha256, missing)

    def _saving(self) -> bool:
        return self.size is not None and not self.finalizing and not self.future.done() and self.pfiles is not None

    async def _save_loop(self) -> None:
        while self._dirty:
            self._dirty = False
            async with self.files:
                if not self._saving():
                    return
                state = self.snapshot()  # taken before the fdatasync: it claims only bytes the sync covers
                try:
                    await self.disk.run_synced(self.pfiles.save, state)
                except OSError as exc:
                    log.warning("%s: could not save resume state: %s", self.name, exc)
                    return

    def save_now(self) -> None:
        """Blocking final save at shutdown (after every write has finished): fsync, then the state."""
        if not self._saving():
            return
        try:
            self.pfiles.save(self.snapshot())
        except OSError as exc:
            log.warning("%s: could not save resume state: %s", self.name, exc)
