"""Row-group counts shared between nodes through what torch.distributed already runs: its key-value store.

``StoreSharer`` is a ``sources.counts.CountSharer`` over the default process group's c10d
store (a TCPStore under torchrun), never a collective: store calls are safe from the
stream's background threads while the trainer runs its own collectives. Each publication is
one key ``nanostream/counts/<scope hash>/<n>`` holding ``{file path: row groups}`` as JSON, its
number ``n`` drawn from the counter ``.../n`` (``store.add``); a reader reads the keys after
the last one it read. A DataLoader worker process has no process group: it opens its own
client of the same TCPStore (host and port taken in the main process, where the dataset was
made), so workers share too; with another kind of store they rely on the folder's census file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Any

import torch.distributed as dist

PREFIX = "nanostream/counts"
TIMEOUT = datetime.timedelta(seconds=30)


class StoreSharer:
    """Counts through a c10d store (see the module docstring); picklable for DataLoader workers."""

    def __init__(self, store: Any) -> None:
        while hasattr(store, "underlying_store"):  # the default group's keys are prefixed: use the raw store
            store = store.underlying_store
        self._store: Any = store
        self._pid = os.getpid()
        host, port = getattr(store, "host", None), getattr(store, "port", None)
        self._address = (str(host), int(port)) if isinstance(store, dist.TCPStore) and host and port else None
        self._seen: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"_store": None, "_pid": -1, "_address": self._address, "_seen": {}}

    def _client(self) -> Any:
        if self._store is None or self._pid != os.getpid():  # another process: its own connection
            self._store = None
            if self._address is not None:
                host, port = self._address
                self._store = dist.TCPStore(host, port, is_master=False, timeout=TIMEOUT, wait_for_workers=False)
            self._pid = os.getpid()
        return self._store

    def publish(self, scope: str, counts: dict[str, int]) -> None:
        store = self._client()
        if store is None or not counts:
            return
        key = _key(scope)
        n = store.add(f"{key}/n", 1)
        store.set(f"{key}/{n}", json.dumps(counts))

    def fetch(self, scope: str) -> dict[str, int]:
        store = self._client()
        if store is None:
            return {}
        key, out = _key(scope), {}
        last = int(store.add(f"{key}/n", 0))
        seen = self._seen.get(scope, 0)
        while seen < last:
            item = f"{key}/{seen + 1}"
            if not store.check([item]):  # its number is drawn but its value not set yet: next time
                break
            out.update(json.loads(store.get(item)))
            seen += 1
        self._seen[scope] = seen
        return out


def _key(scope: str) -> str:
    return f"{PREFIX}/{hashlib.sha1(scope.encode()).hexdigest()[:16]}"


def default_sharer() -> StoreSharer | None:
    """A sharer over the default process group's store when torch.distributed is initialized, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return StoreSharer(dist.distributed_c10d._get_default_store())
