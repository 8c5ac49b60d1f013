"""A data folder as a cache of fixed size (``cache_limit``), shared by every process that streams it
(docs/cache.md). May import ``fetch``, ``sources`` and the core; never the rest of ``streaming``.
"""
