"""Python-version shims: ``TaskGroup`` and ``timeout`` (stdlib on 3.11+, the ``taskgroup`` backport on 3.10)."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup, timeout
else:  # pragma: no cover - exercised on 3.10 only
    from taskgroup import TaskGroup, timeout

__all__ = ["TaskGroup", "timeout"]
