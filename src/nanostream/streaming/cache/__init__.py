"""A data folder as a cache of fixed size (``cache_limit``), shared by every process that streams it.

``usage.py`` counts what the folder holds as allocated on disk; ``holders.py`` is the
cross-process part (the folder's cache lock, each stream's holder file with its flock, the
readers' shared flocks, eviction of a file nobody holds); ``budget.py`` one stream's part in
the budget (admit a download, evict by the readers' future order, prune); ``admission.py`` its
event-loop side; ``minimum.py`` the smallest limit that works; ``command.py`` the
``nanostream cache`` command. Each reader's future order itself is ``streaming/horizon.py``.

Invariants: a folder's bytes never exceed its limit; only a file the folder's record can fetch
again, and that no reader holds, is evicted.

May import: ``nanostream.fetch`` (locks and part files), ``nanostream.sources`` and the core.
Never: the rest of ``nanostream.streaming``, ``loader``, ``cli``.
"""
