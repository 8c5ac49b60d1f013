"""The fast encoder: gigatoken (Rust BPE), as flat arrays, with its memory bounded.

``FastEncoder.encode_flat(texts)`` returns ``(tokens, offsets)``: every text's ids in one
``uint32`` array and ``offsets`` (``int64``, ``len(texts) + 1``) where text ``i`` is
``tokens[offsets[i]:offsets[i+1]]`` -- gigatoken's own output arrays, no Python ints.

* No special token is ever registered with it (a ``.tiktoken`` build gets none; an HF
  ``tokenizer.json`` has its special added tokens removed first), so document text is
  encoded as text: the loader places BOS itself.
* gigatoken caches the encoding of every distinct piece of text it meets and never shrinks
  that cache, so the encoder is rebuilt from its source after every ``REBUILD_CHARS``
  characters it encoded (a build takes 10 ms for an 8k vocabulary, 80 ms for cl100k's 100k), and
  the freed cache is returned to the OS (``malloc_trim`` on glibc): memory stays bounded over a
  run of any length. Threads already encoding finish on the encoder they started with.
* It is called with ``parallel=False`` on the caller's threads (it releases the GIL): no
  process-wide thread pool, which also keeps it safe in forked DataLoader workers.
* ``digit_cut``: nanochat's ``\\p{N}{1,2}`` pattern runs on the GPT-4 scheme after cutting
  digit runs into pairs (``schemes.digit_pieces``).

gigatoken is imported here only (``available()``); without it tokenizers use their reference
library. Nothing here decides whether the fast encoder may be used: ``identity.py`` checks it.
"""

from __future__ import annotations

import ctypes
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .schemes import digit_pieces

REBUILD_CHARS = 32_000_000  # characters encoded between two rebuilds of the encoder (bounds its cache)


def available() -> bool:
    """Whether gigatoken (and awkward, for its arrays) can be imported."""
    try:
        import awkward  # noqa: F401
        import gigatoken  # noqa: F401
    except ImportError:
        return False
    return True


class FromRanks:
    """Builds gigatoken encoders for ``ranks_file`` (``.tiktoken`` contents) and ``scheme``, no specials."""

    def __init__(self, ranks_file: bytes, scheme: str) -> None:
        self.ranks_file, self.scheme = ranks_file, scheme

    def __call__(self) -> Any:
        import gigatoken

        with tempfile.TemporaryDirectory(prefix="nanostream-ranks-") as tmp:
            path = Path(tmp) / "ranks.tiktoken"
            path.write_bytes(self.ranks_file)
            return gigatoken.Tokenizer.from_tiktoken(str(path), pretokenizer=self.scheme, special_tokens=None).backend


class FromJson:
    """Builds gigatoken encoders for a ``tokenizer.json`` (already stripped of its special added tokens)."""

    def __init__(self, data: str) -> None:
        self.data = data

    def __call__(self) -> Any:
        import gigatoken

        return gigatoken.Tokenizer.from_json(self.data).backend


def _return_freed_memory() -> None:
    """glibc's ``malloc_trim(0)``: freed heap pages go back to the OS (a freed encode cache otherwise stays
    resident, and RSS creeps up by its size at each rebuild). Nothing elsewhere."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL(None).malloc_trim if sys.platform.startswith("linux") else False
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim: Any = None


class FastEncoder:
    """A gigatoken encoder, rebuilt every ``rebuild_chars`` characters; thread-safe. Pickles as its
    builder (DataLoader workers build their own)."""

    def __init__(self, build: Callable[[], Any], *, digit_cut: bool = False,
                 rebuild_chars: int = REBUILD_CHARS) -> None:
        self._build, self.digit_cut, self.rebuild_chars = build, digit_cut, rebuild_chars
        self._lock = threading.Lock()
        self._backend: Any = None
        self._chars = 0
        self.builds = 0
        self._current(0)  # build now: a broken vocabulary fails at load time

    def _current(self, chars: int) -> Any:
        with self._lock:
            if self._backend is None or self._chars >= self.rebuild_chars:
                rebuilt = self._backend is not None
                self._backend, self._chars = None, 0  # the old encoder and its cache are freed here ...
                self._backend = self._build()
                self.builds += 1
                if rebuilt:
                    _return_freed_memory()  # ... and handed back to the OS, not kept by the allocator
            self._chars += chars
            return self._backend

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        import awkward as ak

        texts = texts if isinstance(texts, list) else list(texts)
        cut = digit_pieces(texts) if self.digit_cut else None
        pieces = texts if cut is None else cut[0]
        backend = self._current(sum(map(len, pieces)))
        layout = ak.to_layout(backend.encode_batch(pieces, parallel=False))
        tokens, offsets = np.asarray(layout.content.data), np.asarray(layout.offsets.data)
        if cut is not None:  # each text's pieces are consecutive: keep the offsets at text boundaries
            ends = np.cumsum(np.asarray(cut[1], dtype=np.int64))
            offsets = np.concatenate([offsets[:1], offsets[ends]])
        return tokens, offsets

    def __getstate__(self) -> dict[str, Any]:
        return {"build": self._build, "digit_cut": self.digit_cut, "rebuild_chars": self.rebuild_chars}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["build"], digit_cut=state["digit_cut"], rebuild_chars=state["rebuild_chars"])
