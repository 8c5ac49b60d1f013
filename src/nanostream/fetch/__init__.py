"""The downloader: ``Fetcher`` and what makes every file it publishes complete, verified and resumable."""
