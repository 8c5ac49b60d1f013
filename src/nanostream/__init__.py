"""nanostream: async shard downloader, row-group streamer and PyTorch loader for LLM pretraining.

Public API (imported lazily so ``import nanostream`` never pulls in torch):
``stream``, ``iter_batches``, ``Source``, ``Ranks``, ``ReadAhead``, ``RetryPolicy``, ``fetch_shards``,
``Fetcher``, ``ByteTokenizer``, ``load_tokenizer``, ``TokenDataset``, ``to_device``, ``threads_for``,
``Config`` and the errors in ``nanostream.errors``.

A public name never depends on import order: no public name is also the name of a
submodule (the streaming module is ``nanostream.streaming.streams``, its function ``stream``),
so importing a submodule can never replace a function on the package.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import Config
from .errors import NanostreamError

__version__ = "0.1.0"

_LAZY = {
    "stream": "streaming.streams",
    "iter_batches": "streaming.streams",
    "Source": "sources.spec",
    "Ranks": "streaming.ranks",
    "ReadAhead": "streaming.plan",
    "RetryPolicy": "retry",
    "fetch_shards": "fetch.many",
    "Fetcher": "fetch.fetcher",
    "ByteTokenizer": "text.tokenizer",
    "load_tokenizer": "text.load",
    "TokenDataset": "loader.dataset",
    "to_device": "loader.device",
    "threads_for": "loader.threads",
}

__all__ = ["Config", "NanostreamError", "__version__", *_LAZY]


def _load(name: str) -> Any:
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'nanostream' has no attribute {name!r}")
    value = _load(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
