"""Progress of a download: a tqdm bar on a TTY, a plain line every few seconds in logs, or nothing; the
downloader calls ``add_total(nbytes)``, ``advance(nbytes)``, ``shard_done(result)`` and ``close()``."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


class NullProgress:
    """Counts shards and bytes; ``show`` (nothing here) displays them after each change."""

    def __init__(self, shards: int) -> None:
        self.shards, self.done, self.failed = shards, 0, 0
        self.total = self.bytes = 0
        self.started = time.monotonic()

    def add_total(self, n: int) -> None:
        self.total += n
        self.show(news=False)

    def advance(self, n: int) -> None:
        self.bytes += n
        self.show(news=True)

    def shard_done(self, result: Any) -> None:
        if result.error is None:
            self.done += 1
        else:
            self.failed += 1
        # failures are told once, by the summary (a host that is down fails every shard in one go)
        self.show(news=result.error is None)

    def show(self, news: bool) -> None:
        """Display the counts; ``news``: bytes arrived or a shard was completed."""

    def close(self) -> None:
        pass


class LineProgress(NullProgress):
    """One plain line every ``interval`` seconds (for logs and CI)."""

    def __init__(self, shards: int, stream: TextIO = sys.stderr, interval: float = 5.0) -> None:
        super().__init__(shards)
        self.stream, self.interval = stream, interval
        self._last = time.monotonic()

    def show(self, news: bool) -> None:
        now = time.monotonic()
        if not news or now - self._last < self.interval:
            return
        self._last = now
        rate = self.bytes / max(now - self.started, 1e-9)
        eta = (self.total - self.bytes) / max(rate, 1e-9)
        self.stream.write(f"fetch: {self.done}/{self.shards} shards, {self.failed} failed, {self.bytes / 1e6:.1f}/"
                          f"{self.total / 1e6:.1f} MB, {rate / 1e6:.1f} MB/s, ETA {eta:.0f}s\n")
        self.stream.flush()


class BarProgress(NullProgress):
    """A tqdm bar: bytes, MB/s, ETA, and shards done/failed as postfix."""

    def __init__(self, shards: int, stream: TextIO = sys.stderr) -> None:
        super().__init__(shards)
        from tqdm import tqdm

        try:  # a terminal that reports 0 columns (some ptys) would get an empty bar
            sized = os.get_terminal_size(stream.fileno()).columns > 0
        except (OSError, ValueError, AttributeError):
            sized = False
        self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1000, file=stream, desc="fetch",
                        dynamic_ncols=sized, ncols=None if sized else 100, miniters=1, mininterval=0.2)
        self.show(news=False)

    def show(self, news: bool) -> None:
        self.bar.total = self.total
        self.bar.set_postfix_str(f"shards {self.done}/{self.shards} failed {self.failed}", refresh=False)
        if self.bytes > self.bar.n:
            self.bar.update(self.bytes - self.bar.n)  # redraws at most every mininterval
        else:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def make_progress(shards: int, *, quiet: bool = False, stream: TextIO = sys.stderr) -> NullProgress:
    """Nothing when ``quiet``, a bar on a TTY, else plain lines."""
    if quiet:
        return NullProgress(shards)
    if stream.isatty():
        return BarProgress(shards, stream)
    return LineProgress(shards, stream)
