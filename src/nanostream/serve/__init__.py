"""The mirror: ``nanostream serve DIR``, an HTTP file server for a data folder (``server.py`` assembles it;
the modules are mapped in docs/design.md).

May import: ``nanostream.sources`` and the core. Never: ``fetch``, ``streaming``, ``text``, ``loader``, ``cli``.
"""
