"""Where the demo trainer's data comes from: the Hub, or the offline sample served on 127.0.0.1.

Owns ``SOURCE`` selection (``auto`` | ``hub`` | ``sample``), the Hub reachability
probe (one HEAD of the dataset's first shard, bounded by a few seconds), writing
the sample corpus once into ``$NANOSTREAM_BASE_DIR/sample-src``, and running
``nanostream serve`` on it as a child process for the length of the run. Either
way the trainer gets a base URL, and the data then takes the real path: fetched
over HTTP by the async downloader while it is streamed.
"""

from __future__ import annotations

import ctypes
import filecmp
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import nanostream
from nanostream.config import DEFAULT_DATASET, Config, get_dataset
from nanostream.errors import ConfigError, FetchError
from nanostream.shards import RECORD_NAME, list_shards, shard_name
from nanostream.sources.catalog import read_catalog

SOURCES = ("auto", "hub", "sample")
SAMPLE_NAME = "sample"
PROBE_TIMEOUT = 3.0
SERVE_START_TIMEOUT = 30.0
_SERVING_RE = re.compile(r"serving .* at (http://\S+)")


@dataclass(frozen=True)
class Source:
    """Resolved data source: a corpus name, where its shards are served, and where they go locally."""

    kind: str  # "hub", "sample" or "dataset"
    name: str  # corpus name, also the tokenizer's folder prefix
    base_url: str | None
    max_shard: int | None  # the validation shard's index (None: the dataset's catalog says)
    data_dir: Path
    notice: str  # the one line telling the user which source and how to choose
    dataset: str | None = None  # --dataset: hf://..., s3://... or a local folder (then no SOURCE)
    mix: tuple[tuple[str, Path, float], ...] = ()  # --mix: (dataset, its data folder, weight) each

    def data(self, shards: int) -> nanostream.Source | list[nanostream.Source]:
        """What ``stream(data=...)`` and ``TokenDataset(data=...)`` read for this source: its first ``shards``
        train files."""
        if self.kind == "mix":
            return [_source(url, folder, shards, weight=w) for url, folder, w in self.mix]
        if self.kind == "dataset":
            return _source(self.dataset or "", self.data_dir, shards)
        return _source(self.base_url or "", self.data_dir, shards, max_shard=self.max_shard)


def _source(url: str, folder: Path, shards: int, **kw) -> nanostream.Source:
    """A dataset at ``url`` downloaded into ``folder``, or the folder itself when ``url`` is not a URL."""
    if "://" in url:
        return nanostream.Source(url, folder=folder, num_shards=shards, **kw)
    return nanostream.Source(folder, num_shards=shards, **kw)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx from the Hub's resolve endpoint already proves it answers: do not follow it to the CDN."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _head(url: str, token: str | None, timeout: float) -> str | None:
    """HEAD ``url``: None when the server answers usefully (2xx/3xx), else why not, in a few words."""
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "nanostream-demo"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        exc.close()
        if 300 <= exc.code < 400:
            return None
        hint = " (gated or bad token? check HF_TOKEN)" if exc.code in (401, 403) else ""
        return f"HTTP {exc.code} from {url}{hint}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(reason).__name__}: {reason} for {url}"


@contextmanager
def hub_probe(cfg: Config, dataset: str = DEFAULT_DATASET, timeout: float = PROBE_TIMEOUT) -> Iterator[str | None]:
    """Yield None when the Hub serves ``dataset``'s first shard within ``timeout`` seconds, else why not.

    Honours ``HF_ENDPOINT`` and ``HF_TOKEN`` through ``cfg``. A socket timeout does not bound DNS
    resolution, so the HEAD runs in a worker thread and the caller waits at most ``timeout`` (plus
    0.5 s): a probe stuck in the resolver counts as unreachable and the run goes on. The thread is
    joined when the ``with`` block ends (resolvers give up on their own), so none outlives it.
    """
    url = f"{get_dataset(dataset).base_url(cfg.hf_endpoint)}/{shard_name(0)}"
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(_head(url, cfg.hf_token, timeout)),
                              name="nanostream-hub-probe", daemon=True)
    worker.start()
    try:
        worker.join(timeout + 0.5)
        yield result[0] if result else f"no answer within {timeout:g} s from {url}"
    finally:
        worker.join()


def probe_hub(cfg: Config, dataset: str = DEFAULT_DATASET, timeout: float = PROBE_TIMEOUT) -> str | None:
    """``hub_probe`` as a plain call (waits for a late probe thread before returning)."""
    with hub_probe(cfg, dataset, timeout) as why:
        return why


def sample_is_complete(folder: Path, shards: int) -> bool:
    record = read_catalog(folder)
    return record is not None and len(record.files) == shards and list_shards(folder) == list(range(shards))


def _quiet(msg: str) -> None:
    pass


def ensure_sample(folder: Path, shards: int, say: Callable[[str], None] = _quiet) -> Path:
    """Write the sample corpus (``shards`` files, the last one validation) once; reuse it when complete."""
    if shards < 2:
        raise ConfigError(f"the sample needs >= 2 shards (one train, one validation), got {shards}")
    if not sample_is_complete(folder, shards):
        from demo.sample import write_sample

        say(f"sample: building the sample corpus into {folder} ({shards} shards; once, can take "
            "a minute) ...")
        t0 = time.monotonic()
        write_sample(folder, shards=shards)
        say(f"sample: built in {time.monotonic() - t0:.0f} s")
    return folder


def drop_stale(data_dir: Path, src_dir: Path) -> None:
    """Delete downloaded sample shards that no longer match the served ones.

    The sample is split into as many shards as asked for, so ``shard_00000`` changes with
    ``--shards`` (and with the installed packages it is built from); the fetcher keeps a
    shard that is already on disk, so a stale copy would silently be trained on.
    """
    served = read_catalog(src_dir)
    record = read_catalog(data_dir)
    if record is not None and (served is None or len(record.files) != len(served.files)):
        (data_dir / RECORD_NAME).unlink(missing_ok=True)
    for index in list_shards(data_dir):
        local, remote = data_dir / shard_name(index), src_dir / shard_name(index)
        if not remote.exists() or not filecmp.cmp(local, remote, shallow=False):
            local.unlink(missing_ok=True)


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when the process that started it dies, even by
    ``kill -9`` (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere a no-op). Exits at once if the
    parent is already gone. Runs in the forked child before exec: async-signal-safe calls only."""
    libc = None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            libc = None

    def preexec() -> None:
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def serve_folder(folder: Path, timeout: float = SERVE_START_TIMEOUT) -> Iterator[str]:
    """Run ``nanostream serve FOLDER --port 0`` as a child process; yield its URL; stop it on exit.

    The child also exits when this process dies without unwinding (``kill -9``): see
    ``_die_with_parent``. Call this from the thread that lives as long as the server should
    (the main thread): Linux signals the child when the *thread* that forked it ends.

    The child's output goes to a temporary log file (not a pipe, which nobody would drain);
    its first line carries the URL. On a failed start the log's tail is in the error.
    """
    with tempfile.TemporaryDirectory(prefix="nanostream-serve-") as tmp:
        log_path = Path(tmp) / "serve.log"
        with log_path.open("ab") as log:
            cmd = [sys.executable, "-m", "nanostream.cli", "serve", str(folder), "--port", "0"]
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent(os.getpid()))
        try:
            url = _wait_for_url(proc, log_path, timeout)
            yield url
        finally:
            _stop(proc)


def _wait_for_url(proc: subprocess.Popen, log_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text(errors="replace")
        if m := _SERVING_RE.search(text):
            return m.group(1).rstrip("/")
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {proc.returncode}" if proc.returncode is not None else f"no URL after {timeout:g} s"
            tail = " | ".join(text.strip().splitlines()[-3:]) or "no output"
            raise FetchError(f"`nanostream serve` for the sample corpus {why}: {tail}", url=None)
        time.sleep(0.05)


def decide(source: str, why: str | None, cfg: Config, dataset: str = DEFAULT_DATASET) -> tuple[str, str]:
    """``("hub" | "sample", notice)`` for ``source`` given the probe's answer ``why`` (None: reachable)."""
    if source == "sample":
        return "sample", ("nanostream: training on the offline sample corpus (SOURCE=sample). "
                          "Set SOURCE=hub or SOURCE=auto to use the Hub.")
    if why is None:
        return "hub", (f"nanostream: training on {dataset} from the Hub ({cfg.hf_endpoint}, SOURCE={source}). "
                       "Set SOURCE=sample for the offline sample corpus.")
    if source == "hub":
        raise FetchError(f"Hub not reachable ({why}) and SOURCE=hub requires it: check the network, "
                         "HF_ENDPOINT and HF_TOKEN, or set SOURCE=sample", url=cfg.hf_endpoint)
    return "sample", (f"nanostream: Hub not reachable ({why}); training on the offline sample corpus "
                      "(SOURCE=sample). Set SOURCE=hub to require the Hub.")


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise ConfigError(f"SOURCE={source!r}: choose one of {', '.join(SOURCES)}")


def choose(source: str, cfg: Config, dataset: str = DEFAULT_DATASET,
           timeout: float = PROBE_TIMEOUT) -> tuple[str, str]:
    """Resolve ``source`` to ``("hub" | "sample", notice)``. Only ``auto`` and ``hub`` touch the Hub."""
    check_source(source)
    if source == "sample":
        return decide(source, None, cfg, dataset)
    with hub_probe(cfg, dataset, timeout) as why:
        return decide(source, why, cfg, dataset)


@contextmanager
def open_source(source: str, cfg: Config, *, shards: int, dataset: str = DEFAULT_DATASET,
                timeout: float = PROBE_TIMEOUT, say: Callable[[str], None] = _quiet) -> Iterator[Source]:
    """Pick the source and make it servable for the ``with`` block.

    ``say`` gets the source notice as soon as the source is decided, then a line before each
    step that can take long (building the sample corpus).

    ``shards`` is the number of train shards. The Hub: ``dataset``'s shards ``0..shards-1`` plus
    its validation shard, into ``BASE/data/DATASET``. The sample: ``shards + 1`` files written
    to ``BASE/sample-src`` (once), served on 127.0.0.1, fetched into ``BASE/data/sample``.
    """
    if shards < 1:
        raise ConfigError(f"--shards must be >= 1 train shard, got {shards}")
    check_source(source)
    with ExitStack() as stack:
        # a probe thread stuck in DNS is joined only when the run is over, never waited for up front
        why = None if source == "sample" else stack.enter_context(hub_probe(cfg, dataset, timeout))
        kind, notice = decide(source, why, cfg, dataset)
        say(notice)
        if kind == "hub":
            ds = get_dataset(dataset)
            yield Source("hub", ds.name, ds.base_url(cfg.hf_endpoint), ds.max_shard, cfg.data_dir(ds.name), notice)
            return
        folder = ensure_sample(cfg.base_dir / "sample-src", shards + 1, say)
        data_dir = cfg.data_dir(SAMPLE_NAME)
        drop_stale(data_dir, folder)
        url = stack.enter_context(serve_folder(folder))
        yield Source("sample", SAMPLE_NAME, url, shards, data_dir, notice)


def dataset_source(dataset: str, cfg: Config) -> Source:
    """``--dataset``: any parquet dataset (``hf://``, ``s3://`` or a local folder), fetched while streamed.

    A URL is listed once and pinned in ``BASE/data/<folder_name>``; a local folder is read in place.
    """
    from nanostream.sources.resolve import folder_name

    if "://" in dataset:
        folder = folder_name(dataset)
        data_dir = cfg.data_dir(folder)
        name = folder.replace("/", "_")
    else:
        data_dir = Path(dataset).expanduser()
        if not data_dir.is_dir():
            raise ConfigError(f"--dataset {dataset!r} is neither a URL (hf://, s3://) nor an existing folder")
        name = "local_" + (data_dir.resolve().name or "root")
    notice = f"data: --dataset {dataset} (SOURCE is not used with --dataset)"
    return Source("dataset", name, None, None, data_dir, notice, dataset)


def mix_source(mix: str, cfg: Config) -> Source:
    """``--mix "hf://datasets/A=0.7,/data/code=0.3"``: a weighted mix of datasets (each as ``--dataset``)."""
    parts = []
    for item in (x.strip() for x in mix.split(",") if x.strip()):
        where, sep, weight = item.rpartition("=")
        if not sep or not where:
            raise ConfigError(f"--mix item {item!r} is not DATASET=WEIGHT (e.g. hf://datasets/ORG/NAME=0.7)")
        try:
            w = float(weight)
        except ValueError:
            raise ConfigError(f"--mix item {item!r}: weight {weight!r} is not a number") from None
        parts.append((where, dataset_source(where, cfg).data_dir, w))
    if len(parts) < 2:
        raise ConfigError(f"--mix {mix!r} names {len(parts)} dataset(s): a mix needs two or more (else --dataset)")
    tag = hashlib.sha256(mix.encode()).hexdigest()[:10]
    return Source("mix", f"mix-{tag}", None, None, parts[0][1], f"data: --mix {mix} (SOURCE is not used with --mix)",
                  mix=tuple(parts))


def env_default(name: str, default: str) -> str:
    """An env var's value for an argparse default (make passes knobs as flags; env works too)."""
    return os.environ.get(name) or default
