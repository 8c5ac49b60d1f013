"""nanochat's data loader with nanostream underneath: the same two functions, signatures, yields and folders
(docs/nanochat.md). Both yield from one endless ``TokenDataset`` over nanochat's folder, ranks from torchrun's
environment; the keyword arguments after nanochat's are ``TokenDataset``'s."""

from __future__ import annotations

import copy
import functools
import itertools
import json
import logging
import threading
import weakref
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch

from .config import DATASETS, Config
from .errors import LoaderError
from .loader.dataset import TokenDataset
from .loader.device import token_batches
from .loader.feed import PIECE_DOCS
from .loader.resume import Mark
from .loader.sharer import StateGather, default_store
from .retry import RetryPolicy
from .sources.catalog import say_once
from .sources.resolve import Source
from .streaming.plan import ReadAhead
from .streaming.ranks import Ranks
from .streaming.streams import Data
from .text.load import load_tokenizer

__all__ = ["tokenizing_distributed_data_loader_bos_bestfit", "tokenizing_distributed_data_loader_with_state_bos_bestfit"]

log = logging.getLogger(__name__)
FORMAT = 1  # the "nanostream" entry's layout
_RUNS = itertools.count()  # loaders with state made in this process: every rank counts the same
_ADAPTED: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()


def tokenizing_distributed_data_loader_with_state_bos_bestfit(
        tokenizer: Any, B: int, T: int, split: str, tokenizer_threads: int = 4, tokenizer_batch_size: int = 128,
        device: Any = "cuda", resume_state_dict: dict[str, Any] | None = None, buffer_size: int = 1000, *,
        data: Data = None, shuffle: bool = False, seed: int = 0, read_ahead: ReadAhead | None = None,
        cache_limit: int | str | None = None, retry: RetryPolicy | None = None,
        config: Config | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
    """nanochat's loader with state: yields ``(x, y, state)``; ``state`` resumes at the batch it came with."""
    ds = _dataset(tokenizer, B, T, split, tokenizer_threads, tokenizer_batch_size, buffer_size, data, config,
                  shuffle=shuffle, seed=seed, read_ahead=read_ahead, cache_limit=cache_limit, retry=retry)
    state = _load(ds, resume_state_dict)
    gather = None
    rank, world_size = ds.ranks.rank, ds.ranks.world_size
    if world_size > 1:
        store = default_store(agent=True)
        if store is None:
            log.warning("no torch.distributed process group and no torchrun store: rank %d's loader state holds "
                        "its own position only, so rank 0's cannot resume the other ranks", rank)
        else:
            gather = StateGather(store, rank, world_size, str(next(_RUNS)))
    note = functools.partial(_note, world_size, rank, gather)
    return _batches(token_batches(ds, torch.device(device), note), torch.device(device), state)


def tokenizing_distributed_data_loader_bos_bestfit(
        tokenizer: Any, B: int, T: int, split: str, tokenizer_threads: int = 4, tokenizer_batch_size: int = 128,
        device: Any = "cuda", resume_state_dict: dict[str, Any] | None = None, buffer_size: int = 1000, *,
        data: Data = None, shuffle: bool = False, seed: int = 0, read_ahead: ReadAhead | None = None,
        cache_limit: int | str | None = None, retry: RetryPolicy | None = None,
        config: Config | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """nanochat's loader without state: yields ``(x, y)`` (the same arguments)."""
    ds = _dataset(tokenizer, B, T, split, tokenizer_threads, tokenizer_batch_size, buffer_size, data, config,
                  shuffle=shuffle, seed=seed, read_ahead=read_ahead, cache_limit=cache_limit, retry=retry)
    _load(ds, resume_state_dict)
    return _batches(token_batches(ds, torch.device(device)), torch.device(device))


def _dataset(tokenizer: Any, B: int, T: int, split: str, threads: int, tokenizer_batch_size: int, buffer_size: int,
             data: Data, config: Config | None, **options: Any) -> TokenDataset:
    """The endless TokenDataset of this rank, over nanochat's folder unless ``data`` says otherwise: a dataset
    name, URL or ``Source`` without ``folder=`` downloads into nanochat's folder."""
    if tokenizer_batch_size != PIECE_DOCS:
        say_once(f"tokenizer_batch_size={tokenizer_batch_size}", f"tokenizer_batch_size={tokenizer_batch_size} is not "
                 f"used: nanostream refills the buffer {PIECE_DOCS} documents at a time, as nanochat's default does")
    cfg = config or Config.from_env()
    if data is None:
        data = cfg.nanochat_data_dir()
    if isinstance(data, str):
        data = Source(data)
    named = isinstance(data, Source) and (data.data is None or str(data.data) in DATASETS or "://" in str(data.data))
    if named and data.folder is None:
        data = replace(data, folder=cfg.nanochat_data_dir())
    ranks = Ranks().resolved()  # torchrun's environment, as nanochat's get_dist_info reads it
    return TokenDataset(split, _adapted(tokenizer, threads), B, T, data=data, config=cfg, ranks=ranks,
                        buffer_docs=buffer_size, epochs=None, **options)


def _adapted(tokenizer: Any, threads: int) -> Any:
    """``load_tokenizer(tokenizer)``, made once per tokenizer object and thread count (one per val loader else)."""
    try:
        made = _ADAPTED.setdefault(tokenizer, {})
    except TypeError:  # not weakly referenceable: adapt it each time
        return load_tokenizer(tokenizer, num_threads=threads)
    if threads not in made:
        made[threads] = load_tokenizer(tokenizer, num_threads=threads)
    return made[threads]


def _load(ds: TokenDataset, state: dict[str, Any] | None) -> dict[str, Any]:
    """Load a state this module yielded (rank 0's holds every rank's); the state to yield with the first batch."""
    if state is None:
        return {"epoch": 1, "pq_idx": 0, "rg_idx": 0,
                "nanostream": {"format": FORMAT, "world_size": ds.ranks.world_size, "ranks": []}}
    ours = state.get("nanostream") if isinstance(state, dict) else None
    if not isinstance(ours, dict) or ours.get("format") != FORMAT:
        keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise LoaderError(f"resume_state_dict is not a state this loader yielded (keys {keys}): nanochat's own "
                          "loader state (pq_idx, rg_idx) cannot be resumed exactly; resume from a checkpoint "
                          "written with nanostream's loader, or start the data over with resume_state_dict=None")
    ranks = ours["ranks"]
    if None in ranks:
        have = [r for r, s in enumerate(ranks) if s is not None]
        raise LoaderError(f"this loader state holds only rank {have}'s position (it was yielded on that rank): "
                          "save rank 0's state, which holds every rank's (base_train.py does)")
    if ranks:  # empty: saved before the first batch
        ds.load_state_dict(list(ranks))  # this rank's own at the same world size, else elastic
    return copy.deepcopy(state)


def _note(world_size: int, rank: int, gather: StateGather | None, snap: Mark,
          stop: threading.Event) -> dict[str, Any] | None:
    """Run on the assembly thread after each batch: this rank's state after it, every rank's on rank 0."""
    mine = snap.state_dict()
    ranks: list[Any] = [None] * world_size
    ranks[rank] = mine
    if gather is not None:
        if rank != 0:
            gather.share(snap.batches, json.dumps(mine))
        else:
            others = gather.collect(snap.batches, stop)
            if others is None:  # stopping
                return None
            ranks[1:] = [json.loads(s) for s in others]
    return {**_log_fields(mine), "nanostream": {"format": FORMAT, "world_size": world_size, "ranks": ranks}}


def _log_fields(state: dict[str, Any]) -> dict[str, int]:
    """base_train.py's log line: the epoch (from 1), file index and row group the last documents came from."""
    sub = state["sources"][0] if "sources" in state else state
    pos = (sub["partial"] if sub.get("skip") else sub["position"]) or (0, 0, 0)  # None: no batch yet
    return {"epoch": int(pos[0]) + 1, "pq_idx": int(pos[1]), "rg_idx": int(pos[2])}


def _batches(it: Any, device: torch.device, state: dict[str, Any] | None = None) -> Iterator[tuple[Any, ...]]:
    """``(x, y)`` per batch of ``it``; given the first ``state``, ``(x, y, state)``. CPU and CUDA batches come as
    they are; another device's (``mps``) are copied there."""
    try:
        for x, y in it:
            if device.type not in ("cpu", "cuda"):
                x, y = x.to(device), y.to(device)
            if state is None:
                yield x, y
            else:
                yield x, y, state
                state = it.snapshot().note  # the state after that batch: the one to resume at the next
    finally:
        it.close()
