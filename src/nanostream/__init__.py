"""nanostream: async shard downloader, row-group streamer and PyTorch loader for LLM pretraining.

The public API is ``__all__`` (imported lazily, so ``import nanostream`` never pulls in torch) and the errors in
``nanostream.errors``; no public name is also a submodule's name, so no import order can replace one."""

from __future__ import annotations

import importlib
from typing import Any

from .config import Config
from .errors import NanostreamError

__version__ = "0.1.0"

_LAZY = {
    "stream": "streaming.streams",
    "iter_batches": "streaming.streams",
    "Source": "sources.resolve",
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


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'nanostream' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
