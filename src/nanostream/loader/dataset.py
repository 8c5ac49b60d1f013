"""``TokenDataset``: packed ``(inputs, targets)`` batches of a split (or a weighted mix), and how many.

``TokenDataset`` is an ``IterableDataset`` of ``(inputs, targets)`` int64 tensors of
shape ``(batch_size, seq_len)`` with ``targets`` = ``inputs`` shifted by one. Per
iterator (the main process, or each DataLoader worker) a ``pipeline.BatchPipeline``
tokenizes row groups ahead and assembles finished batches on background threads, so
``next()`` only pops a finished batch (``iterator.py``; on CUDA, through ``to_device``, it
also waits on the batch's copy event: ``device.py``).

``state_dict()`` describes the state after the last batch *returned* (``resume.py``).
Batches assembled ahead and row groups still being tokenized are not part of it; a resumed
dataset re-reads them. A load at another layout (world size, nodes or DataLoader workers)
restarts the stream at the smallest global cursor of all old readers, and new reader ``j``
of ``R`` takes over the buffered documents of the old readers ``i`` with ``i % R == j``.
Nothing is lost; the row groups other readers took beyond the smallest cursor are read
again, and so is a row group a reader was in the middle of.

Readers: worker ``w`` of ``k`` on rank ``r`` of ``world`` (``local`` ranks a node) is reader
``r*k + w`` of ``world*k`` with ``local*k`` readers a node (``streaming.ranks.worker_stride``),
so ranks and workers never share a row group and each node reads only its shards.

Equal batches: with finite ``epochs`` the run yields exactly ``len(ds)`` batches on every
rank (``length.py``: asked early it learns the row-group counts it needs; an iterator never
waits for it); a reader whose data is longer
stops there, one whose data is shorter drains its buffer, then goes on into the next
epoch's order (``feed.Seam``). A mix (``mix=[Source, ...]``) packs each row from one
source, the one furthest below its weight's share of the rows: token-exact shares. Each
source keeps its own order and goes on into its next epoch when it runs out; the run ends
when every source has completed ``epochs`` (by the count: ``len(ds)``).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import replace
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from ..config import Config, parse_cache_limit
from ..errors import ConfigError, LoaderError
from ..sources.spec import Source, normalized, sources_of
from ..streaming.cursor import Cursor
from ..streaming.mix import open_mix
from ..streaming.plan import Options, ReadAhead
from ..streaming.ranks import Ranks, worker_stride
from ..streaming.single import open_stream
from ..text.load import as_tokenizer
from ..text.tokenizer import Tokenizer
from . import resume
from .iterator import Recipe, TokenIterator
from .length import BatchCount, RunLimit
from .packing import PackStats, token_dtype
from .pipeline import Sink
from .sharer import default_sharer

__all__ = ["TokenDataset"]

log = logging.getLogger(__name__)
SPLITS = ("train", "val")


class TokenDataset(IterableDataset):
    """``(inputs, targets)`` batches of a split, packed best-fit from a tokenized document stream.

    Use directly (``for x, y in ds``) or as ``DataLoader(ds, batch_size=None, num_workers=k,
    pin_memory=True)``. The data: the dataset arguments of ``stream()`` (``data_dir``,
    ``dataset``, ``num_shards``, ...), or ``mix=[Source(...), ...]``, a weighted mix whose
    weights are shares of the tokens in the batches. ``rank``/``world_size``/``local_world_size``
    default as in ``stream()`` (torch.distributed, else torchrun's environment, else one rank);
    ``drop_last`` evens out the row groups of the readers per epoch as there. ``epochs=None``
    streams forever; with a finite number, every rank yields exactly ``len(ds)`` batches.
    ``buffer_docs`` documents are kept to choose from (nanochat: 1000; refilled 128 at a time;
    per source in a mix), about ``prefetch`` row groups (``prefetch`` x 1024 documents, in
    pieces of 128) are tokenized ahead and ``ahead`` finished batches are assembled ahead (on
    background threads; ``next()`` only hands one over). Other keyword arguments (``shuffle``,
    ``seed``, ``queue_size``, ``fetch_ahead``, ``cache_limit``, ...) go to ``iter_batches``, for every
    source (``cache_limit`` is not part of the resume state: a run may resume under another budget).
    ``rows_per_row_group`` fixes the count's estimate (see ``rows_per_row_group()``; a list, one
    per source, for a mix) instead of reading it from the data.
    """

    def __init__(self, split: str, tokenizer: Tokenizer, batch_size: int, seq_len: int, *,
                 mix: list[Source] | None = None, data_dir: Any = None, rank: int | None = None,
                 world_size: int | None = None, local_world_size: int | None = None, drop_last: bool = True,
                 epochs: int | None = None, buffer_docs: int = 1000, prefetch: int = 2, ahead: int = 2,
                 rows_per_row_group: int | list[int] | None = None, **stream_kwargs: Any) -> None:
        if split not in SPLITS:
            raise LoaderError(f"unknown split {split!r}: use 'train' or 'val'")
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len),
                            ("buffer_docs", buffer_docs), ("prefetch", prefetch), ("ahead", ahead)):
            if not isinstance(value, int) or value < 1:
                raise LoaderError(f"TokenDataset {name} must be an integer >= 1, got {value!r}")
        tokenizer = as_tokenizer(tokenizer)  # nanochat's tokenizer object, a tokenizers.Tokenizer, ...
        try:
            token_dtype(tokenizer.vocab_size)
        except ValueError as exc:
            raise LoaderError(str(exc)) from exc
        if "start" in stream_kwargs:
            raise LoaderError("TokenDataset takes no start=: resume with load_state_dict()")
        self.split, self.tokenizer = split, tokenizer
        self.batch_size, self.seq_len = batch_size, seq_len
        self.buffer_docs, self.prefetch, self.ahead, self.epochs = buffer_docs, prefetch, ahead, epochs
        self.drop_last = bool(drop_last)
        self.sources = _legacy_sources(mix, data_dir, stream_kwargs)
        self.weights = normalized(self.sources) if mix is not None else None
        self._cfg, self._options = _legacy_options(split, Ranks(rank, world_size, local_world_size, self.drop_last),
                                                   stream_kwargs)
        # check folders, splits, layout and stream arguments now (starts nothing)
        run = replace(self._options, epochs=epochs).check()
        s = open_mix(self.sources, run, self._cfg) if len(self.sources) > 1 else open_stream(self.sources[0], run,
                                                                                               self._cfg)
        plans = [x.plan for x in s.streams] if hasattr(s, "streams") else [s.plan]
        ranks = self._options.ranks
        self.rank, self.world_size, self.local_world_size = ranks.rank, ranks.world_size, ranks.local_world_size
        self._prints = resume.Fingerprints(tokenizer, plans)
        self._pending: list[dict[str, Any]] | None = None
        self._live: weakref.ref[TokenIterator] | None = None
        self._last: dict[str, Any] = {}  # final snapshot of the last closed iterator
        self._rows = self._check_rows(rows_per_row_group)  # rows packed from each source's sample row group
        self._origins: tuple[Cursor | None, ...] = (None,) * len(self.sources)  # where the last run started

    def _check_rows(self, rows: int | list[int] | None) -> list[int | None]:
        given = rows if isinstance(rows, list) else [rows] * len(self.sources)
        if len(given) != len(self.sources) or any(r is not None and (not isinstance(r, int) or r < 1)
                                                  for r in given):
            raise LoaderError(f"TokenDataset rows_per_row_group must be an integer >= 1 (or, for a mix, a list "
                              f"of one per source), got {rows!r}")
        return list(given)

    def _config(self) -> dict[str, Any]:
        config = {"split": self.split, "batch_size": self.batch_size, "seq_len": self.seq_len,
                  "buffer_docs": self.buffer_docs, "bos_id": int(self.tokenizer.bos_id),
                  "vocab_size": int(self.tokenizer.vocab_size), "drop_last": self.drop_last,
                  "shuffle": bool(self._options.shuffle), "seed": int(self._options.seed)}
        if self.weights is not None:
            config["mix"] = [s.label for s in self.sources]  # the same sources (their weights may change)
        return config

    def _recipe(self) -> Recipe:
        """What every iterator is made from: the streams never end by themselves (``epochs`` only sets the
        batch count), so a reader with less data goes on."""
        return Recipe(self.split, self.tokenizer, self.batch_size, self.seq_len, self.buffer_docs, self.prefetch,
                      self.ahead, self.epochs, self._config(), self.sources, self._options, self._cfg, self.weights,
                      tuple(s.label for s in self.sources), self._prints)

    # -- how many batches (length.py) ----------------------------------------------------------
    def rows_per_row_group(self) -> int | list[int]:
        """Full rows packed from one row group alone -- the first of epoch 0's global order, the
        same on every rank and node -- with this dataset's tokenizer, ``seq_len`` and ``buffer_docs``
        (for a mix, a list: one per source). Read once (downloading that shard if it is not local)
        and kept, unless given to the constructor (``rows_per_row_group=``; every rank must then be
        given the same)."""
        rows = [BatchCount(self).rows(k) for k in range(len(self.sources))]
        return rows if self.weights is not None else rows[0]

    def epoch_batches(self, epoch: int = 0, *, start: Cursor | None = None) -> int:
        """Batches every rank yields for ``epoch`` (from ``start``, if the run resumed there):
        ``row groups each rank reads in it * rows_per_row_group() // batch_size``, the same on every
        rank; it needs every row-group count of the epoch (learned now if not known). Raises
        ConfigError if some rank reads no row group. (A mix has no common epoch: its count is ``len(ds)``.)"""
        if self.weights is not None:
            raise LoaderError("a mix's sources have epochs of their own: use len(ds) for its batch count")
        return BatchCount(self).epoch_rows(0, epoch, start) // self.batch_size

    def __len__(self) -> int:
        """Batches every rank yields in this run (finite ``epochs`` only; after an elastic
        ``load_state_dict``, those left from its cursors). Needs every row-group count of the run's
        epochs: asked early, it learns them now (see ``length.py``); iterating never waits for it."""
        if self.epochs is None:
            raise TypeError("TokenDataset with epochs=None is endless: it has no len()")
        origins = self._origins
        if self._pending:
            _, origins, _ = resume.plan(self._pending, (self.rank, self.world_size, self.local_world_size),
                                        len(self.sources))
        total = BatchCount(self).total(origins)
        assert total is not None
        return total

    # -- iterators -----------------------------------------------------------------------------
    def __iter__(self) -> TokenIterator:
        return self._iterate()

    def _iterate(self, sink: Sink | None = None, note: Any = None) -> TokenIterator:
        """A new iterator; ``sink`` decides what a finished batch is (default: CPU tensors); ``note(snapshot,
        stop)`` runs on the assembly thread after each batch (``TokenIterator.note``)."""
        info = get_worker_info()
        wid, k = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = worker_stride(self.rank, self.world_size, wid, k)
        layout = (reader, readers, self.local_world_size * k)
        state, origins, carried = resume.plan(self._pending, layout, len(self.sources))
        self._origins = origins
        limit = RunLimit(BatchCount(self), origins, wid, k) if self.epochs is not None else None
        self._pending = None
        self._last = {}
        it = TokenIterator(self._recipe(), layout, state, origins, limit, self._last, sink, carried, note)
        self._live = weakref.ref(it)
        return it

    def _current(self) -> TokenIterator | None:
        return self._live() if self._live is not None else None

    def state_dict(self) -> dict[str, Any]:
        """Resume state after the last batch this process's current iterator returned."""
        it = self._current()
        if it is not None:
            return it.state_dict()
        if "snapshot" in self._last:
            return self._last["snapshot"].state_dict()
        if self._pending is not None and len(self._pending) == 1:
            return dict(self._pending[0])
        fresh = resume.empty(self._config(), self._prints.get())
        if self._pending:  # loaded for an elastic resume, not started yet: keep all of it
            fresh["pending"] = list(self._pending)
        return fresh

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Make the next ``iter()`` continue where ``state`` was taken.

        The state of this reader's own layout (rank, world size, nodes, DataLoader workers)
        resumes exactly. At another layout pass *every* old reader's state (a list, the same on
        every new rank): the run goes on from the smallest of their global cursors, and the old
        buffers are shared out (module docstring). Nothing is lost; see docs/loader.md for what is
        read twice. A mix's weights may differ from the saved ones: every source goes on from its
        cursor, and the new shares count from there."""
        states = state if isinstance(state, list) else [state]
        if len(states) == 1 and isinstance(states[0], dict) and "pending" in states[0]:
            states = list(states[0]["pending"])  # saved between an elastic load and the first batch
        for st in states:
            resume.check(st, self._config(), self._prints.get())
        if not states:
            raise LoaderError("load_state_dict got an empty list of states")
        self._pending = states
        self._live, self._last = None, {}

    def stats(self) -> dict[str, Any]:
        """Counters of the current iterator: documents, tokens, ``crop_fraction``, ``wait_s`` (and, for a
        mix, ``sources``: each source's tokens and share)."""
        it = self._current()
        if it is not None:
            return it.stats()
        if "snapshot" in self._last:
            return {**self._last["snapshot"].stats(), "wait_s": self._last["wait_s"]}
        st = PackStats(**self.state_dict().get("stats", PackStats().as_dict()))
        return {**st.as_dict(), "crop_fraction": st.crop_fraction, "batches": 0, "buffered_docs": 0,
                "wait_s": 0.0}

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_live"], d["_last"] = None, {}
        return d


_SOURCE_ARGS = ("num_shards", "include", "val", "text_column", "max_shard")


def _legacy_sources(mix: list[Source] | None, data_dir: Any, kw: dict[str, Any]) -> tuple[Source, ...]:
    """The sources of the dataset arguments TokenDataset still takes (``mix=``, ``source=``, ``dataset=``,
    ``data_dir=``, ``base_url=``, ...), as ``stream(data=...)`` would have them."""
    args = {k: kw.pop(k) for k in ("dataset", "base_url", "source", *_SOURCE_ARGS) if k in kw}
    if mix is not None or args.get("source") is not None:
        if data_dir is not None or len(args) > ("source" in args):
            raise ConfigError(f"mix= and source= exclude {', '.join(sorted({*args, 'data_dir'} - {'source'}))}: "
                              "give those to each Source")
        return sources_of(mix if mix is not None else args["source"])
    base_url, dataset = args.pop("base_url", None), args.pop("dataset", None)
    remote = base_url or dataset
    args.pop("source", None)
    if remote is None:
        return (Source(data_dir, **args),)
    return (Source(remote, folder=data_dir, **args),)


def _legacy_options(split: str, ranks: Ranks, kw: dict[str, Any]) -> tuple[Config, Options]:
    """The ``Options`` of the stream keyword arguments TokenDataset still takes (``shuffle``, ``queue_size``,
    ``fetch_ahead``, ``cache_limit``, ...); its streams never end by themselves."""
    cfg = kw.pop("config", None) or Config.from_env()
    known = {"shuffle", "seed", "queue_size", "fetch_ahead", "fetch_workers", "retry", "cache_limit", "count_sharer"}
    unknown = set(kw) - known
    if unknown:
        raise TypeError(f"TokenDataset got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    ahead = ReadAhead(row_groups=kw.get("queue_size", 8), files=kw.get("fetch_ahead", 2),
                      connections=kw.get("fetch_workers", 4))
    limit = kw.get("cache_limit")
    sharer = kw["count_sharer"] if "count_sharer" in kw else default_sharer()  # counts shared through torch
    options = Options(split, ranks.resolved(), None, bool(kw.get("shuffle", False)), int(kw.get("seed", 0)), ahead,
                      kw.get("retry"), cfg.cache_limit if limit is None else parse_cache_limit(limit), sharer)
    return cfg, options.check()
