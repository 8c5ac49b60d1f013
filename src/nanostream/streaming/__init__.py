"""Row groups to batches: ``stream()``, ``iter_batches()``, and what they read in which order.

The spine, top-down: ``streams.py`` (the front door) -> ``single.py`` / ``mix.py`` (a stream) ->
``producer.py`` (its task) -> ``epoch.py`` (what a reader reads next, by ``order.py``'s deal and
``settle.py``'s settlement, counting in ``counting.py``) -> ``files.py`` (a local file: the folder, or
``cached.py`` under a ``cache_limit``, on ``cache/``) -> ``reader.py`` (pyarrow). docs/design.md has
the map, the invariants and their tests.

May import: ``nanostream.fetch``, ``nanostream.sources`` and the core. Never: ``serve``, ``text``,
``loader``, ``cli``, nor torch.
"""
