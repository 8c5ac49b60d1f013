"""device.py: ``to_device`` on CPU and CUDA, the pinned ring, resume through read-ahead, ``threads_for``.

The CUDA tests are marked ``cuda`` and skip without a GPU (``pytest -m cuda`` runs only them).
"""

from __future__ import annotations

import gc
import itertools
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from nanostream import threads_for, to_device
from nanostream.errors import CorruptShardError, LoaderError
from nanostream.loader.device import CudaPrefetcher, PinnedRowsSink
from test_loader import PIN_WARNING, assert_same_batches, corrupt, make, our_threads  # noqa: F401 (fixture)

from datagen import make_shards

CUDA = torch.cuda.is_available()


def cuda_test(fn):
    """Marked ``cuda`` (``pytest -m cuda``) and skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not CUDA, reason="needs a CUDA device")(fn))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    make_shards(folder, 4, row_groups=8, rows=12)
    return folder


def cpu_batches(batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.cpu(), y.cpu()) for x, y in batches]


def test_to_device_cpu_is_free(data: Path) -> None:
    x, y = next(iter(make(data, epochs=1)))
    moved = to_device((x, y), "cpu")
    assert moved[0] is x and moved[1] is y
    ds = make(data, epochs=1)
    it = to_device(ds, "cpu")
    assert type(it).__name__ == "TokenIterator"
    assert next(it)[0].shape == (4, 96)
    it.close()


@pytest.mark.skipif(CUDA, reason="checks the error without a GPU")
def test_cuda_without_a_gpu_is_a_loader_error(data: Path) -> None:
    with pytest.raises(LoaderError, match="CUDA"):
        to_device(make(data, epochs=1), "cuda")
    with pytest.raises(LoaderError, match="CUDA"):
        CudaPrefetcher([torch.zeros(2)], "cuda")
    assert not our_threads()


def test_threads_for() -> None:
    cpu2, cpu16 = threads_for("cpu", cores=2), threads_for("cpu", cores=16)
    assert (cpu2.torch, cpu2.loader) == (1, 1) and (cpu16.torch, cpu16.loader) == (15, 1)
    gpu2, gpu16 = threads_for("cuda", cores=2), threads_for("cuda:1", cores=16)
    assert (gpu2.torch, gpu2.loader) == (1, 1) and (gpu16.torch, gpu16.loader) == (2, 14)
    assert gpu16.device == "cuda" and gpu16.cores == 16
    assert threads_for("cuda", torch_threads=4, cores=16).torch == 4
    here = threads_for()
    assert here.cores >= 1 and here.torch + here.loader >= here.cores


# -- CUDA --------------------------------------------------------------------------------------------

@cuda_test
@pytest.mark.filterwarnings(PIN_WARNING)
def test_cuda_matches_cpu_batches(data: Path) -> None:
    cpu = list(make(data, epochs=1))
    assert_same_batches(cpu_batches(to_device(make(data, epochs=1), "cuda")), cpu)  # the pinned ring
    assert_same_batches(cpu_batches(to_device(iter(make(data, epochs=1)), "cuda")), cpu)  # the prefetch thread
    # two workers interleave two strides: compare with the same DataLoader on CPU
    def loader() -> DataLoader:
        return DataLoader(make(data, epochs=1), batch_size=None, num_workers=2, pin_memory=True)

    want = [(x.clone(), y.clone()) for x, y in loader()]
    assert_same_batches(cpu_batches(to_device(loader(), "cuda")), want)


@cuda_test
def test_cuda_packs_into_a_pinned_ring_on_a_side_stream(data: Path) -> None:
    it = to_device(make(data, epochs=None), "cuda")
    sink = it._sink
    assert isinstance(sink, PinnedRowsSink)
    assert all(t.is_pinned() for t in sink._host)
    ptrs = [t.data_ptr() for t in sink._host]
    assert sink.side != torch.cuda.current_stream()
    for x, y in itertools.islice(it, 3 * len(ptrs)):
        assert x.is_cuda and y.is_cuda and x.is_contiguous() and y.is_contiguous()
        assert x.shape == y.shape == (4, 96) and x.dtype == torch.int64
    assert [t.data_ptr() for t in sink._host] == ptrs  # reused, never reallocated
    it.close()
    assert not our_threads()


@cuda_test
def test_cuda_next_never_syncs_the_host(data: Path) -> None:
    """No hidden sync: after warm-up, the whole data path runs under sync debug mode "error"."""
    for source in (make(data, epochs=None), iter(make(data, epochs=None))):
        it = to_device(source, "cuda")
        for _ in range(3):
            next(it)  # allocations of the first batches
        torch.cuda.set_sync_debug_mode("error")
        try:
            total = torch.zeros((), device="cuda")
            for x, y in itertools.islice(it, 20):
                total += x.float().mean() + y.float().mean()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert torch.isfinite(total)
        it.close()


@cuda_test
@pytest.mark.parametrize("how", ["dataset", "iterator"])
def test_cuda_prefetch_keeps_resume_exact(data: Path, how: str) -> None:
    full = list(make(data, epochs=1))
    ds = make(data, epochs=1)
    it = to_device(ds if how == "dataset" else iter(ds), "cuda")
    head = [tuple(t.cpu() for t in next(it)) for _ in range(5)]
    state = ds.state_dict()  # batches are read ahead; the state must say 5
    assert state["batches"] == 5
    it.close()
    assert ds.state_dict()["batches"] == 5
    fresh = make(data, epochs=1)
    fresh.load_state_dict(state)
    assert_same_batches(head + list(fresh), full)


@cuda_test
def test_cuda_break_and_errors_leave_no_thread(data: Path, request: pytest.FixtureRequest) -> None:
    for source in (make(data), iter(make(data)), (torch.ones(4, 8) for _ in range(50))):
        for i, _ in enumerate(to_device(source, "cuda")):
            if i == 3:
                break
        gc.collect()
        assert not our_threads()
    bad = request.getfixturevalue("corrupt")  # test_loader's corrupt shard folder
    for source in (make(bad, epochs=1), iter(make(bad, epochs=1))):
        with pytest.raises(CorruptShardError):
            for _ in to_device(source, "cuda"):
                pass
        gc.collect()
        assert not our_threads()


@cuda_test
def test_cuda_prefetcher_moves_any_iterable_and_keeps_its_state(data: Path) -> None:
    batches = [(torch.full((3, 5), i), torch.full((3, 5), -i).pin_memory()) for i in range(9)]
    got = list(to_device(iter(batches), "cuda"))
    assert len(got) == 9 and all(torch.equal(x.cpu(), a) and torch.equal(y.cpu(), b)
                                 for (x, y), (a, b) in zip(got, batches, strict=True))

    class Counted:
        def __init__(self) -> None:
            self.n = 0

        def __iter__(self):
            for b in batches:
                self.n += 1
                yield b

        def state_dict(self) -> dict:
            return {"n": self.n}

    pf = to_device(Counted(), "cuda")
    for _ in range(4):
        next(pf)
    assert pf.state_dict() == {"n": 4}  # read ahead, yet the state of the batch last returned
    pf.close()
