#!/usr/bin/env bash
# The GPU checks of issue 9 in ONE device call (one NVIDIA H200 host: python3 3.12 with torch,
# pyarrow, aiohttp, tiktoken, pytest, ...; no network). In order, each with its own time limit
# so that one hang cannot eat the others' figures:
#   1. the CUDA tests:                  pytest -m cuda                                  (<= 120 s)
#   2. bench/cuda_check.py:             correctness, copy/compute overlap, data wait    (<= 150 s)
#   3. `make train-gpu`, default size:  python -m demo.train --device cuda, 100 steps   (<= 110 s)
#   4. the 27.5M model:                 --depth 12 --batch 32 --seq-len 1024 --vocab 8192
#                                       --source sample, 200 steps                      (<= 150 s)
# Logs land in $OUT (pytest_cuda.log, cuda_check.log + cuda_check.json, train_default.log,
# train_27m.log, summary.txt); the summary gives each run's steady-state data wait (the mean of
# its logged windows after the first two).
#
# Wheels the GPU host lacks (rustbpe, pytest-asyncio, pytest-aiohttp, torchdata; pytest and
# pytest-timeout at this project's versions, since pytest-asyncio 1.5 needs pytest >= 8.4)
# travel in .whl/ (git-ignored). Fetch them once, here, on a machine that reaches PyPI:
#
#   bash bench/gpu_check.sh --download-wheels        # = the pip download below, into .whl/
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl rustbpe==0.1.0 pytest-asyncio==1.5.0 pytest-aiohttp==1.1.1 torchdata==0.11.0 \
#     pytest==9.2.0 pytest-timeout==2.4.0 pluggy==1.7.0 iniconfig==2.3.1
#
# Then run it with the device tool from the repository root (about 1 MB travels with .whl):
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=560)
# Nothing is installed into the host's Python: the wheels go to /tmp/site, the project runs from
# src/ (PYTHONPATH), so the same script runs on a fresh machine every time.
set -uo pipefail

WHEELS=(rustbpe==0.1.0 pytest-asyncio==1.5.0 pytest-aiohttp==1.1.1 torchdata==0.11.0
        pytest==9.2.0 pytest-timeout==2.4.0 pluggy==1.7.0 iniconfig==2.3.1)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "--download-wheels" ]]; then
    mkdir -p .whl
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
fi

OUT="${OUT:-$ROOT/runs/gpu_check}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || { note "FAIL: installing the carried wheels"; exit 1; }
    export PYTHONPATH="/tmp/site:$ROOT/src:$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"
else
    note "no .whl/ wheels carried: using what the host has"
    export PYTHONPATH="$ROOT/src:$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
export NANOSTREAM_BASE_DIR="${NANOSTREAM_BASE_DIR:-/tmp/nanostream-gpu-check}"  # sample + tokenizers, shared by 3-4

note "gpu_check $(date -u +%Y-%m-%dT%H:%MZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
"$PY" - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import os, torch
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU'}, {len(os.sched_getaffinity(0))} cores")
EOF

step() {  # step NAME LIMIT_S CMD...: run with a time limit, log to $OUT/NAME.log, record the exit status
    local name="$1" limit="$2"
    shift 2
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    note "$name: exit $rc in $((SECONDS - t0)) s$([[ $rc == 124 ]] && echo " (TIMED OUT after $limit s)")"
    tail -n 25 "$OUT/$name.log"
}

steady_wait() {  # the mean "data wait" of a training log's windows after the first two
    "$PY" - "$OUT/$1.log" <<'EOF' | tee -a "$SUMMARY"
import re, sys
path = sys.argv[1]
w = [float(m.group(1)) for m in re.finditer(r"data wait\s+([\d.]+)%", open(path).read())]
tok = [float(m.group(1).replace(",", "")) for m in re.finditer(r"\|\s+([\d,]+) tok/s", open(path).read())]
if len(w) > 2:
    print(f"  {path.rsplit('/', 1)[-1]}: steady-state data wait {sum(w[2:]) / len(w[2:]):.2f}% "
          f"(windows 3-{len(w)}: min {min(w[2:]):.2f}%, max {max(w[2:]):.2f}%); "
          f"steady tok/s {sum(tok[2:]) / max(1, len(tok[2:])):,.0f}")
else:
    print(f"  {path}: too few log windows ({len(w)})")
EOF
}

# only this project's plugins: the host's own (xdist, benchmark, cov, mock, ...) may not match pytest 9
# (only the files that hold CUDA tests are collected: the others need dev packages the host lacks,
# hypothesis and huggingface_hub among them)
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 step pytest_cuda 120 "$PY" -m pytest -q -m cuda -p no:cacheprovider \
    -p pytest_asyncio.plugin -p pytest_aiohttp.plugin -p pytest_timeout tests/test_device.py tests/test_train.py
step cuda_check 150 "$PY" bench/cuda_check.py
step train_default 110 "$PY" -m demo.train --device cuda --source sample --steps 100
steady_wait train_default
step train_27m 150 "$PY" -m demo.train --device cuda --source sample --depth 12 --batch 32 --seq-len 1024 \
    --vocab 8192 --steps 200 --sample-tokens 0
steady_wait train_27m
note "done; logs in $OUT"
