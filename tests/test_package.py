"""The package namespace: every public name is the same object whatever was imported before it.

Each order runs in an interpreter that has loaded nothing of nanostream, because the bug this
guards against depends on which submodules an interpreter has already loaded: importing
``nanostream.stream`` (the module, now ``nanostream.streaming.streams``) used to replace the
function ``nanostream.stream``. One subprocess imports the heavy third-party libraries (torch,
pyarrow, ...) once, then forks a child per order: each child starts with no nanostream module.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import nanostream

SUBMODULES = sorted(m.name.removeprefix("nanostream.") for m in pkgutil.walk_packages(nanostream.__path__, "nanostream."))
PUBLIC = list(nanostream.__all__)

# In a child with no nanostream module loaded: run the imports of `steps` in order, then check every public name.
CHECK = r"""
import importlib, json, types

def check(steps):
    got = {}
    for kind, what in steps:
        if kind == "module":
            importlib.import_module("nanostream." + what)
        elif kind == "from":  # `from nanostream import a, b` as written in user code
            exec(f"from nanostream import {', '.join(what)}", got)
        else:
            raise SystemExit(f"unknown step {kind}")
    import nanostream
    bad = []
    for name in nanostream.__all__:
        owner = nanostream._LAZY.get(name)
        want = getattr(importlib.import_module("nanostream." + owner), name) if owner else None
        for where, value in (("attribute", getattr(nanostream, name)), ("from-import", got.get(name))):
            if value is None and where == "from-import":
                continue
            if owner is None:
                ok = not isinstance(value, types.ModuleType)
            else:
                ok = value is want
            if not ok:
                bad.append(f"{where} {name} -> {value!r}")
        ns = {}
        exec(f"from nanostream import {name}", ns)
        if owner and ns[name] is not want:
            bad.append(f"late from-import {name} -> {ns[name]!r}")
    return bad
"""

# One interpreter: the third-party libraries once, then a forked child per order (stdin: JSON list of orders).
RUNNER = r"""
import json, os, sys
for lib in ("numpy", "pyarrow", "pyarrow.parquet", "torch", "aiohttp", "tiktoken", "filelock"):
    __import__(lib)
assert not any(m == "nanostream" or m.startswith("nanostream.") for m in sys.modules)
exec(CHECK_SOURCE)
out = []
for steps in json.load(sys.stdin):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: runs one order, writes its findings, exits without cleanup
        os.close(read)
        try:
            result = json.dumps(check(steps))
        except BaseException as exc:  # reported to the parent as a finding
            result = json.dumps([f"error: {exc!r}"])
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        data = f.read()
    os.waitpid(pid, 0)
    out.append(json.loads(data))
print(json.dumps(out))
"""


def run_orders(orders: list[list[tuple[str, object]]]) -> list[list[str]]:
    code = RUNNER.replace("exec(CHECK_SOURCE)", CHECK)
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], input=json.dumps(orders),
                          capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def orders() -> dict[str, list[tuple[str, object]]]:
    every_module = [("module", m) for m in SUBMODULES]
    out: dict[str, list[tuple[str, object]]] = {
        "issue: TokenDataset before stream": [("from", ["TokenDataset", "stream"])],
        "issue: stream before TokenDataset": [("from", ["stream", "TokenDataset"])],
        "every submodule first": [*every_module, ("from", PUBLIC)],
        "every submodule first, reversed": [*every_module[::-1], ("from", PUBLIC[::-1])],
    }
    for name in PUBLIC:  # each name first, then every submodule, then every name again
        out[f"{name} first"] = [("from", [name]), *every_module, ("from", PUBLIC)]
    return out


def test_no_public_name_is_also_a_submodule() -> None:
    names = {part for m in SUBMODULES for part in m.split(".")}  # every subpackage's and module's own name
    clashes = set(PUBLIC) & names
    assert not clashes, f"public names that are also submodules: {sorted(clashes)}; rename the module"


@pytest.mark.timeout(300)
def test_every_public_name_in_every_order() -> None:
    cases = orders()
    results = dict(zip(cases, run_orders(list(cases.values())), strict=True))
    assert {k: v for k, v in results.items() if v} == {}


def test_import_nanostream_loads_neither_torch_nor_pyarrow() -> None:
    code = ("import sys, nanostream; print(sorted(m for m in ('torch', 'pyarrow', 'aiohttp') if m in sys.modules)); "
            "import nanostream.loader.pipeline, nanostream.loader.resume; print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "False"]  # only loader.py and device.py import torch


def test_streaming_module_and_stream_function() -> None:
    import importlib

    mod = importlib.import_module("nanostream.streaming.streams")
    assert callable(nanostream.stream) and nanostream.stream is mod.stream
    from nanostream.streaming.single import Stream  # noqa: F401  (the one-source stream)
