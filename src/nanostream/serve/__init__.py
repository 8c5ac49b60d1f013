"""The mirror: ``nanostream serve DIR``, an HTTP file server for a data folder, hardened for a cluster network.

``server.py`` answers GET/HEAD for the folder's files (``ShardFiles``, ``make_app``,
``start_server``, ``run_server``), ``httpfile.py`` ranges, ``If-Range`` and ``sendfile``
bodies, ``listener.py`` the connection cap, request deadlines and keep-alive limit,
``hubapi.py`` the Hub API for a folder fetched from ``hf://``, as the real clients read it
(``hubtree.py``: git ids, LFS pointers, tree entries).

May import: ``nanostream.sources`` (the folder's record) and the core. Never: ``fetch``,
``streaming``, ``text``, ``loader``, ``cli``.
"""
