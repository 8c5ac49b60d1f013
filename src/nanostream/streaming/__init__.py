"""Row groups to batches: ``stream()``, ``iter_batches()``, the producer, the reader and the epoch order.

``streams.py`` is the entry (``stream``, ``iter_batches``), resolving its arguments into
sources and ``Options``; ``single.py`` is one source's ``Stream`` and its ``Plan``
(``plan.py``, with ``Position``, ``Batch`` and ``Chunk``); ``mix.py`` a weighted mix of
sources (``MixStream``);
``producer.py`` reads by the plan into a bounded queue, ``reader.py`` reads one file
with pyarrow, ``supply.py`` turns file indices into local files (fetching what is
missing), ``order.py`` is each epoch's global order and its deal to the readers before
the row-group counts are known, ``settle.py`` the deal settled once they are, ``epoch.py`` a
reader's way through an epoch, ``cursor.py`` the ``Cursor``, ``counting.py`` a reader's tally
of the counts known and its waits for more, ``ranks.py`` who the reader is (rank, world, node,
workers), and
``blocking.py`` runs a stream for code without an event loop. Under a ``cache_limit`` the
folder is a cache of fixed size (``cache/``: the budget, its locks and ``nanostream cache``),
whose evictions follow the readers' future order (``horizon.py``).

Invariant ("equal work"): every reader of a run reads the same number of row groups
per epoch, so no DDP rank waits on one that ran out; it is settled once every row-group
count of the epoch is known, and no reader reads past what the counts known guarantee is
its own, so the first batch waits for no other shard's footer.

May import: ``nanostream.fetch``, ``nanostream.sources`` and the core. Never: ``serve``,
``text``, ``loader``, ``cli``, nor torch.
"""
