#!/usr/bin/env bash
# Download the wheels the GPU benchmark needs beyond what the lent GPU machine has (it has torch, transformers,
# peft, safetensors, accelerate, pillow, numpy; Python 3.12; no registry access). Carried in .device/wheels.
# pydantic-core is pinned to the exact version pydantic 2.14.3 demands: pydantic refuses to import with any other.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.device/wheels
mkdir -p "$dest"
pip=${PIP:-.venv/bin/pip}
"$pip" download --quiet --no-deps --dest "$dest" --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --implementation cp \
  "diffusers==0.42.1" "pydantic==2.14.3" "pydantic-core==2.50.4" "pydantic-settings==2.16.3" "typing-inspection" \
  "annotated-types" "python-dotenv" "httpx==0.28.1" "httpcore==1.0.9" "h11" "anyio" "sniffio" "idna" "certifi"
ls "$dest"
