"""The downloader: ``Fetcher`` and what makes every shard it publishes complete, verified and resumable.

``fetcher.py`` schedules W connections over the shards (``Fetcher``), ``ranges.py`` runs
one range request into a part file, ``jobs.py`` is a shard in progress (its ranges and
state saves), ``partial.py`` the part/state files and the atomic publish, ``tail.py``
how the last bytes are split across idle connections, ``disk.py`` the threads that do
the blocking file work, ``outcomes.py`` how each shard is settled and its error,
``space.py`` the free-space preflight, ``many.py`` ``fetch_files``/``fetch_shards``, and
``command.py`` the ``nanostream fetch`` command.

Invariant: a file under a shard's final name is complete and verified; the saved
resume state never claims a byte that is not durable ("never ahead of the data").

May import: ``nanostream.sources`` and the core. Never: ``serve``, ``streaming``,
``text``, ``loader``, ``cli``.
"""
