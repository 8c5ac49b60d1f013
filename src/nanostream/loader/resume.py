"""``TokenDataset``'s resume state (version 5, plain values): the resume point after a batch (``Mark``, of one
``Part`` per source), what ``state_dict()`` makes of it, and how a load is checked and planned."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import LoaderError
from ..streaming.order import Cursor
from ..streaming.plan import Position
from ..streaming.single import Stream
from ..text.fast import SAMPLE
from .docrefs import Run, pack, unpack
from .encode import doc_arrays
from .packing import BufferSnapshot, PackStats, token_dtype

if TYPE_CHECKING:
    from ..streaming.plan import Plan
    from ..text.tokenizer import Tokenizer

STATE_VERSION = 5
Layout = tuple[int, int, int]  # (reader, readers, readers per node), DataLoader workers folded in


class Reader:
    """Who an iterator reads as (dataset, layout, origins), and the streams global cursors are computed with."""

    def __init__(self, ds: Any, layout: Layout, origins: tuple[Cursor | None, ...]) -> None:
        self.ds, self.layout, self.origins = ds, layout, origins
        self._streams: dict[int, Stream] = {}

    def cursor_stream(self, k: int) -> Stream:
        if k not in self._streams:
            self._streams[k] = self.ds._stream(k, self.layout, self.origins[k])
        return self._streams[k]


@dataclass(frozen=True)
class Part:
    """One source's resume point at a batch boundary (``buffer`` references immutable arrays: no copies;
    ``runs``: the buffer of a resumed feed not rebuilt yet, as the state names it)."""

    position: Position | None  # stream position of the last row group moved into the buffer whole
    skip: int  # documents of the row group after it moved into the buffer already ...
    partial: Position | None  # ... that row group, when ``skip`` > 0
    buffer: BufferSnapshot
    stats: dict[str, int]  # ``PackStats`` counters
    buffered_docs: int
    runs: tuple[Run, ...] | None = None


NOTHING = Part(None, 0, None, BufferSnapshot([]), PackStats().as_dict(), 0, ())  # a source not started


@dataclass(frozen=True)
class Mark:
    """An iterator's resume point right after one batch: each source's ``Part``, the batches made, the rows
    each source has packed (a mix's schedule), and what the iterator's ``note`` made of it (None without one)."""

    reader: Reader
    parts: tuple[Part, ...]
    batches: int
    rows: tuple[int, ...] = ()
    note: Any = None

    def state_dict(self) -> dict[str, Any]:
        """The resume state (plain values: ``json.dump`` writes it)."""
        r = self.reader
        subs = [encode(part, r.ds._fingerprints[k], r.cursor_stream(k).cursor(part.position), r.origins[k])
                for k, part in enumerate(self.parts)]
        return whole(r.ds, r.layout, self.batches, subs, self.rows)

    def stats(self) -> dict[str, Any]:
        """The counters of every source together (and, for a mix, each source's tokens and share)."""
        counts = {k: sum(p.stats[k] for p in self.parts) for k in self.parts[0].stats}
        out = counters(counts, batches=self.batches, buffered_docs=sum(p.buffered_docs for p in self.parts))
        ds = self.reader.ds
        if ds.weights is not None:
            tokens = [p.stats["tokens_out"] for p in self.parts]
            out["sources"] = [{"source": s.label, "weight": w, "tokens": n, "share": n / max(sum(tokens), 1),
                               "rows": rows}
                              for s, w, n, rows in zip(ds.sources, ds.weights, tokens, self.rows, strict=True)]
        return out


def counters(stats: dict[str, int], **more: Any) -> dict[str, Any]:
    """``PackStats`` counters with their ``crop_fraction``, and ``more``."""
    st = PackStats(**stats)
    return {**st.as_dict(), "crop_fraction": st.crop_fraction, **more}


def data_fingerprint(plan: Plan) -> str:
    """The split's files as the catalog lists them (paths, sizes, checksums), hashed."""
    files = [(f.path, f.size, f.sha256, f.md5) for f in (plan.files[s] for s in plan.shards)]
    return hashlib.sha256(json.dumps([plan.options.split, files]).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """The tokenizer's ids (BOS-first, as the loader encodes) on the identity sample, hashed."""
    dtype = token_dtype(tokenizer.vocab_size)
    tokens, lengths = doc_arrays(tokenizer, list(SAMPLE), dtype)
    h = hashlib.sha256(f"{tokenizer.vocab_size}/{tokenizer.bos_id}/".encode())
    h.update(tokens.astype("<u4").tobytes())
    h.update(lengths.astype("<u8").tobytes())
    return h.hexdigest()[:16]


def encode(part: Part, fingerprint: dict[str, str], cursor: Cursor | None, origin: Cursor | None) -> dict[str, Any]:
    """One source's state at ``part``: plain values only (the buffer by reference, ``origin``: where the run
    started, ``cursor``: the global cursor after the row groups taken)."""
    runs = part.runs
    if runs is None:
        runs = [Run((tag.epoch, tag.shard, tag.row_group), ids) for _, _, _, tag, ids in part.buffer.parts]
    return {"fingerprint": dict(fingerprint), "position": _listed(part.position), "skip": part.skip,
            "partial": _listed(part.partial), "docs": pack(runs), "cursor": _listed(cursor),
            "origin": _listed(origin), "stats": dict(part.stats)}


def whole(ds: Any, layout: Layout | None, batches: int, subs: list[dict[str, Any]],
          rows: tuple[int, ...]) -> dict[str, Any]:
    """The state of ``ds``: its sources' states (``encode``) under its config, the layout and the batch count."""
    head = {"version": STATE_VERSION, "config": ds._config(), "batches": batches,
            "layout": None if layout is None else list(layout)}
    if ds.weights is None:
        return {**head, **subs[0]}
    return {**head, "mix": {"weights": list(ds.weights), "rows": list(rows)}, "sources": subs}


def empty(ds: Any) -> dict[str, Any]:
    """The state of ``ds`` not started (no layout, nothing buffered)."""
    subs = [encode(NOTHING, f, None, None) for f in ds._fingerprints]
    return whole(ds, None, 0, subs, (0,) * len(subs))


def _listed(value: Position | Cursor | None) -> list | None:
    return None if value is None else value.to_list()


def plan(pending: list[dict[str, Any]] | None, layout: Layout, sources: int = 1
         ) -> tuple[dict[str, Any] | None, tuple[Cursor | None, ...], tuple[Part, ...]]:
    """(the state to resume exactly, each source's origin of the run, each source's ``Part`` to go on from) for
    a reader of ``layout``, given the loaded states. An elastic resume carries the documents the old readers of
    its stride buffered, but for those of the row group each was in (``partial``: read again whole)."""
    if not pending:
        return None, (None,) * sources, (NOTHING,) * sources
    for st in pending:
        if st["layout"] is not None and tuple(st["layout"]) == layout:
            subs = st["sources"] if "sources" in st else [st]
            origins = tuple(None if s["origin"] is None else Cursor.from_list(s["origin"]) for s in subs)
            return st, origins, tuple(_exact_part(s) for s in subs)
    origins, parts = [], []
    for k in range(sources):
        subs = [(st["layout"], st["sources"][k] if "sources" in st else st) for st in pending]
        carried = [s for lay, s in subs if lay is not None and lay[0] % layout[1] == layout[0]]
        runs = tuple(r for s in carried for r in unpack(s["docs"])
                     if s["partial"] is None or list(r.tag) != s["partial"][:3])
        parts.append(Part(None, 0, None, NOTHING.buffer, NOTHING.stats, sum(map(len, runs)), runs))
        cursors = [Cursor.from_list(s["cursor"]) for _, s in subs if s["cursor"] is not None]
        origins.append(None if len(cursors) < len(subs)  # a state taken before any batch: nothing consumed
                       else min(cursors, key=lambda c: (c.epoch, c.consumed)))
    return None, tuple(origins), tuple(parts)


def _exact_part(sub: dict[str, Any]) -> Part:
    """The ``Part`` a source's state ``sub`` goes on from, its buffer as the runs it names."""
    runs, skip = tuple(unpack(sub["docs"])), int(sub["skip"])
    position = Position.from_list(sub["position"]) if sub["position"] is not None else None
    partial = Position.from_list(sub["partial"]) if skip else None
    return Part(position, skip, partial, NOTHING.buffer, sub["stats"], sum(map(len, runs)), runs)


def check(state: Any, config: dict[str, Any], fingerprints: list[dict[str, str]]) -> None:
    """Raise LoaderError unless ``state`` is a loadable state made with ``config``, the same data and the
    same tokenizer (``fingerprints``, one per source)."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise LoaderError(f"not a TokenDataset state (version {STATE_VERSION}): "
                          f"got {type(state).__name__} with keys {sorted(state)[:8] if isinstance(state, dict) else '-'}")
    diff = {k: (v, config.get(k)) for k, v in state["config"].items() if config.get(k) != v}
    if diff or set(config) != set(state["config"]):
        detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise LoaderError(f"resume state comes from a different TokenDataset config ({detail or 'keys differ'}); "
                          "create the dataset with the same arguments and tokenizer")
    subs = state.get("sources", [state])
    if len(subs) != len(fingerprints):
        raise LoaderError(f"resume state holds {len(subs)} source(s), this dataset has {len(fingerprints)}")
    for k, (sub, now) in enumerate(zip(subs, fingerprints, strict=True)):
        saved = sub["fingerprint"]
        where = f" (source {k})" if len(subs) > 1 else ""
        if saved["tokenizer"] != now["tokenizer"]:
            raise LoaderError(f"resume state was saved with another tokenizer{where} (its ids differ: fingerprint "
                              f"{saved['tokenizer']}, now {now['tokenizer']}): resume with the run's tokenizer")
        if saved["data"] != now["data"]:
            raise LoaderError(f"resume state was saved over other data{where} (fingerprint {saved['data']}, now "
                              f"{now['data']}: other files, or other files present): resume over the run's files")
