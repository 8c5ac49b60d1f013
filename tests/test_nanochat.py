"""nanostream.nanochat driven exactly as nanochat's scripts/base_train.py drives its loader.

nanochat's folder layout (``NANOCHAT_BASE_DIR/base_data_climbmix/shard_XXXXX.parquet``, the last
file validation) and nanochat's tokenizer object, built as nanochat builds it (rustbpe training, a
tiktoken ``Encoding`` of nanochat's pattern and special tokens: ``tests/nanochat_like.py``). The loop
is base_train.py's: the first batch fetched before the loop, the checkpoint of a step written (with
``json.dump``, rank 0 only) before training on the batch prefetched for it, every micro-step
prefetching the next; the resumed run starts at the checkpoint's step.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nanostream import Source
from nanostream.config import Config
from nanostream.errors import LoaderError
from nanostream.loader.docrefs import Run, pack, unpack
from nanostream.nanochat import (
    tokenizing_distributed_data_loader_bos_bestfit,
    tokenizing_distributed_data_loader_with_state_bos_bestfit,
)
from nanostream.shards import shard_name

from datagen import doc_id, doc_text, make_big_shard, make_shards
from nanochat_like import NanochatLikeTokenizer

B, T, ACCUM, BUFFER = 4, 64, 2, 32  # as tests/nanochat_worker.py
WORKER = Path(__file__).with_name("nanochat_worker.py")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nanochat base folder: base_data_climbmix holds shards 0..3 (3 is validation), no record."""
    root = tmp_path_factory.mktemp("nanochat")
    make_shards(root / "base_data_climbmix", 4, row_groups=8, rows=12, record=False)
    return root


@pytest.fixture(scope="module")
def tok() -> NanochatLikeTokenizer:
    return NanochatLikeTokenizer.train_from_iterator([doc_text(s, g, r) for s in range(3) for g in range(8)
                                                      for r in range(12)], 300)


@pytest.fixture
def env(base: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NANOCHAT_DATASET"):
        monkeypatch.delenv(k, raising=False)
    return base


def docs_of(tok: NanochatLikeTokenizer, x: torch.Tensor) -> set[tuple[int, int, int]]:
    """The datagen ids of the documents (or the heads of cropped ones, where long enough) in ``x``'s rows."""
    bos, out = tok.get_bos_token_id(), set()
    for row in x.tolist():
        starts = [i for i, t in enumerate(row) if t == bos] + [len(row)]
        for a, b in itertools.pairwise(starts):
            try:
                out.add(doc_id(tok.decode(row[a + 1:b])))
            except ValueError:  # a crop shorter than its id
                pass
    return out


def train(loader, steps: int, start: int = 0, save: int = -1) -> tuple[list[torch.Tensor], dict | None]:
    """base_train.py's loop: (the batches trained on, from ``start``; the meta saved at step ``save``)."""
    x, y, dataloader_state_dict = next(loader)  # kick off load of the very first batch of data
    trained, meta, step = [], None, start
    while True:
        last_step = step == steps
        if step == save:  # save_checkpoint(...): the meta dict goes through json.dump / json.load
            meta = json.loads(json.dumps({"step": step, "dataloader_state_dict": dataloader_state_dict}))
        if last_step:
            break
        for _ in range(ACCUM):
            trained.append(torch.cat([x, y[:, -1:]], dim=1))  # "loss = model(x, y)"
            x, y, dataloader_state_dict = next(loader)  # prefetch the next batch while the GPU is busy
        step += 1
    loader.close()
    return trained, meta


def test_base_train_loop_resumes_with_exactly_the_batches_of_the_uninterrupted_run(env: Path, tok) -> None:
    loader = tokenizing_distributed_data_loader_with_state_bos_bestfit(tok, B, T, "train", device="cpu",
                                                                       buffer_size=BUFFER)
    x, y, state = next(loader)  # a triple, on the device, int64 (B, T), y = x shifted by one
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
    assert torch.equal(x[:, 1:], y[:, :-1]) and (x[:, 0] == tok.get_bos_token_id()).all()
    for _ in range(7):
        x, y, state = next(loader)
    loader.close()
    assert {k: type(state[k]) for k in ("epoch", "pq_idx", "rg_idx")} == dict.fromkeys(("epoch", "pq_idx",
                                                                                       "rg_idx"), int)
    assert json.loads(json.dumps(state)) == state  # plain values
    steps = 12
    full, _ = train(tokenizing_distributed_data_loader_with_state_bos_bestfit(
        tok, B, T, "train", device="cpu", buffer_size=BUFFER), steps)
    for save in (0, 5):
        _, meta = train(tokenizing_distributed_data_loader_with_state_bos_bestfit(
            tok, B, T, "train", device="cpu", buffer_size=BUFFER), steps, save=save)
        assert meta is not None
        resumed, _ = train(tokenizing_distributed_data_loader_with_state_bos_bestfit(
            tok, B, T, "train", device="cpu", buffer_size=BUFFER, resume_state_dict=meta["dataloader_state_dict"]),
            steps, start=save)
        assert len(resumed) == len(full) - save * ACCUM
        assert all(torch.equal(a, b) for a, b in zip(resumed, full[save * ACCUM:], strict=True))
    assert {d[0] for x in full for d in docs_of(tok, x[:, :-1])} == {0, 1, 2}  # the train files: all but the last


def test_validation_through_the_plain_function(env: Path, tok) -> None:
    """build_val_loader: the plain function yields (x, y) pairs of the last file only."""
    val = tokenizing_distributed_data_loader_bos_bestfit(tok, B, T, split="val", device="cpu")
    batches = [next(val) for _ in range(6)]
    val.close()
    assert all(len(b) == 2 and b[0].shape == (B, T) and torch.equal(b[0][:, 1:], b[1][:, :-1]) for b in batches)
    shards = {d[0] for x, _ in batches for d in docs_of(tok, x)}
    assert shards == {3}


def test_folders_as_nanochat_finds_them(tmp_path: Path, tok, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config.from_env({"NANOCHAT_BASE_DIR": str(tmp_path)})
    assert cfg.nanochat_data_dir() == tmp_path / "base_data_climbmix"  # neither there: where a download goes
    (tmp_path / "base_data").mkdir()
    assert cfg.nanochat_data_dir() == tmp_path / "base_data"  # no ClimbMix folder: the legacy one
    assert cfg.nanochat_data_dir(reading=False) == tmp_path / "base_data_climbmix"  # where a download goes
    (tmp_path / "base_data_climbmix").mkdir()
    assert cfg.nanochat_data_dir() == tmp_path / "base_data_climbmix"
    assert Config.from_env({"NANOCHAT_DATASET": "fwe"}).nanochat_data_dir() == \
        Path("~/.cache/nanochat/datasets/fwe").expanduser()  # nanochat's PR #800
    make_shards(tmp_path / "datasets" / "mine", 3, row_groups=2, rows=12, record=False)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("NANOCHAT_DATASET", "mine")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    loader = tokenizing_distributed_data_loader_bos_bestfit(tok, B, T, "val", device="cpu")
    x, _ = next(loader)
    loader.close()
    assert {d[0] for d in docs_of(tok, x)} == {2}


def test_a_state_of_other_data_or_another_tokenizer_is_refused_in_one_line(env: Path, tok, tmp_path: Path) -> None:
    loader = tokenizing_distributed_data_loader_with_state_bos_bestfit(tok, B, T, "train", device="cpu",
                                                                       buffer_size=BUFFER)
    for _ in range(3):
        _, _, state = next(loader)
    loader.close()
    other_tok = NanochatLikeTokenizer.train_from_iterator([doc_text(9, g, r, words=5) for g in range(4)
                                                           for r in range(12)], 300)  # same size, other merges
    cases = [(other_tok, {}, "another tokenizer"),
             (tok, {"data": make_shards(tmp_path / "more", 5, row_groups=8, rows=12, record=False)[0].parent},
              "other data")]
    for t, data, match in cases:
        with pytest.raises(LoaderError, match=match) as info:
            tokenizing_distributed_data_loader_with_state_bos_bestfit(t, B, T, "train", device="cpu",
                                                                      buffer_size=BUFFER, resume_state_dict=state, **data)
        assert "\n" not in str(info.value)
    with pytest.raises(LoaderError, match="nanochat's own loader state"):  # a checkpoint of nanochat's loader
        tokenizing_distributed_data_loader_with_state_bos_bestfit(tok, B, T, "train", device="cpu",
                                                                  resume_state_dict={"pq_idx": 3, "rg_idx": 8,
                                                                                     "epoch": 1})
    ranks = state["nanostream"]["ranks"]
    other = {**state, "nanostream": {**state["nanostream"], "world_size": 2, "ranks": [None, ranks[0]]}}
    with pytest.raises(LoaderError, match=r"only rank \[1\]"):  # another rank's own state
        tokenizing_distributed_data_loader_with_state_bos_bestfit(tok, B, T, "train", device="cpu",
                                                                  resume_state_dict=other)


def test_rank_0_state_of_8_ranks_fits_64_kb(env: Path, tok) -> None:
    """The worst case for the state's size: every buffered document (buffer_size 1000 and a refill of 127
    more) from another row group, of ClimbMix's 6,542 train shards, in each of 8 ranks' states."""
    loader = tokenizing_distributed_data_loader_with_state_bos_bestfit(tok, 32, 2048, "train", device="cpu")
    _, _, state = next(loader)
    _, _, state = next(loader)
    loader.close()
    rng = np.random.default_rng(0)
    worst = pack([Run((int(rng.integers(0, 4)), int(rng.integers(0, 6542)), int(rng.integers(0, 64))),
                      np.array([rng.integers(0, 1024)])) for _ in range(1127)])
    one = state["nanostream"]["ranks"][0]
    ranks = [{**one, "layout": [r, 8, 8], "docs": worst} for r in range(8)]
    size = len(json.dumps({**state, "nanostream": {**state["nanostream"], "world_size": 8, "ranks": ranks}}))
    assert size <= 64 * 1024, size


@pytest.mark.slow
def test_two_ranks_under_torchrun_resume_every_rank_from_rank_0s_state(env: Path, tok, tmp_path: Path) -> None:
    """2 ranks (gloo) train 10 steps, rank 0 checkpoints step 4; 2 ranks resume from that one JSON state
    (without a process group: through torchrun's store, as nanochat runs on CPU) and train on exactly the
    batches of the uninterrupted run from step 4 on, each rank, with the same states. At world size 1 the
    same state resumes elastically: the documents the two ranks had buffered are trained on."""
    tok.save(tmp_path / "tokenizer")
    torchrun = Path(sys.executable).with_name("torchrun")
    child_env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, extra in (("full", ["--save", "4", "--process-group"]), ("resumed", ["--resume", None])):
        out = tmp_path / name
        out.mkdir()
        extra = [str(tmp_path / "full" / "meta.json") if a is None else a for a in extra]
        cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(WORKER), str(tmp_path / "tokenizer"), str(out),
               "10", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100, env=child_env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[name] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for r in range(2):
        full = [h for step, h in runs["full"][r]["trained"] if step >= 4]
        assert [h for _, h in runs["resumed"][r]["trained"]] == full and len(full) == 6 * ACCUM
    full_states, resumed_states = runs["full"][0]["states"], runs["resumed"][0]["states"]
    assert sorted(resumed_states, key=int) == [str(s) for s in range(4, 11)]
    assert all(resumed_states[k] == full_states[k] for k in resumed_states)
    meta = json.loads((tmp_path / "full" / "meta.json").read_text())
    state = meta["dataloader_state_dict"]
    assert [s["layout"] for s in state["nanostream"]["ranks"]] == [[0, 2, 2], [1, 2, 2]]
    buffered = {(r.tag[1], r.tag[2], int(i)) for s in state["nanostream"]["ranks"]
                for r in unpack(s["docs"]) for i in r.ids}
    alone = tokenizing_distributed_data_loader_with_state_bos_bestfit(tok, B, T, "train", device="cpu",
                                                                      buffer_size=BUFFER, resume_state_dict=state)
    seen = set().union(*(docs_of(tok, next(alone)[0]) for _ in range(20)))
    alone.close()
    assert len(buffered & seen) > 0.5 * len(buffered)


def nanochat_listing(folder: Path) -> list[str]:
    """nanochat/dataset.py's list_parquet_files, reimplemented: every *.parquet not ending in .tmp, sorted."""
    return sorted(f for f in os.listdir(folder) if f.endswith(".parquet") and not f.endswith(".tmp"))


def test_nanochat_reads_exactly_the_verified_shards_of_a_fetch_killed_mid_download(tmp_path: Path) -> None:
    """`nanostream fetch --nanochat` (ClimbMix's numbered shards, from a local server) is killed with SIGKILL
    while shards are downloading: nanochat's listing of its folder is exactly the complete, verified
    shards, no part, state, lock or record file. Run again to the end: the listing ends with the
    validation shard, as nanochat's own download leaves it."""
    remote, n = tmp_path / "remote", 6  # shards 0..4 train, 5 validation
    remote.mkdir()
    for i in range(n):
        make_big_shard(remote / shard_name(i), i, 0.6)
    srv = subprocess.Popen([sys.executable, str(Path(__file__).with_name("servers.py")), str(remote), "--rate",
                            "1500000"], stdout=subprocess.PIPE, text=True)
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(tmp_path / "nanochat")}
    folder = tmp_path / "nanochat" / "base_data_climbmix"
    try:
        url = srv.stdout.readline().strip()
        args = [sys.executable, "-m", "nanostream.cli", "fetch", "--nanochat", "-n", "3", "--base-url", url,
                "--max-shard", str(n - 1), "--workers", "2", "--quiet"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and not (
                list(folder.glob("shard_*.parquet")) and list(folder.glob(".nanostream.*.part"))
                and list(folder.glob(".nanostream.*.state"))):  # a part file is made just before its state
            time.sleep(0.01)
        proc.kill()
        proc.communicate(timeout=30)
        names = os.listdir(folder)
        assert any(x.endswith(".part") for x in names) and any(x.endswith(".state") for x in names)
        listed = nanochat_listing(folder)
        assert listed and listed == sorted(x for x in names if x.startswith("shard_"))
        for name in listed:  # complete and verified: the source's bytes
            assert (folder / name).read_bytes() == (remote / name).read_bytes()
        rerun = subprocess.run(args, capture_output=True, text=True, timeout=100, env=env)
        assert rerun.returncode == 0, rerun.stderr
    finally:
        srv.terminate()
        srv.wait(timeout=10)
        srv.stdout.close()
    listed = nanochat_listing(folder)
    assert listed == [shard_name(i) for i in (0, 1, 2, n - 1)]  # -n 3, and the validation shard last
    assert all((folder / x).read_bytes() == (remote / x).read_bytes() for x in listed)


def test_downloads_while_training_land_in_nanochats_folder(env: Path, tok, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Opt in with ``num_shards=`` (here from a local server standing in for the Hub): the loader starts
    on an empty nanochat folder, downloads into it while yielding, and nanochat's own listing of the
    folder then holds only complete, verified shards."""
    remote = tmp_path / "remote"
    make_shards(remote, 4, row_groups=8, rows=12, record=False)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "fresh"))
    srv = subprocess.Popen([sys.executable, str(Path(__file__).with_name("servers.py")), str(remote)],
                           stdout=subprocess.PIPE, text=True)
    try:
        url = srv.stdout.readline().strip()
        loader = tokenizing_distributed_data_loader_with_state_bos_bestfit(
            tok, B, T, "train", device="cpu", buffer_size=BUFFER, data=Source(url, max_shard=3, num_shards=3))
        seen = set().union(*(docs_of(tok, next(loader)[0]) for _ in range(30)))
        loader.close()
    finally:
        srv.terminate()
        srv.wait(timeout=10)
        srv.stdout.close()
    folder = tmp_path / "fresh" / "base_data_climbmix"
    assert {d[0] for d in seen} == {0, 1, 2}
    listed = nanochat_listing(folder)
    assert listed == [shard_name(i) for i in range(3)]
    assert all((folder / x).read_bytes() == (remote / x).read_bytes() for x in listed)
