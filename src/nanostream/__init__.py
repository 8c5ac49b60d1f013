"""nanostream: async shard downloader, row-group streamer and PyTorch loader for LLM pretraining.

Public API (imported lazily so ``import nanostream`` never pulls in torch):
``stream``, ``iter_batches``, ``fetch_shards``, ``Fetcher``, ``ByteTokenizer``,
``TokenDataset``, ``Config`` and the errors in ``nanostream.errors``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import Config
from .errors import NanostreamError

__version__ = "0.1.0"

_LAZY = {
    "stream": "stream",
    "iter_batches": "stream",
    "Batch": "stream",
    "Position": "stream",
    "Cursor": "stream",
    "fetch_shards": "fetch",
    "Fetcher": "fetch",
    "ByteTokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "TokenDataset": "loader",
    "to_device": "loader",
}

__all__ = ["Config", "NanostreamError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nanostream' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
