"""What ranks tell each other through torch.distributed's key-value store (never a collective): row-group
counts (``StoreSharer``) and every rank's resume state gathered to rank 0 (``StateGather``)."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import threading
import time
from typing import Any

import torch.distributed as dist

from ..errors import LoaderError
from ..streaming.ranks import agent_store

TIMEOUT = datetime.timedelta(seconds=30)
WAIT_SAY_S = 60.0  # a rank 0 waiting this long for another rank's state says so (and every WAIT_SAY_S)

log = logging.getLogger(__name__)


class StoreClient:
    """A c10d store for this process (see the module docstring); picklable for DataLoader workers."""

    def __init__(self, store: Any) -> None:
        while hasattr(store, "underlying_store"):  # the default group's keys are prefixed: use the raw store
            store = store.underlying_store
        self._store: Any = store
        self._pid = os.getpid()
        host, port = getattr(store, "host", None), getattr(store, "port", None)
        self._address = (str(host), int(port)) if isinstance(store, dist.TCPStore) and host and port else None

    def __getstate__(self) -> dict[str, Any]:
        return {"_store": None, "_pid": -1, "_address": self._address}

    def _client(self) -> Any:
        if self._store is None or self._pid != os.getpid():  # another process: its own connection
            self._store = None
            if self._address is not None:
                host, port = self._address
                self._store = dist.TCPStore(host, port, is_master=False, timeout=TIMEOUT, wait_for_workers=False)
            self._pid = os.getpid()
        return self._store


class StoreSharer(StoreClient):
    """Row-group counts through a c10d store (see the module docstring)."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self._seen: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_seen": {}}

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


class StateGather(StoreClient):
    """Every rank's resume state for a batch index, gathered to rank 0 (``run`` names the loader)."""

    def __init__(self, store: Any, rank: int, world_size: int, run: str) -> None:
        super().__init__(store)
        self.rank, self.world_size, self.run = rank, world_size, run

    def _key(self, index: int, rank: int) -> str:
        return f"nanostream/states/{self.run}/{index}/{rank}"

    def share(self, index: int, state: str) -> None:
        """On a rank other than 0: publish this rank's state (JSON text) for batch index ``index``."""
        self._client().set(self._key(index, self.rank), state)

    def collect(self, index: int, stop: threading.Event) -> list[str] | None:
        """On rank 0: the other ranks' states (JSON text, in rank order) for ``index`` once every one is
        published (polled: a store has no wake-up; None if ``stop`` is set first); their keys are deleted."""
        store = self._client()
        keys = [self._key(index, r) for r in range(1, self.world_size)]
        t0 = said = time.monotonic()
        pause = 0.0005
        while not store.check(keys):
            if stop.is_set():
                return None
            now = time.monotonic()
            if now - said >= WAIT_SAY_S:
                said = now
                log.warning("rank 0 has waited %.0f s for the other ranks' data loader state of batch %d: a rank "
                            "is behind (downloading?) or has stopped", now - t0, index)
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        values = [v.decode() for v in store.multi_get(keys)]
        for k in keys:
            store.delete_key(k)
        return values


def _key(scope: str) -> str:
    return f"nanostream/counts/{hashlib.sha1(scope.encode()).hexdigest()[:16]}"


def default_store(agent: bool = False) -> Any | None:
    """The default process group's store when torch.distributed is initialized; else, with ``agent``, a
    client of the store torchrun's agent hosts for its workers (None if neither is there)."""
    if dist.is_available() and dist.is_initialized():
        return dist.distributed_c10d._get_default_store()
    address = agent_store() if agent else None
    if address is None:
        return None
    try:
        return dist.TCPStore(address[0], address[1], is_master=False, timeout=TIMEOUT, wait_for_workers=False)
    except (RuntimeError, ValueError) as exc:
        raise LoaderError(f"cannot reach torchrun's store at {address[0]}:{address[1]} ({exc}): initialize the "
                          "process group (torch.distributed.init_process_group) before making the loader") from exc


def default_sharer() -> StoreSharer | None:
    """A sharer over the default process group's store when torch.distributed is initialized, else None."""
    store = default_store()
    return StoreSharer(store) if store is not None else None
