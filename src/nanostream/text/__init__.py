"""Text to tokens: the tokenizers users have, their fastest exact encoder, BPE training, and the sample corpus.

``tokenizer.py`` states the ``Tokenizer`` protocol and holds ``ByteTokenizer`` and ``BPETokenizer``;
``load.py`` is the way in (``load_tokenizer``, ``as_tokenizer``), with one module per format:
``saved.py`` (nanostream's folder), ``pickled.py`` (nanochat's ``tokenizer.pkl``), ``hf.py`` (Hugging
Face's ``tokenizer.json``); ``schemes.py`` the split regexes; ``fast.py`` gigatoken and the check that
it is exact; ``bpe.py`` training (``nanostream tokenizer train``); ``sample.py`` the sample corpus
(``nanostream sample``).

May import: ``nanostream.sources`` (to read a folder's train files) and the core.
Never: ``fetch``, ``serve``, ``streaming``, ``loader``, ``cli``.
"""
