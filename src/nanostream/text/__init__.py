"""Text to tokens: the tokenizers users have (``load.py`` is the way in), their fastest exact encoder, BPE
training and the sample corpus; the modules are mapped in docs/design.md.

May import: ``nanostream.sources`` and the core. Never: ``fetch``, ``serve``, ``streaming``, ``loader``, ``cli``.
"""
