"""nanostream: async shard downloader, row-group streamer and PyTorch loader for LLM pretraining.

Public API (imported lazily so ``import nanostream`` never pulls in torch):
``stream``, ``iter_batches``, ``fetch_shards``, ``Fetcher``, ``ByteTokenizer``,
``TokenDataset``, ``to_device``, ``threads_for``, ``Config`` and the errors in
``nanostream.errors``.

A public name never depends on import order. ``stream`` is both a function and the
name of the submodule ``nanostream/stream.py``; importing a submodule makes Python
set it as an attribute of the package, which would hide the function. So the package
object's class carries a data descriptor for every such name (``_SHADOWED``): reading
it always gives the function, and the import system's binding of the submodule is
ignored. The submodule itself stays importable as usual
(``from nanostream.stream import Stream``, ``sys.modules["nanostream.stream"]``).
"""

from __future__ import annotations

import importlib
import sys
import types
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
    "to_device": "device",
    "threads_for": "device",
}

# public names that are also submodule names: always the public object, never the module
_SHADOWED = ("stream",)

__all__ = ["Config", "NanostreamError", "__version__", *_LAZY]


def _load(name: str) -> Any:
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'nanostream' has no attribute {name!r}")
    value = _load(name)
    globals()[name] = value
    return value


class _Public:
    """Data descriptor for a public name that a submodule shares (see the module docstring).

    A data descriptor on the module's class wins over the module's ``__dict__``, where the
    import system puts the submodule. Assigning the submodule itself is ignored; any other
    value (``monkeypatch.setattr(nanostream, "stream", fake)``) overrides until deleted.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.override: list[Any] = []

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        return self.override[-1] if self.override else _load(self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == f"{obj.__name__}.{self.name}":
            return  # the import system binding the submodule of the same name
        self.override[:] = [value]

    def __delete__(self, obj: Any) -> None:
        self.override.clear()


class _Package(types.ModuleType):
    pass


for _name in _SHADOWED:
    setattr(_Package, _name, _Public(_name))
sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
