#!/usr/bin/env bash
# On a lent GPU machine: install what is missing from the carried wheels, run the full-size benchmark, leave the
# results in $OUT as they come. Prepare first on the dev machine: scripts/device-wheels.sh; then one device call,
# run(command="bash scripts/device-gpu-bench.sh", carry=[".device"], timeout_s=420).
#
# Sized for one call of at most 7 minutes including a cold compile: the phases earlier runs measured are skipped
# (--skip-measured: the two replaced LoRA strategies, the alternation at its full count), the weights are checked
# against one snapshot on the GPU instead of five sha256 fingerprints, and no compile mode starts with less than
# 150 s of the budget left. The JSON ($OUT/gpu-bench.json), the tables ($OUT/benchmarks.md, a copy of
# docs/benchmarks.md with the GPU section rewritten) and the log ($OUT/bench.log) are written after every phase,
# so a call the device's limit stops still brings back every phase it finished.
#
# BENCH_ARGS replaces the benchmark's flags (BENCH_ARGS="--compile-modes reduce-overhead,default+vae --skip-measured"
# for a second call). BENCH_CALL_SECONDS (default 405) is when the whole script must be done: the benchmark is stopped
# then (exit 124), before the call's 420 s; BENCH_BUDGET (default 330) is the budget its phases plan against.
set -uo pipefail
out=${OUT:-bench-results}
# The python that holds torch: on the lent machines that is a venv's (/opt/torch/.venv), not the first python3 on PATH.
for candidate in "${PYTHON:-}" /opt/torch/.venv/bin/python3 python3 python; do
  [ -n "$candidate" ] && "$candidate" -c "import torch" 2>/dev/null && { python=$candidate; break; }
done
[ -n "${python:-}" ] || { echo "no python with torch found" >&2; exit 2; }
export PIP_ROOT_USER_ACTION=ignore PYTHONUNBUFFERED=1
mkdir -p "$out"
started=$(date +%s)
# Install only modules the machine lacks, without dependencies: its torch/transformers stay as they are.
for pair in diffusers:diffusers pydantic:pydantic pydantic_core:pydantic_core pydantic_settings:pydantic_settings \
    typing_inspection:typing_inspection annotated_types:annotated_types dotenv:python_dotenv httpx:httpx \
    httpcore:httpcore h11:h11 anyio:anyio sniffio:sniffio idna:idna certifi:certifi; do
  module=${pair%%:*}; wheel=${pair##*:}
  "$python" -c "import $module" 2>/dev/null || "$python" -m pip install --quiet --no-deps .device/wheels/${wheel}-*.whl
done
"$python" -c "import torch, diffusers, transformers, peft; print(torch.__version__, diffusers.__version__, transformers.__version__, peft.__version__)" \
  | tee "$out/versions.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt" \
  || echo "no nvidia-smi here" | tee "$out/gpu.txt"
cp docs/benchmarks.md "$out/benchmarks.md"
# What was spent before the benchmark starts (installs, imports) comes off its budget and its time limit.
spent=$(( $(date +%s) - started ))
budget=$(( ${BENCH_BUDGET:-330} - spent ))
limit=$(( ${BENCH_CALL_SECONDS:-405} - spent ))
default_args="--skip-measured --compile-modes default,reduce-overhead,default+vae,max-autotune-no-cudagraphs"
status=0
# shellcheck disable=SC2086
timeout --signal=TERM "$limit" "$python" -m gpu.bench ${BENCH_ARGS-$default_args} \
  --budget-seconds "$budget" --out "$out/gpu-bench.json" --write-docs "$out/benchmarks.md" 2>&1 \
  | tee "$out/bench.log" || status=$?
echo "benchmark exit status $status after $(( $(date +%s) - started )) s (124: stopped at BENCH_CALL_SECONDS)" \
  | tee -a "$out/bench.log"
exit "$status"
