"""Row groups to batches: ``stream()``, ``iter_batches()``, the producer, the reader and the epoch order.

``streams.py`` is the entry (``stream``, ``iter_batches``), resolving its arguments into
sources and ``Options``; ``single.py`` is one source's ``Stream`` and its ``Plan``
(``plan.py``, with ``Position``, ``Batch`` and ``Chunk``); ``mix.py`` a weighted mix of
sources (``MixStream``);
``producer.py`` reads by the plan into a bounded queue, ``reader.py`` reads one file
with pyarrow, ``supply.py`` turns file indices into local files (fetching what is
missing), ``order.py`` is each epoch's global order, its deal to the readers and the
``Cursor``, ``ranks.py`` who the reader is (rank, world, node, workers), and
``blocking.py`` runs a stream for code without an event loop. Under a ``cache_limit`` the
folder is a cache of fixed size (``cache/``: the budget, its locks and ``nanostream cache``),
whose evictions follow the readers' future order (``horizon.py``).

Invariant ("equal work"): every reader of a run reads the same number of row groups
per epoch, fixed before the epoch starts, so no DDP rank waits on one that ran out.

May import: ``nanostream.fetch``, ``nanostream.sources`` and the core. Never: ``serve``,
``text``, ``loader``, ``cli``, nor torch.
"""
