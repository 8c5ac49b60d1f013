"""Where a dataset lives and what it holds: catalogs, names and URLs, the Hub, S3, the folder's record, row groups.

A dataset becomes one ``Catalog`` (``catalog.py``): ordered parquet files with sizes and
checksums, a text column and split rules. ``resolve.py`` says what a ``--dataset``
value means (a built-in name, ``hf://``, ``s3://`` or a folder) and pins it in the data
folder's record (``record.py``); ``hub.py`` and ``s3.py`` list remote sources,
``access.py`` says what a request for a file carries (token, SigV4), ``counts.py`` what
a run knows of each file's row-group count and how it learns more (``CountBook``),
``census.py`` reads them from footers and keeps them in the folder.

May import: the core (``nanostream.config``, ``errors``, ``retry``, ``shards``, ``_compat``, ``quota``).
Never: ``fetch``, ``serve``, ``streaming``, ``text``, ``loader``, ``cli``.
"""
