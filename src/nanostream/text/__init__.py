"""Text to tokens: the tokenizers users have (``load.py`` is the way in) and their fastest exact encoder; the
modules are mapped in docs/design.md.

May import: ``nanostream.sources`` and the core. Never: ``fetch``, ``serve``, ``streaming``, ``loader``, ``cli``.
"""
