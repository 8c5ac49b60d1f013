"""A data folder as a cache of fixed size (``cache_limit``), shared by every process that streams it.

``usage.py`` counts what the folder takes on disk; ``claims.py`` is what the processes share (the cache
lock, each stream's claim file, the readers' read locks, eviction); ``budget.py`` is one stream's side of
the budget; ``minimum.py`` the smallest limit that works; ``command.py`` ``nanostream cache``. The rules
and their tests: docs/cache.md.

May import: ``nanostream.fetch`` (locks and part files), ``nanostream.sources`` and the core. Never: the
rest of ``nanostream.streaming``, ``loader``, ``cli``.
"""
