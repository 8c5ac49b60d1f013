"""The demo trainer: a tiny GPT trained on nanostream's data path (``make train-cpu`` / ``make train-gpu``).

Not part of the library: it is a consumer of it, kept outside ``src/nanostream``.
``demo.gpt`` is the model, ``demo.source`` picks and serves the data source,
``demo.train`` is the command (``python -m demo.train --help``).
"""
