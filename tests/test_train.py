"""The demo trainer (``demo/``) and ``make train-cpu``: a tiny real run, and SOURCE selection.

Everything runs offline on 127.0.0.1: the sample source is a real ``nanostream serve``
child process, the "Hub" is an aiohttp app serving shards under the Hub's URL layout
and recording every request. The sample folder is pre-filled with small generated
shards (``datagen``) so no test pays for building the real sample corpus.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow
import pytest
import torch
from aiohttp import web

from nanostream.config import Config, get_dataset
from nanostream.errors import ConfigError, FetchError
from nanostream.serve.server import make_app
from nanostream.shards import list_shards, shard_name
from nanostream.text.tokenizer import ByteTokenizer

from datagen import make_shards, write_shard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `demo` lives beside src/, not inside the package

from demo import source  # noqa: E402
from demo.gpt import GPT, GPTConfig, bits_per_byte  # noqa: E402
from demo.train import build_parser, token_bytes, train  # noqa: E402

TINY = ["--steps", "3", "--depth", "1", "--batch", "2", "--seq-len", "32", "--shards", "1", "--vocab", "byte"]
MAKE_TINY = ["STEPS=3", "DEPTH=1", "BATCH=2", "SEQ_LEN=32", "SHARDS=1", "VOCAB=byte"]
CLOSED = "http://127.0.0.1:9"  # nothing listens on the discard port: connection refused at once
HUB = get_dataset("fineweb-edu-100b")


def fill_sample(base: Path, shards: int = 2) -> Path:
    """Pre-fill ``BASE/sample-src`` as the sample would be (``shards`` files, last = val)."""
    return make_shards(base / "sample-src", shards, row_groups=4, rows=64)[0].parent


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty NANOSTREAM_BASE_DIR with a small sample, and torch/pyarrow thread counts restored."""
    root = tmp_path / "base"
    fill_sample(root)
    monkeypatch.setenv("NANOSTREAM_BASE_DIR", str(root))
    for knob in ("SOURCE", "DEVICE", "HF_TOKEN"):
        monkeypatch.delenv(knob, raising=False)
    threads, arrow = torch.get_num_threads(), pyarrow.cpu_count()
    yield root
    torch.set_num_threads(threads)
    pyarrow.set_cpu_count(arrow)


class FakeHub:
    """The Hub's resolve URLs for the default dataset, over a local folder; records each request."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[tuple[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> FakeHub:
        @web.middleware
        async def record(request: web.Request, handler):
            self.requests.append((request.method, request.path))
            return await handler(request)

        app = web.Application(middlewares=[record])
        app.add_subapp(f"/datasets/{HUB.repo}/resolve/main", make_app(self.folder))
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def hub(tmp_path: Path):
    folder = tmp_path / "hub"
    folder.mkdir()
    for index in (0, HUB.max_shard):  # one train shard and the validation shard
        write_shard(folder / shard_name(index), index, row_groups=4, rows=64)
    server = await FakeHub(folder).start()
    try:
        yield server
    finally:
        await server.aclose()


async def run_make(*assignments: str, env_extra: dict[str, str]) -> tuple[int, str, str]:
    """``make -C ROOT train-cpu VAR=...`` with this interpreter, skipping ``setup`` (the venv is ready)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE", "DEVICE", "MAKEFLAGS", "MFLAGS")}
    env.update(env_extra)
    proc = await asyncio.create_subprocess_exec(
        make, "--no-print-directory", "-s", "-C", str(ROOT), "-o", "setup", "train-cpu", f"PY={sys.executable}",
        *assignments, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=100)
    return proc.returncode or 0, out.decode(), err.decode()


def test_tiny_run_from_sample_through_loopback_server(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["--source", "sample", "--steps", "20", "--depth", "2", "--batch", "4",
                                      "--seq-len", "64", "--shards", "1", "--vocab", "300", "--lr", "1e-2",
                                      "--warmup", "3", "--log-every", "5", "--eval-batches", "2",
                                      "--sample-tokens", "8", "--threads", "1"])
    result = train(args, Config.from_env())
    losses = result["losses"]
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert result["last_loss"] < 0.9 * result["first_loss"], losses
    assert math.isfinite(result["val_bpb"]) and result["val_bpb"] > 0 and result["val_batches"] == 2
    assert 0 <= result["data_wait_pct"] < 100
    # the data took the real path: fetched over HTTP into BASE/data/sample, identical to what was served
    assert list_shards(base / "data" / "sample") == [0, 1]
    assert (base / "data" / "sample" / "shard_00000.parquet").read_bytes() == \
        (base / "sample-src" / "shard_00000.parquet").read_bytes()
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("nanostream: training on the offline sample corpus (SOURCE=sample)")
    assert "step    20/20 | loss" in out and "data wait" in out and "bits per byte" in out
    assert "tokenizer: vocab 300, trained on" in out
    # run twice: the tokenizer for this corpus is reused, and the second run works the same
    again = train(args, Config.from_env())
    assert "tokenizer: vocab 300, loaded" in capsys.readouterr().out
    assert again["losses"][0] == pytest.approx(losses[0], rel=1e-4)  # same seed, same data, same start


async def test_make_train_cpu_on_a_hub_dataset_url(base: Path, tmp_path: Path) -> None:
    """``make train-cpu DATASET=hf://datasets/ORG/NAME``: any parquet dataset, listed once, pinned, fetched
    while streamed; names with a split word decide train and validation (SOURCE is not used)."""
    from hubserver import HubServer

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    write_shard(repo / "data" / "train-00000.parquet", 0, row_groups=4, rows=64)
    write_shard(repo / "data" / "validation-00000.parquet", 1, row_groups=2, rows=64)
    async with HubServer() as hub:
        sha = hub.add_repo("org/corpus", repo)
        code, out, err = await run_make("DATASET=hf://datasets/org/corpus", "STEPS=3", "DEPTH=1", "BATCH=2",
                                        "SEQ_LEN=32", "SHARDS=1", "VOCAB=byte",
                                        env_extra={"HF_ENDPOINT": hub.url, "NANOSTREAM_BASE_DIR": str(base)})
    assert code == 0, err
    assert "data: --dataset hf://datasets/org/corpus" in out and "step     3/3" in out, out
    folder = base / "data" / "hf" / "org" / "corpus"
    for name in ("train-00000.parquet", "validation-00000.parquet"):
        assert (folder / "data" / name).read_bytes() == (repo / "data" / name).read_bytes()
    assert sha in (folder / ".nanostream.json").read_text()  # pinned to the commit listed once


async def test_make_train_cpu_on_a_weighted_mix(base: Path, tmp_path: Path) -> None:
    """``make train-cpu MIX="A=0.7,B=0.3"``: two local folders mixed by token shares (SOURCE is not used)."""
    for name, shard in (("web", 0), ("code", 5)):
        (tmp_path / name).mkdir()
        write_shard(tmp_path / name / "train-00000.parquet", shard, row_groups=4, rows=64)
        write_shard(tmp_path / name / "validation-00000.parquet", shard + 1, row_groups=2, rows=64)
    mix = f"{tmp_path / 'web'}=0.7,{tmp_path / 'code'}=0.3"
    code, out, err = await run_make(f"MIX={mix}", "STEPS=3", "DEPTH=1", "BATCH=2", "SEQ_LEN=32", "SHARDS=1",
                                    "VOCAB=byte", env_extra={"NANOSTREAM_BASE_DIR": str(base)})
    assert code == 0, err
    assert f"data: --mix {mix}" in out and "step     3/3" in out and "validation:" in out, out


async def test_make_sample_never_touches_the_hub(base: Path, hub: FakeHub) -> None:
    rc, out, err = await run_make("SOURCE=sample", *MAKE_TINY, env_extra={"HF_ENDPOINT": hub.url})
    assert rc == 0, err
    assert hub.requests == []
    assert out.splitlines()[0].startswith("nanostream: training on the offline sample corpus (SOURCE=sample).")
    assert "step     3/3" in out and "validation:" in out


async def test_make_auto_uses_the_hub_when_it_answers(base: Path, hub: FakeHub) -> None:
    rc, out, err = await run_make("SOURCE=auto", *MAKE_TINY, env_extra={"HF_ENDPOINT": hub.url})
    assert rc == 0, err
    assert out.splitlines()[0].startswith(f"nanostream: training on fineweb-edu-100b from the Hub ({hub.url}")
    prefix = f"/datasets/{HUB.repo}/resolve/main/"
    assert hub.requests[0] == ("HEAD", prefix + "shard_00000.parquet")  # the reachability probe
    fetched = {p for m, p in hub.requests if m == "GET"}
    assert {prefix + "shard_00000.parquet", prefix + shard_name(HUB.max_shard)} <= fetched
    assert list_shards(base / "data" / "fineweb-edu-100b") == [0, HUB.max_shard]


async def test_make_auto_falls_back_to_sample_with_notice(base: Path) -> None:
    rc, out, err = await run_make("SOURCE=auto", *MAKE_TINY, env_extra={"HF_ENDPOINT": CLOSED})
    assert rc == 0, err
    first = out.splitlines()[0]
    assert first.startswith("nanostream: Hub not reachable (") and CLOSED in first
    assert first.endswith("training on the offline sample corpus (SOURCE=sample). Set SOURCE=hub to require the Hub.")
    assert "step     3/3" in out


async def test_make_hub_unreachable_fails_with_one_line(base: Path) -> None:
    rc, out, err = await run_make("SOURCE=hub", *MAKE_TINY, env_extra={"HF_ENDPOINT": CLOSED})
    assert rc != 0
    assert "step" not in out
    lines = [line for line in err.splitlines() if not line.startswith("make")]
    assert len(lines) == 1, err
    assert lines[0].startswith("demo.train: error: Hub not reachable (") and "SOURCE=sample" in lines[0]
    assert not (base / "data").exists()


async def test_probe_reports_http_errors_and_bad_source(base: Path, hub: FakeHub) -> None:
    cfg = Config.from_env({"HF_ENDPOINT": hub.url, "NANOSTREAM_BASE_DIR": str(base)})
    assert await asyncio.to_thread(source.probe_hub, cfg) is None
    (hub.folder / "shard_00000.parquet").unlink()
    why = await asyncio.to_thread(source.probe_hub, cfg)
    assert why is not None and why.startswith("HTTP 404 from ")
    with pytest.raises(FetchError, match="Hub not reachable \\(HTTP 404"):
        await asyncio.to_thread(source.choose, "hub", cfg)
    with pytest.raises(ConfigError, match="SOURCE='cloud'"):
        source.choose("cloud", cfg)


def test_silent_hub_falls_back_within_the_timeout(base: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        cfg = Config.from_env({"HF_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}"})
        t0 = time.monotonic()
        kind, notice = source.choose("auto", cfg, timeout=0.5)
        elapsed = time.monotonic() - t0
    assert kind == "sample" and notice.startswith("nanostream: Hub not reachable (") and "timed out" in notice
    assert elapsed < 2.0


ENDLESS = [sys.executable, "-m", "demo.train", "--source", "sample", *TINY[2:], "--steps", "1000000",
           "--log-every", "1"]


def _wait_until_it_trains(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("step"):
            return


def test_sigterm_stops_the_sample_server_and_exits(base: Path) -> None:
    with subprocess.Popen(ENDLESS, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            _wait_until_it_trains(proc)
            children = psutil.Process(proc.pid).children(recursive=True)
            assert any("serve" in " ".join(c.cmdline()) for c in children)
            proc.terminate()
            assert proc.wait(timeout=30) == 143
            assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        finally:
            if proc.poll() is None:
                proc.kill()


def test_kill_9_of_the_trainer_stops_the_sample_server(base: Path) -> None:
    """The trainer cannot unwind from SIGKILL: its `nanostream serve` child must go by itself."""
    servers: list[psutil.Process] = []
    with subprocess.Popen(ENDLESS, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            _wait_until_it_trains(proc)
            servers += [c for c in psutil.Process(proc.pid).children(recursive=True)
                       if "serve" in " ".join(c.cmdline())]
            assert servers
            proc.kill()
            assert proc.wait(timeout=30) == -9
            _gone, alive = psutil.wait_procs(servers, timeout=20)
            assert not alive, f"serve child outlived kill -9 of the trainer: {alive}"
        finally:
            if proc.poll() is None:
                proc.kill()
            for server in servers:  # never leave a server behind, even when the test fails
                with contextlib.suppress(psutil.Error):
                    server.kill()


def test_progress_is_printed_before_building_the_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    folder = tmp_path / "sample-src"

    def fake_write(out_dir: Path, shards: int) -> list[Path]:  # the real corpus takes a minute to build
        assert said and said[-1].startswith("sample: building the sample corpus")
        return make_shards(out_dir, shards, row_groups=1, rows=4)

    monkeypatch.setattr("demo.sample.write_sample", fake_write)
    source.ensure_sample(folder, 2, said.append)
    assert said[-1].startswith("sample: built in")
    said.clear()
    source.ensure_sample(folder, 2, said.append)  # complete: reused, nothing to say
    assert said == []


def test_bits_per_byte_counts_bytes_and_skips_bos() -> None:
    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, seq_len=16, depth=1, d_model=32))
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    y[0, :4] = tok.bos_id  # 4 targets worth 0 bytes: out of both sums
    tb = token_bytes(tok, torch.device("cpu"))
    bpb, used = bits_per_byte(model, iter([(x, y)] * 3), 2, tb, contextlib.nullcontext)
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(x).view(-1, tok.vocab_size), y.view(-1), reduction="none")
    keep = y.view(-1) != tok.bos_id
    assert used == 2
    assert bpb == pytest.approx(float(nll[keep].sum()) / (math.log(2) * int(keep.sum())), rel=1e-5)


def test_stale_sample_copies_are_dropped(tmp_path: Path) -> None:
    served, local = tmp_path / "served", tmp_path / "local"
    make_shards(served, 3, rows=8)
    make_shards(local, 4, rows=9)  # an earlier run with --shards 3 and other contents
    shutil.copy(served / "shard_00001.parquet", local / "shard_00001.parquet")
    source.drop_stale(local, served)
    assert list_shards(local) == [1]  # only the byte-identical copy is kept
    assert not (local / ".nanostream.json").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_run_on_cuda_bf16(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["--source", "sample", "--device", "cuda", "--steps", "20", "--depth", "2",
                                      "--batch", "4", "--seq-len", "64", "--shards", "1", "--vocab", "byte",
                                      "--lr", "1e-2", "--warmup", "3", "--eval-batches", "2", "--sample-tokens", "8"])
    result = train(args, Config.from_env())
    assert all(math.isfinite(v) for v in result["losses"])
    assert result["last_loss"] < 0.9 * result["first_loss"], result["losses"]
    assert math.isfinite(result["val_bpb"])
    assert "device cuda (bf16 autocast)" in capsys.readouterr().out
