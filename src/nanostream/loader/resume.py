"""``TokenDataset``'s resume state: what ``state_dict()`` holds, and how a load is checked and planned.

A state (version 3; version 2 still loads) is a dict of plain values and two arrays:

* ``config``: the dataset arguments batches depend on (a load with other ones is refused);
* ``layout``: ``[reader, readers, readers per node]`` (DataLoader workers folded in);
* ``position``: the stream position of the last row group moved into the packing buffer whole,
  ``skip``: how many documents of the next one (``partial``) it holds already;
* ``tokens`` / ``lengths`` / ``parts``: the buffered documents, each run tagged with its row group;
* ``cursor``: the global cursor after the row groups taken (``order.Cursor``), ``origin``: where
  the run started, ``stats`` and ``batches``.

``plan`` decides what a new reader does with the loaded states: the one of its own layout
resumes exactly; at another layout the run restarts at the smallest cursor and the buffered
documents of old readers ``i`` with ``i % readers == reader`` are carried over (``carried_docs``).

A mix's state (``encode_mix``) holds ``config``, ``layout`` and ``batches`` once, ``mix``: the
normalized weights and the rows each source has packed (the schedule), and ``sources``: one
state of the form above per source. ``plan`` plans each source on its own: at another layout,
each source restarts at the smallest of its own cursors, carrying its own buffers.
Nothing here imports torch: the arrays come in as anything numpy reads (CPU tensors included)
and go out as numpy (``dataset.py`` makes them tensors).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LoaderError
from ..streaming.cursor import Cursor
from ..streaming.plan import Position
from ..streaming.single import Stream
from .packing import BestFitPacker, PackStats

if TYPE_CHECKING:
    from .feed import Part

STATE_VERSION = 3  # 3 added "skip" and "partial"; a version 2 state loads as skip 0
LOADABLE = (2, STATE_VERSION)


def pos_list(pos: Position | None) -> list | None:
    if pos is None:
        return None
    return [pos.epoch, pos.shard, pos.row_group, pos.taken, None if pos.base is None else pos.base.to_list()]


def pos_from(value: list | None) -> Position | None:
    if value is None:
        return None
    epoch, shard, group, taken, base = value
    return Position(int(epoch), int(shard), int(group), int(taken), None if base is None else Cursor.from_list(base))


def global_cursor(s: Stream, part: Part) -> Cursor:
    """The global position after the row groups this reader has moved into its buffer whole at
    ``part``, assuming every reader got as far (``s``: this reader's stream, never started).
    Its buffered documents are not re-read from there: an elastic resume carries them over."""
    return s.cursor(part.position) if part.position is not None else s.cursor()


def encode(part: Part, *, config: dict[str, Any], layout: tuple[int, int, int], batches: int, cursor: Cursor,
           origin: Cursor | None) -> dict[str, Any]:
    """The state of one source at ``part``, with ``tokens`` (int32: a uint16 tensor does not survive
    ``dist.all_gather_object``) and ``lengths`` as numpy arrays."""
    tokens, lengths = part.buffer.export()
    return {
        "version": STATE_VERSION,
        "config": dict(config),
        "layout": list(layout),
        "position": pos_list(part.position),
        "skip": part.skip,
        "partial": pos_list(part.partial),
        "tokens": tokens.astype(np.int32),
        "lengths": lengths,
        "parts": [[pos_list(tag) if isinstance(tag, Position) else None, n] for tag, n in part.buffer.tags()],
        "cursor": cursor.to_list(),
        "origin": None if origin is None else origin.to_list(),
        "stats": dict(part.stats),
        "batches": batches,
    }


def encode_mix(subs: list[dict[str, Any]], *, config: dict[str, Any], layout: tuple[int, int, int], batches: int,
               weights: tuple[float, ...], rows: tuple[int, ...]) -> dict[str, Any]:
    """A mix's state: the sources' states (``encode``) under one config, layout and batch count."""
    return {"version": STATE_VERSION, "config": dict(config), "layout": list(layout), "batches": batches,
            "mix": {"weights": list(weights), "rows": list(rows)}, "sources": subs}


def empty(config: dict[str, Any], sources: int = 1) -> dict[str, Any]:
    """The state of a dataset that has not started (no layout, nothing buffered)."""
    one = {"version": STATE_VERSION, "config": dict(config), "layout": None, "position": None, "skip": 0,
           "partial": None, "tokens": np.zeros(0, dtype=np.int32), "lengths": np.zeros(0, dtype=np.int64),
           "parts": [], "cursor": None, "origin": None, "stats": PackStats().as_dict(), "batches": 0}
    if sources == 1:
        return one
    return {"version": STATE_VERSION, "config": dict(config), "layout": None, "batches": 0,
            "mix": {"weights": [], "rows": [0] * sources}, "sources": [dict(one) for _ in range(sources)]}


def _runs(state: dict[str, Any], dtype: np.dtype) -> Iterator[tuple[list | None, np.ndarray, np.ndarray]]:
    """The state's buffered documents, run by run: (tag as saved, flat tokens, lengths)."""
    tokens = np.asarray(state["tokens"]).astype(dtype, copy=True)
    lengths = np.asarray(state["lengths"]).astype(np.int64, copy=False)
    doc = tok = 0
    for tag, n in state["parts"]:
        size = int(lengths[doc:doc + n].sum())
        yield tag, tokens[tok:tok + size], lengths[doc:doc + n]
        doc, tok = doc + n, tok + size


def restore(packer: BestFitPacker, state: dict[str, Any], dtype: np.dtype) -> tuple[Position | None, int]:
    """Refill ``packer`` with the state's buffer (tags and counters too); (position, batches)."""
    for tag, tokens, lengths in _runs(state, dtype):  # each run of documents keeps its row group's tag
        packer.add(tokens, lengths, pos_from(tag))
    packer.stats = PackStats(**state["stats"])
    return pos_from(state["position"]), int(state["batches"])


def carried_docs(old: dict[str, Any], dtype: np.dtype) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """An old reader's buffered documents that an elastic resume carries over, run by run: all but
    those of the row group it was in the middle of (``partial``), which the new run reads again whole."""
    partial = old.get("partial")
    for tag, tokens, lengths in _runs(old, dtype):
        if partial is None or tag != partial:
            yield tokens, lengths


def plan(pending: list[dict[str, Any]] | None, layout: tuple[int, int, int], sources: int = 1
         ) -> tuple[dict[str, Any] | None, tuple[Cursor | None, ...], tuple[tuple[dict[str, Any], ...], ...]]:
    """(the state to resume exactly, each source's origin of the run, each source's old states whose
    buffers an elastic resume carries over) for a reader of ``layout``, given the loaded states."""
    if not pending:
        return None, (None,) * sources, ((),) * sources
    for st in pending:
        if st["layout"] is not None and tuple(st["layout"]) == layout:
            subs = st["sources"] if "sources" in st else [st]
            return st, tuple(None if s["origin"] is None else Cursor.from_list(s["origin"]) for s in subs), \
                ((),) * sources
    origins, carried = [], []
    for k in range(sources):
        subs = [(st["layout"], st["sources"][k] if "sources" in st else st) for st in pending]
        carried.append(tuple(s for lay, s in subs if lay is not None and lay[0] % layout[1] == layout[0]))
        cursors = [Cursor.from_list(s["cursor"]) for _, s in subs if s["cursor"] is not None]
        origins.append(None if len(cursors) < len(subs)  # a state taken before any batch: nothing consumed
                       else min(cursors, key=lambda c: (c.epoch, c.consumed)))
    return None, tuple(origins), tuple(carried)


def check(state: Any, config: dict[str, Any]) -> None:
    """Raise LoaderError unless ``state`` is a loadable state made with ``config``."""
    if not isinstance(state, dict) or state.get("version") not in LOADABLE:
        raise LoaderError(f"not a TokenDataset state (version {STATE_VERSION}): "
                          f"got {type(state).__name__} with keys {sorted(state)[:8] if isinstance(state, dict) else '-'}")
    diff = {k: (v, config.get(k)) for k, v in state["config"].items() if config.get(k) != v}
    if diff or set(config) != set(state["config"]):
        detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise LoaderError(f"resume state comes from a different TokenDataset config ({detail or 'keys differ'}); "
                          "create the dataset with the same arguments and tokenizer")
