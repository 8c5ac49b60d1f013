"""Partial-download files: the two-slot state (newest valid wins), what it rejects, part creation."""

from __future__ import annotations

import json
import os

from nanostream.fetch.partial import SLOT, PartFiles, PartState, create_part, part_path, state_path

URL = "http://127.0.0.1:9/shard_00000.parquet"


def test_newest_valid_slot_wins_and_a_torn_one_falls_back(tmp_path):
    final = tmp_path / "shard_00000.parquet"
    files = PartFiles(final, size=1000)
    files.save(PartState(URL, 1000, missing=[[0, 1000]]))
    files.save(PartState(URL, 1000, missing=[[100, 1000]]))
    files.save(PartState(URL, 1000, missing=[[300, 900]]))
    files.close()
    state, seq = PartState.load(final, URL)
    assert seq == 3 and state.missing == [[300, 900]]
    with open(state_path(final), "r+b") as f:  # a power cut tore the newest slot (seq 3 -> slot 1)
        f.seek(SLOT + 30)
        f.write(b"\xff" * 8)
    state, seq = PartState.load(final, URL)
    assert seq == 2 and state.missing == [[100, 1000]]  # the older slot claims less: still safe
    reopened = PartFiles(final, seq=seq)  # resuming continues the sequence in the other slot
    reopened.save(PartState(URL, 1000, missing=[[500, 1000]]))
    reopened.close()
    assert PartState.load(final, URL)[0].missing == [[500, 1000]]


def test_a_state_for_another_url_or_size_or_format_is_discarded(tmp_path):
    final = tmp_path / "shard_00000.parquet"
    files = PartFiles(final, size=1000)
    files.save(PartState(URL, 1000, missing=[[0, 1000]]))
    files.close()
    assert PartState.load(final, URL + "x") is None
    assert not part_path(final).exists() and not state_path(final).exists()
    create_part(final, 10)
    state_path(final).write_text(json.dumps({"url": URL, "size": 10, "missing": []}))  # the old JSON format
    assert PartState.load(final, URL) is None and not part_path(final).exists()


def test_create_part_reserves_its_size(tmp_path):
    final = tmp_path / "shard_00000.parquet"
    create_part(final, 3 << 20)
    st = os.stat(part_path(final))
    assert st.st_size == 3 << 20 and st.st_blocks * 512 >= 3 << 20  # allocated, not sparse
