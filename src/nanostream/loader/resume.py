"""``TokenDataset``'s resume state (version 4): what ``state_dict()`` holds (``Snapshot``), and how a load is
checked and planned. A state is a dict of plain values (``json.dump`` writes it); a mix's holds one state per
source under ``sources``. docs/loader.md says what an exact and an elastic load do.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from ..errors import LoaderError
from ..streaming.order import Cursor
from ..streaming.single import Stream
from ..text.fast import SAMPLE
from .docrefs import Run, pack, unpack
from .encode import doc_arrays
from .packing import PackStats, token_dtype

if TYPE_CHECKING:
    from ..streaming.plan import Plan
    from ..text.tokenizer import Tokenizer
    from .feed import Mark, Part

STATE_VERSION = 4
Layout = tuple[int, int, int]  # (reader, readers, readers per node), DataLoader workers folded in


class Reader:
    """Who an iterator reads as: its dataset, layout and origins, and the streams (never started) that global
    cursors are computed with, made on first use (shared by the iterator and its snapshots)."""

    def __init__(self, ds: Any, layout: Layout, origins: tuple[Cursor | None, ...]) -> None:
        self.ds, self.layout, self.origins = ds, layout, origins
        self._streams: dict[int, Stream] = {}

    def cursor_stream(self, k: int) -> Stream:
        if k not in self._streams:
            self._streams[k] = self.ds._stream(k, self.layout, self.origins[k])
        return self._streams[k]


class Snapshot:
    """A TokenDataset iterator's resume state at one batch boundary, not yet turned into plain values."""

    def __init__(self, reader: Reader, mark: Mark) -> None:
        self._reader, self.mark = reader, mark

    @property
    def batches(self) -> int:
        return self.mark.batches

    def state_dict(self) -> dict[str, Any]:
        """The resume state (plain values: ``json.dump`` writes it)."""
        it, mark = self._reader, self.mark
        ds = it.ds
        prints = ds._fingerprints
        subs = [encode(part, config=ds._config(), fingerprint=prints[k], layout=it.layout, batches=mark.batches,
                       cursor=global_cursor(it.cursor_stream(k), part), origin=it.origins[k])
                for k, part in enumerate(mark.parts)]
        if ds.weights is None:
            return subs[0]
        return encode_mix(subs, config=ds._config(), layout=it.layout, batches=mark.batches, weights=ds.weights,
                          rows=mark.rows)

    def stats(self) -> dict[str, Any]:
        st = PackStats(**self.mark.stats)
        out = {**st.as_dict(), "crop_fraction": st.crop_fraction, "batches": self.mark.batches,
               "buffered_docs": self.mark.buffered_docs}
        ds = self._reader.ds
        if ds.weights is not None:
            tokens = [p.stats["tokens_out"] for p in self.mark.parts]
            out["sources"] = [{"source": s.label, "weight": w, "tokens": n, "share": n / max(sum(tokens), 1),
                               "rows": rows}
                              for s, w, n, rows in zip(ds.sources, ds.weights, tokens, self.mark.rows, strict=True)]
        return out


def global_cursor(s: Stream, part: Part) -> Cursor:
    """The global cursor after the row groups this reader has moved into its buffer whole at ``part``, assuming
    every reader got as far (``s``: this reader's stream, never started)."""
    return s.cursor(part.position) if part.position is not None else s.cursor()


def data_fingerprint(plan: Plan) -> str:
    """The split's files as the catalog lists them (paths, sizes, checksums), hashed: documents are named by
    (shard, row group, number), which mean the same documents only over the same files."""
    files = [(f.path, f.size, f.sha256, f.md5) for f in (plan.files[s] for s in plan.shards)]
    return hashlib.sha256(json.dumps([plan.options.split, files]).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """The tokenizer's ids (BOS-first, as the loader encodes) on the identity sample, hashed: a resumed
    reader tokenizes its buffered documents again, which gives the same tokens only with the same ids."""
    dtype = token_dtype(tokenizer.vocab_size)
    tokens, lengths = doc_arrays(tokenizer, list(SAMPLE), dtype)
    h = hashlib.sha256(f"{tokenizer.vocab_size}/{tokenizer.bos_id}/".encode())
    h.update(tokens.astype("<u4").tobytes())
    h.update(lengths.astype("<u8").tobytes())
    return h.hexdigest()[:16]


def packed_buffer(part: Part) -> str:
    """The buffered documents of ``part`` as ``docrefs`` text (a feed not rebuilt yet: the runs it was loaded from)."""
    if part.runs is not None:
        return pack(part.runs)
    return pack([Run((tag.epoch, tag.shard, tag.row_group), ids) for _, _, _, tag, ids in part.buffer.parts])


def encode(part: Part | None, *, config: dict[str, Any], fingerprint: dict[str, str], layout: Layout | None,
           batches: int, cursor: Cursor | None, origin: Cursor | None) -> dict[str, Any]:
    """The state of one source at ``part`` (None: not started): plain values only (the buffer by reference,
    ``origin``: where the run started, ``cursor``: the global cursor after the row groups taken)."""
    return {
        "version": STATE_VERSION,
        "config": dict(config),
        "fingerprint": dict(fingerprint),
        "layout": None if layout is None else list(layout),
        "position": part.position.to_list() if part and part.position else None,
        "skip": part.skip if part else 0,
        "partial": part.partial.to_list() if part and part.partial else None,
        "docs": packed_buffer(part) if part else pack([]),
        "cursor": None if cursor is None else cursor.to_list(),
        "origin": None if origin is None else origin.to_list(),
        "stats": dict(part.stats) if part else PackStats().as_dict(),
        "batches": batches,
    }


def encode_mix(subs: list[dict[str, Any]], *, config: dict[str, Any], layout: Layout | None, batches: int,
               weights: tuple[float, ...], rows: tuple[int, ...]) -> dict[str, Any]:
    """A mix's state: the sources' states (``encode``) under one config, layout and batch count."""
    return {"version": STATE_VERSION, "config": dict(config), "layout": None if layout is None else list(layout),
            "batches": batches, "mix": {"weights": list(weights), "rows": list(rows)}, "sources": subs}


def empty(config: dict[str, Any], fingerprints: list[dict[str, str]]) -> dict[str, Any]:
    """The state of a dataset that has not started (no layout, nothing buffered; one fingerprint per source)."""
    subs = [encode(None, config=config, fingerprint=f, layout=None, batches=0, cursor=None, origin=None)
            for f in fingerprints]
    if len(subs) == 1:
        return subs[0]
    return encode_mix(subs, config=config, layout=None, batches=0, weights=(), rows=(0,) * len(subs))


def carried_runs(old: dict[str, Any]) -> list[Run]:
    """An old reader's buffered documents that an elastic resume carries over: all but those of the row
    group it was in the middle of (``partial``), which the new run reads again whole."""
    partial = old.get("partial")
    return [r for r in unpack(old["docs"]) if partial is None or list(r.tag) != partial[:3]]


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
