#!/usr/bin/env bash
# On a lent GPU machine: install what is missing from the carried wheels, run the full-size benchmark,
# leave the results in $OUT. Prepare first on the dev machine: scripts/device-wheels.sh.
set -euo pipefail
out=${OUT:-bench-results}
# The python that holds torch: on the lent machines that is a venv's (/opt/torch/.venv), not the first python3 on PATH.
for candidate in "${PYTHON:-}" /opt/torch/.venv/bin/python3 python3 python; do
  [ -n "$candidate" ] && "$candidate" -c "import torch" 2>/dev/null && { python=$candidate; break; }
done
[ -n "${python:-}" ] || { echo "no python with torch found" >&2; exit 2; }
export PIP_ROOT_USER_ACTION=ignore PYTHONUNBUFFERED=1
mkdir -p "$out"
# Install only modules the machine lacks, without dependencies: its torch/transformers stay as they are.
for pair in diffusers:diffusers pydantic:pydantic pydantic_core:pydantic_core pydantic_settings:pydantic_settings \
    typing_inspection:typing_inspection annotated_types:annotated_types dotenv:python_dotenv httpx:httpx \
    httpcore:httpcore h11:h11 anyio:anyio sniffio:sniffio idna:idna certifi:certifi; do
  module=${pair%%:*}; wheel=${pair##*:}
  "$python" -c "import $module" 2>/dev/null || "$python" -m pip install --quiet --no-deps .device/wheels/${wheel}-*.whl
done
"$python" -c "import torch, diffusers, transformers, peft; print(torch.__version__, diffusers.__version__, transformers.__version__, peft.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
# The fast path's phases (fp16 VAE, compiled UNet) run after the eager ones, in the same run: the eager table is
# written (JSON and docs) before compiling starts, so a run the timeout stops still leaves it. BENCH_ARGS= (empty)
# for the eager phases alone.
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-480}" "$python" -m gpu.bench ${BENCH_ARGS---compile} --out "$out/gpu-bench.json" \
  --write-docs docs/benchmarks.md 2>&1 | tee "$out/bench.log"
cp docs/benchmarks.md "$out/benchmarks.md"
