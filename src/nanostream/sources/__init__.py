"""Where a dataset lives and what it holds: its catalog, listing, record and row-group counts.

May import the core only; never ``fetch``, ``serve``, ``streaming``, ``text``, ``loader``, ``cli``.
"""
