"""How many batches a ``TokenDataset`` makes (``len(ds)``, per epoch, per row group) and ``RunLimit``, an
iterator's batch count bounded from below by the row-group counts known, so that it never waits for them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..concurrency import LoopThread
from ..errors import ConfigError
from ..streaming.epoch import Tally
from ..streaming.order import Cursor
from ..streaming.plan import Options
from ..streaming.ranks import Ranks
from ..streaming.single import open_stream
from ..streaming.streams import BatchIterator
from .encode import doc_arrays
from .packing import BestFitPacker, token_dtype


def sample_rows(ds: Any, k: int) -> int:
    """Full rows packed from source ``k``'s first row group of epoch 0 alone (the same on every node; kept)."""
    if ds._rows[k] is None:
        o: Options = ds._options
        one = replace(o, ranks=Ranks(0, 1, 1), epochs=1, read_ahead=replace(o.read_ahead, files=0))  # that shard
        with BatchIterator(open_stream(ds.sources[k], one, ds._cfg)) as it:
            texts = list(next(it).texts)
        tokens, lengths = doc_arrays(ds.tokenizer, texts, token_dtype(ds.tokenizer.vocab_size))
        packer = BestFitPacker(ds.buffer_docs)
        packer.add(tokens, lengths)
        row, rows = np.empty(ds.seq_len + 1, dtype=np.int64), 0
        while packer.fill_row(row, lambda: False):
            rows += 1
        ds._rows[k] = rows
    return ds._rows[k]


def total_batches(ds: Any, origins: tuple[Cursor | None, ...], lengths: Any = None) -> int:
    """Batches every rank yields from ``origins`` (None: epoch 0) to the last epoch; a mix runs until the
    source that needs the most rows for its share is done. ``lengths(k, epoch, origin)`` gives each epoch's
    row groups (default: exact, learning every count it needs)."""

    def rows(k: int, e: int, o: Cursor | None) -> int:
        per_group = sample_rows(ds, k)  # first: reading the sample teaches its shard's count
        return (lengths(k, e, o) if lengths is not None else ds._stream(k, None, o).epoch_length(e)) * per_group

    if ds.weights is None:
        origin = origins[0]
        first = origin.epoch if origin is not None else 0
        total = sum(rows(0, e, origin) // ds.batch_size for e in range(first, ds.epochs))
    else:
        need = [sum(rows(k, e, o) for e in range(o.epoch if o is not None else 0, ds.epochs)) / w
                for k, (o, w) in enumerate(zip(origins, ds.weights, strict=True))]
        total = int(max(need)) // ds.batch_size
    if total == 0 and lengths is None and all(o is None for o in origins):
        raise ConfigError(
            f"TokenDataset makes no batch of {ds.batch_size} x {ds.seq_len} per rank in {ds.epochs} "
            f"epoch(s) ({ds.rows_per_row_group()} rows per row group): use a smaller batch, fewer ranks "
            "or more data")
    return total


class RunLimit:
    """The batches one iterator (a DataLoader worker's share of its rank's) makes, known at once below a lower
    bound from the row-group counts known so far."""

    def __init__(self, ds: Any, origins: tuple[Cursor | None, ...], worker: int, workers: int) -> None:
        self.ds, self.origins, self.worker, self.workers = ds, origins, worker, workers
        self.value: int | None = None
        self._bound = 0
        self._tallies: dict[tuple[int, int], Tally] = {}  # (source, 0: the origin's epoch | 1: a later one)
        self._runner: LoopThread | None = None
        self._interrupted = False

    def _share(self, total: int) -> int:
        return total // self.workers + (self.worker < total % self.workers)

    def _length(self, k: int, epoch: int, origin: Cursor | None) -> int:
        first = origin.epoch if origin is not None else 0
        key = (k, int(epoch != first))
        if key not in self._tallies:
            s = self.ds._stream(k, None, origin)
            self._tallies[key] = Tally(s.epoch_deal(epoch), s.book)
        return self._tallies[key].length_lower()

    def allows(self, batches: int) -> bool:
        """May batch number ``batches + 1`` be made? At once below the bound; past it, after learning every
        count (``interrupt()`` from another thread ends that wait: ``CancelledError``)."""
        if self.value is None and batches >= self._bound:
            self._bound = self._share(total_batches(self.ds, self.origins, self._length))
            if batches >= self._bound:
                self._runner = runner = LoopThread("nanostream-count")
                if self._interrupted:  # before the runner was there: it runs nothing
                    runner.close()
                try:
                    for k, origin in enumerate(self.origins):
                        runner.run(self.ds._stream(k, None, origin).prepare())
                finally:
                    runner.close()
                self.value = self._share(total_batches(self.ds, self.origins))
        return self.value is None or batches < self.value

    def interrupt(self) -> None:
        """Cancel a count being learned (on another thread) and any later one."""
        self._interrupted = True
        if self._runner is not None:
            self._runner.close()
