"""The reference best-fit loader that ``TokenDataset`` is measured against (bench only).

A faithful re-implementation of the straightforward loop described in issue 4 (the
shape of nanochat's BOS-aligned best-fit loader): everything runs in the consuming
thread. A piece of 128 documents (nanochat's tokenizer batch, ``PIECE_DOCS``) is
tokenized when the buffer (a Python list of token lists) runs low; for every placement the whole list is scanned for the longest document that
fits, which is copied into the row tensor with ``torch.tensor``; when none fits, the
shortest is cropped to fill the row. Same rule and tie-breaking as
``nanostream.loader.packing.BestFitPacker``, so both produce the same batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from nanostream.loader.feed import PIECE_DOCS
from nanostream.text.tokenizer import Tokenizer


def reference_batches(groups: Iterable[list[str]], tokenizer: Tokenizer, batch_size: int, seq_len: int,
                      buffer_docs: int = 1000, piece: int = PIECE_DOCS) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(inputs, targets)`` from row groups of texts until a full batch can no longer be made."""
    bos = tokenizer.bos_id
    cap = seq_len + 1
    it = (texts[a:a + piece] for texts in groups for a in range(0, len(texts), piece))
    buf: list[list[int]] = []
    exhausted = False
    while True:
        rows = torch.empty((batch_size, cap), dtype=torch.long)
        for b in range(batch_size):
            pos = 0
            while pos < cap:
                while len(buf) < buffer_docs and not exhausted:
                    texts = next(it, None)
                    if texts is None:
                        exhausted = True
                    else:
                        buf.extend([bos, *ids] for ids in tokenizer.encode_batch(texts))
                if not buf:
                    return
                room = cap - pos
                best, best_len = -1, 0
                for i, doc in enumerate(buf):
                    n = len(doc)
                    if best_len < n <= room:
                        best, best_len = i, n
                if best >= 0:
                    doc = buf.pop(best)
                else:
                    short = min(range(len(buf)), key=lambda i: len(buf[i]))
                    doc = buf.pop(short)[:room]
                rows[b, pos : pos + len(doc)] = torch.tensor(doc, dtype=torch.long)
                pos += len(doc)
        yield rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
