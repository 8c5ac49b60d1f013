"""Text to tokens: the tokenizers users have, their fastest exact encoder, BPE training, and the sample corpus.

``load.py`` is ``load_tokenizer`` (every format and tokenizer object a user may hold: nanostream's
folder, nanochat's ``tokenizer.pkl`` and object, Hugging Face ``tokenizer.json`` and
``tokenizers.Tokenizer``, ``.tiktoken`` rank files, ``tiktoken.Encoding``); ``tokenizer.py`` the
``Tokenizer`` protocol, ``ByteTokenizer`` and ``BPETokenizer``; ``saved.py`` nanostream's folder
format; ``pickled.py`` reads a pickled tiktoken ``Encoding`` without running pickle code;
``hf.py`` the Hugging Face tokenizer; ``fast.py`` gigatoken as flat arrays with a bounded cache;
``schemes.py`` the split regexes it runs; ``identity.py`` the load-time check that it gives the
reference library's ids; ``bpe.py`` trains a BPE with rustbpe (``nanostream tokenizer train``);
``sample.py`` writes the embedded sample corpus (``nanostream sample``).

May import: ``nanostream.sources`` (to read a folder's train files) and the core.
Never: ``fetch``, ``serve``, ``streaming``, ``loader``, ``cli``.
"""
