"""The downloader: ``Fetcher`` and what makes every file it publishes complete, verified and resumable.

May import ``nanostream.sources`` and the core; never ``serve``, ``streaming``, ``text``, ``loader``, ``cli``.
"""
