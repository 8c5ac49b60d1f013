"""``TokenDataset``: packed ``(inputs, targets)`` batches of a split (or a weighted mix), how many, and its resume
state; ``HostSink``, the CPU tensors it hands out. docs/loader.md has the rules (equal batches, exact and elastic
resume, mixes)."""

from __future__ import annotations

import functools
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..config import Config, parse_cache_limit
from ..errors import ConfigError, LoaderError
from ..retry import RetryPolicy
from ..sources.resolve import Source, normalized, sources_of
from ..streaming.order import Cursor
from ..streaming.plan import Options, Position, ReadAhead
from ..streaming.ranks import Ranks, worker_stride
from ..streaming.single import Stream, open_stream
from ..streaming.streams import BatchIterator, open_mix
from ..text.load import load_tokenizer
from . import resume
from .encode import doc_arrays
from .packing import BestFitPacker, PackStats, token_dtype
from .pipeline import RunLimit, TokenIterator
from .sharer import default_sharer

__all__ = ["TokenDataset"]



class TokenDataset(IterableDataset):
    """``(inputs, targets)`` int64 batches of ``(batch_size, seq_len)`` of a split, ``targets`` = ``inputs``
    shifted by one, packed best-fit (BOS-aligned) from the tokenized documents.

    Use directly (``for x, y in ds``) or as ``DataLoader(ds, batch_size=None, num_workers=k)``. ``data``: as
    in ``stream()`` (a list of ``Source``s: a mix, its weights shares of the tokens). ``epochs=None`` streams
    forever; with a number, every rank yields exactly ``len(ds)`` batches. ``ranks``, ``read_ahead``
    (``tokenized`` row groups and finished ``batches`` ahead too), ``retry``, ``cache_limit`` (not part of
    the resume state), ``config``: as in ``stream()``. ``buffer_docs`` documents are kept to choose from
    (nanochat: 1000; per source in a mix).
    """

    def __init__(self, split: str, tokenizer: Any, batch_size: int, seq_len: int, *,
                 data: str | Path | Source | list[Source] | None = None, epochs: int | None = None,
                 shuffle: bool = False, seed: int = 0, ranks: Ranks | None = None,
                 read_ahead: ReadAhead | None = None, cache_limit: int | str | None = None,
                 retry: RetryPolicy | None = None, buffer_docs: int = 1000, config: Config | None = None) -> None:
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("buffer_docs", buffer_docs)):
            if not isinstance(value, int) or value < 1:
                raise LoaderError(f"TokenDataset {name} must be an integer >= 1, got {value!r}")
        tokenizer = load_tokenizer(tokenizer)  # nanochat's tokenizer object, a tokenizers.Tokenizer, ...
        token_dtype(tokenizer.vocab_size)  # its ids fit an array dtype
        self.split, self.tokenizer = split, tokenizer
        self.batch_size, self.seq_len, self.buffer_docs, self.epochs = batch_size, seq_len, buffer_docs, epochs
        self.sources = sources_of(data)
        self.weights = normalized(self.sources) if len(self.sources) > 1 else None
        self._cfg = config or Config.from_env()
        limit = self._cfg.cache_limit if cache_limit is None else parse_cache_limit(cache_limit)
        # the streams never end by themselves (``epochs`` sets the batch count); counts shared through torch
        self._options = Options(split, (ranks or Ranks()).resolved(), None, bool(shuffle), int(seed),
                                read_ahead or ReadAhead(), retry, limit, default_sharer()).check()
        run = replace(self._options, epochs=epochs).check()  # folders, splits and layout checked now
        s = open_mix(self.sources, run, self._cfg) if self.weights else open_stream(self.sources[0], run, self._cfg)
        plans = [x.plan for x in s.streams] if self.weights else [s.plan]
        self.ranks = self._options.ranks
        self.read_ahead = self._options.read_ahead
        self._data_prints = [resume.data_fingerprint(p) for p in plans]
        self._pending: list[dict[str, Any]] | None = None
        self._live: weakref.ref[TokenIterator] | None = None
        self._last: dict[str, Any] = {}  # final snapshot of the last closed iterator
        self._rows: list[int | None] = [None] * len(self.sources)  # rows packed from each source's sample
        self._origins: tuple[Cursor | None, ...] = (None,) * len(self.sources)  # where the last run started

    def _config(self) -> dict[str, Any]:
        """The arguments batches depend on: a state saved with others is refused."""
        config = {"split": self.split, "batch_size": self.batch_size, "seq_len": self.seq_len,
                  "buffer_docs": self.buffer_docs, "bos_id": int(self.tokenizer.bos_id),
                  "vocab_size": int(self.tokenizer.vocab_size), "drop_last": self.ranks.drop_last,
                  "shuffle": bool(self._options.shuffle), "seed": int(self._options.seed)}
        if self.weights is not None:
            config["mix"] = [s.label for s in self.sources]  # the same sources (their weights may change)
        return config

    @functools.cached_property
    def _fingerprints(self) -> list[dict[str, str]]:
        """Each source's data and tokenizer fingerprints (the tokenizer's made on first use: it encodes)."""
        tok = resume.tokenizer_fingerprint(self.tokenizer)
        return [{"data": d, "tokenizer": tok} for d in self._data_prints]

    def _stream(self, k: int, layout: tuple[int, int, int] | None = None, start: Position | Cursor | None = None,
                epochs: int | None = None, replay: tuple[tuple[int, int], ...] = ()) -> Stream:
        """Source ``k``'s stream (never started) for reader ``layout`` (None: this rank's), from ``start``."""
        ranks = self.ranks if layout is None else Ranks(*layout, drop_last=self.ranks.drop_last).resolved()
        options = replace(self._options, ranks=ranks, epochs=epochs, replay=replay)
        return open_stream(self.sources[k], options, self._cfg, start)

    # -- how many batches --------------------------------------------------------------------
    def rows_per_row_group(self) -> int | list[int]:
        """Full rows packed from the first row group of epoch 0 alone (the same on every node); a list for a mix."""
        rows = [self._sample_rows(k) for k in range(len(self.sources))]
        return rows if self.weights is not None else rows[0]

    def _sample_rows(self, k: int) -> int:
        """``rows_per_row_group()`` of source ``k`` (read once, then kept)."""
        if self._rows[k] is None:
            ahead = replace(self.read_ahead, files=0)  # that shard only
            one = replace(self._options, ranks=Ranks(0, 1, 1), epochs=1, read_ahead=ahead)
            with BatchIterator(open_stream(self.sources[k], one, self._cfg)) as it:
                texts = list(next(it).texts)
            packer = BestFitPacker(self.buffer_docs)
            packer.add(*doc_arrays(self.tokenizer, texts, token_dtype(self.tokenizer.vocab_size)))
            row, rows = np.empty(self.seq_len + 1, dtype=np.int64), 0
            while packer.fill_row(row, lambda: False):
                rows += 1
            self._rows[k] = rows
        return self._rows[k]

    def epoch_batches(self, epoch: int = 0) -> int:
        """Batches every rank yields in ``epoch``: its row groups * ``rows_per_row_group()`` // ``batch_size``."""
        if self.weights is not None:
            raise LoaderError("a mix's sources have epochs of their own: use len(ds) for its batch count")
        return self._stream(0).epoch_length(epoch) * self._sample_rows(0) // self.batch_size

    def __len__(self) -> int:
        """Batches every rank yields in this run (after a ``load_state_dict``, those left); learns every count."""
        if self.epochs is None:
            raise TypeError("TokenDataset with epochs=None is endless: it has no len()")
        origins = self._origins
        if self._pending:
            r = self.ranks
            _, origins, _ = resume.plan(self._pending, (r.rank, r.world_size, r.local_world_size), len(self.sources))
        return self._total_batches(origins)

    def _total_batches(self, origins: tuple[Cursor | None, ...], lengths: Any = None) -> int:
        """Batches every rank yields from ``origins`` (None: epoch 0) on, a mix's until its last source is done;
        ``lengths(k, epoch, origin)``: each epoch's row groups (default: exact, learning every count)."""

        def rows(k: int, e: int, o: Cursor | None) -> int:
            per_group = self._sample_rows(k)  # first: reading the sample teaches its shard's count
            return (lengths(k, e, o) if lengths is not None else self._stream(k, None, o).epoch_length(e)) * per_group

        if self.weights is None:
            origin = origins[0]
            first = origin.epoch if origin is not None else 0
            total = sum(rows(0, e, origin) // self.batch_size for e in range(first, self.epochs))
        else:
            need = [sum(rows(k, e, o) for e in range(o.epoch if o is not None else 0, self.epochs)) / w
                    for k, (o, w) in enumerate(zip(origins, self.weights, strict=True))]
            total = int(max(need)) // self.batch_size
        if total == 0 and lengths is None and all(o is None for o in origins):
            raise ConfigError(
                f"TokenDataset makes no batch of {self.batch_size} x {self.seq_len} per rank in {self.epochs} "
                f"epoch(s) ({self.rows_per_row_group()} rows per row group): use a smaller batch, fewer ranks "
                "or more data")
        return total

    # -- iterators -----------------------------------------------------------------------------
    def __iter__(self) -> TokenIterator:
        return self._iterate()

    def _iterate(self, sink: Any = None, note: Any = None) -> TokenIterator:
        """A new iterator; ``sink`` makes the batches (default: ``HostSink``); ``note``: see ``TokenIterator``."""
        info = get_worker_info()
        wid, k = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = worker_stride(self.ranks.rank, self.ranks.world_size, wid, k)
        layout = (reader, readers, self.ranks.local_world_size * k)
        state, origins, parts = resume.plan(self._pending, layout, len(self.sources))
        self._origins = origins
        limit = RunLimit(self, origins, wid, k) if self.epochs is not None else None
        self._pending = None
        self._last = {}
        sink = sink if sink is not None else HostSink(self.batch_size, self.seq_len + 1)
        it = TokenIterator(self, layout, state, origins, parts, limit, self._last, sink, note)
        self._live = weakref.ref(it)
        return it

    def state_dict(self) -> dict[str, Any]:
        """Resume state after the last batch this process's current iterator returned (JSON-able)."""
        it = self._live() if self._live is not None else None
        if it is not None:
            return it.state_dict()
        if "snapshot" in self._last:
            return self._last["snapshot"].state_dict()
        if self._pending is not None and len(self._pending) == 1:
            return dict(self._pending[0])
        fresh = resume.empty(self)
        if self._pending:  # loaded for an elastic resume, not started yet: keep all of it
            fresh["pending"] = list(self._pending)
        return fresh

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Make the next ``iter()`` continue where ``state`` was taken: exactly at the same layout (rank, world
        size, nodes, DataLoader workers); at another, pass *every* old reader's state (a list, the same on every
        new rank) for an elastic resume. A mix's weights may differ from the saved ones."""
        states = state if isinstance(state, list) else [state]
        if len(states) == 1 and isinstance(states[0], dict) and "pending" in states[0]:
            states = list(states[0]["pending"])  # saved between an elastic load and the first batch
        for st in states:
            resume.check(st, self._config(), self._fingerprints)
        if not states:
            raise LoaderError("load_state_dict got an empty list of states")
        self._pending = states
        self._live, self._last = None, {}

    def stats(self) -> dict[str, Any]:
        """Counters of the current iterator (``Mark.stats``) and ``wait_s``, the time its ``next()`` waited."""
        it = self._live() if self._live is not None else None
        if it is not None:
            return it.stats()
        if "snapshot" in self._last:
            return {**self._last["snapshot"].stats(), "wait_s": self._last["wait_s"]}
        stats = self.state_dict().get("stats", PackStats().as_dict())
        return resume.counters(stats, batches=0, buffered_docs=0, wait_s=0.0)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_live": None, "_last": {}}


class HostSink:
    """The CPU sink: rows packed into one reused array, handed over as fresh tensors (the caller may keep them)."""

    def __init__(self, batch_size: int, row_len: int) -> None:
        self._rows = np.empty((batch_size, row_len), dtype=np.int64)

    def rows(self) -> np.ndarray:
        return self._rows

    def finish(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())

    def ready(self, item: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return item


def fix_rows_per_row_group(ds: TokenDataset, rows: int | list[int]) -> TokenDataset:
    """Internal (benches, tests): take ``rows`` as ``ds.rows_per_row_group()`` instead of reading it."""
    given = rows if isinstance(rows, list) else [rows]
    if len(given) != len(ds.sources) or any(not isinstance(r, int) or r < 1 for r in given):
        raise LoaderError(f"rows_per_row_group must be an integer >= 1 (a list of one per source for a mix), "
                          f"got {rows!r}")
    ds._rows = list(given)
    return ds
