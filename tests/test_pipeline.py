"""pipeline.py: batches are packed and finished on the producer thread, ahead of ``next()``; errors
from any stage reach the consumer; no thread outlives the iterator."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from nanostream import ReadAhead, threads_for
from nanostream.errors import LoaderError
from nanostream.loader.dataset import HostSink
from nanostream.loader.threads import set_loader_idle
from test_loader import assert_same_batches, ids_of, make, our_threads, run_ahead, segments

from datagen import make_shards


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    make_shards(folder, 4, row_groups=8, rows=12)
    return folder


class RecordingSink(HostSink):
    """The CPU sink, recording which thread runs each step; optionally failing in ``finish``."""

    def __init__(self, batch_size: int, row_len: int, fail_at: int = 0) -> None:
        super().__init__(batch_size, row_len)
        self.threads: dict[str, set[str]] = {"rows": set(), "finish": set(), "ready": set()}
        self.finished, self.fail_at = 0, fail_at

    def rows(self) -> np.ndarray:
        self.threads["rows"].add(threading.current_thread().name)
        return super().rows()

    def finish(self, rows: np.ndarray):
        self.threads["finish"].add(threading.current_thread().name)
        self.finished += 1
        if self.finished == self.fail_at:
            raise LoaderError("sink failed on purpose")
        return super().finish(rows)

    def ready(self, item):
        self.threads["ready"].add(threading.current_thread().name)
        return super().ready(item)


def test_batches_are_finished_on_the_producer_thread_ahead_of_next(data: Path) -> None:
    full = list(make(data, epochs=1))
    ds = make(data, epochs=1, read_ahead=ReadAhead(batches=3))
    sink = RecordingSink(4, 97)
    it = ds._iterate(sink)
    got = [next(it)]
    run_ahead(it)
    assert len(it._out._items) == 3  # three finished batches wait, beyond the one returned
    assert sink.finished == 5  # 1 returned, 3 queued, 1 waiting for room
    assert it.snapshot().batches == 1 and ds.state_dict()["batches"] == 1
    got += list(it)
    assert_same_batches(got, full)
    assert sink.threads == {"rows": {"nanostream-assemble"}, "finish": {"nanostream-assemble"},
                            "ready": {threading.current_thread().name}}
    assert not our_threads()


def test_sink_error_reaches_the_consumer_and_state_stays_exact(data: Path) -> None:
    full = list(make(data, epochs=1))
    ds = make(data, epochs=1)
    it = ds._iterate(RecordingSink(4, 97, fail_at=4))
    head = []
    with pytest.raises(LoaderError, match="on purpose"):
        for batch in it:
            head.append(batch)
    assert len(head) == 3 and not our_threads()
    state = ds.state_dict()
    assert state["batches"] == 3
    fresh = make(data, epochs=1)
    fresh.load_state_dict(state)
    assert_same_batches(head + list(fresh), full)


def test_dropping_a_running_iterator_stops_its_threads(data: Path) -> None:
    it = iter(make(data, epochs=None))
    next(it)
    run_ahead(it)  # producer blocked on a full queue
    names = set(our_threads())
    assert "nanostream-assemble" in names and any(n.startswith("nanostream-encode") for n in names)
    del it
    gc.collect()
    assert not our_threads()


def test_stats_and_state_describe_the_batch_returned_not_the_ones_ahead(data: Path) -> None:
    ds = make(data, epochs=1)
    it = iter(ds)
    x, y = next(it)
    run_ahead(it)
    st = ds.stats()
    assert st["batches"] == 1 and st["tokens_out"] == 4 * 97
    assert torch.equal(x[:, 1:], y[:, :-1])
    it.close()
    assert ds.stats()["batches"] == 1 and ds.state_dict()["batches"] == 1


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_loader_idle_puts_every_loader_thread_under_sched_idle(data: Path) -> None:
    plan = threads_for("cuda", cores=2, loader_idle=True)
    assert plan.loader_idle
    set_loader_idle(True)
    try:
        it = iter(make(data, epochs=None))
        next(it)
        run_ahead(it)
        policies = {t.name: os.sched_getscheduler(t.native_id) for t in threading.enumerate()
                    if t.name.startswith("nanostream")}
        it.close()
    finally:
        set_loader_idle(False)
    assert "nanostream-assemble" in policies and any(n.startswith("nanostream-encode") for n in policies)
    assert any(name.startswith("nanostream-read") or name == "nanostream-loop" for name in policies)
    assert set(policies.values()) == {os.SCHED_IDLE}, policies  # stream threads inherit it
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the training thread keeps its priority


def test_a_rank_short_of_its_count_drains_before_reading_on(data: Path) -> None:
    """epochs=1, but the count (len) asks for more than the epoch packs: every document of the epoch
    is placed before the next epoch's order is read (then its documents come again)."""
    ds = make(data, epochs=1)
    got = list(ds)
    assert len(got) == len(ds) and ds.state_dict()["position"][0] == 1  # it read on into epoch 1
    ids = ids_of(segments(got))
    first_repeat = next(i for i, d in enumerate(ids) if d in ids[:i])
    assert len(set(ids[:first_repeat])) >= len(set(ids)) - 4  # (but the batch it ran out in)
