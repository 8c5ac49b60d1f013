"""The tail of a fetch: once no file is queued, an idle worker splits the range with the most bytes left."""

from __future__ import annotations

from .jobs import Job, Segment
from .ranges import Meter


def min_piece(meter: Meter) -> int:
    """Smallest range worth a request of its own: one round trip of one connection's bytes (``L`` bytes
    take ``L/r`` on one connection, ``rtt + L/2r`` split in two: the split wins once ``L/2 > r * rtt``)."""
    if not meter.rate:
        return 512 << 10
    return int(min(max(meter.rate * meter.rtt, 64 << 10), 16 << 20))


def split_tail(active: list[Job], floor: int) -> tuple[Job, Segment] | None:
    """Split the active range with the most bytes left to receive; return the new back half
    (marked active for the caller), or None when no range has ``2 * floor`` bytes left."""
    best: tuple[int, Job, Segment] | None = None
    for job in active:
        if job.finalizing:
            continue
        for seg in job.segments:
            left = seg.left()
            if seg.active and left >= 2 * floor and (best is None or left > best[0]):
                best = (left, job, seg)
    if best is None:
        return None
    left, job, seg = best
    assert seg.end is not None
    new = Segment(seg.end - left // 2, seg.end)
    seg.end = new.pos
    new.active = True
    job.segments.append(new)
    return job, new
