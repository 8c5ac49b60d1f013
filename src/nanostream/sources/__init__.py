"""Where a dataset lives and what it holds: the catalog of its files, its listing and record, its row-group counts.

May import: the core (``nanostream.config``, ``errors``, ``retry``, ``quota``, ``shards``, ``concurrency``,
``_compat``). Never: ``fetch``, ``serve``, ``streaming``, ``text``, ``loader``, ``cli``.
"""
