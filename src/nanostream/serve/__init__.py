"""The mirror: ``nanostream serve DIR``, an HTTP file server for a data folder, hardened for a cluster network.

``server.py`` assembles and runs it; ``files.py`` answers for the folder's files (``httpfile.py``: ranges
and ``sendfile`` bodies); ``listener.py`` holds the connection limits; ``hubapi.py`` answers the Hub API
for a folder fetched from ``hf://`` (``hubrequest.py``: the requests and errors; ``hubtree.py``: git ids).

May import: ``nanostream.sources`` (the folder's record) and the core. Never: ``fetch``,
``streaming``, ``text``, ``loader``, ``cli``.
"""
