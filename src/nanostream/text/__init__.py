"""Text to tokens: the tokenizers (``ByteTokenizer``, the BPE), BPE training, and the offline sample corpus.

``tokenizer.py`` is the ``Tokenizer`` protocol, ``ByteTokenizer``, ``BPETokenizer``
(tiktoken encoding) and the saved format; ``bpe.py`` trains one with rustbpe
(``nanostream tokenizer train``); ``sample.py`` writes the embedded sample corpus
(``nanostream sample``).

May import: ``nanostream.sources`` (to read a folder's train files) and the core.
Never: ``fetch``, ``serve``, ``streaming``, ``loader``, ``cli``.
"""
