"""Put SDXL base 1.0 and the fp16-safe VAE on the weights Volume, once, from Modal: `modal run gpu/modal/weights.py`.

The worker never downloads weights: it loads `/models/sdxl-base-1.0` from the Volume `vixenbliss-sdxl-weights`.
This operator's command fills that folder from the Hugging Face Hub (safetensors and configs only, no pickles),
replaces its `vae/` with madebyollin/sdxl-vae-fp16-fix (decodes in fp16 without NaNs, so no fp32 upcast), writes
the BASE_MODEL marker, and commits the Volume. Both repositories are public; for gated or private weights, name a
Modal Secret holding HF_TOKEN in MODAL_HF_SECRET (`MODAL_HF_SECRET=huggingface modal run gpu/modal/weights.py`):
huggingface_hub reads the token from the environment, and nothing here prints it.
Importing this module makes no network call.
"""

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import modal

BASE_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
VAE_REPO = "madebyollin/sdxl-vae-fp16-fix"
MODELS_PATH = "/models"
TARGET = "sdxl-base-1.0"
# Weights and configs only: no .bin/.ckpt pickles, no duplicate fp32 or single-file checkpoints.
ALLOW_PATTERNS = ["*.json", "*.txt", "*.fp16.safetensors", "tokenizer*/*", "scheduler/*"]

app = modal.App("vixenbliss-sdxl-weights")
weights_volume = modal.Volume.from_name("vixenbliss-sdxl-weights", create_if_missing=True)
image = modal.Image.debian_slim(python_version="3.11").pip_install("huggingface_hub>=0.26")


def hf_secret_name(env: Mapping[str, str]) -> str | None:
    """The Modal Secret (holding HF_TOKEN) to download with, from MODAL_HF_SECRET; None for public weights.

    Read here, not in gpu.modal.deploy_settings: `modal run gpu/modal/weights.py` mounts only this file in the
    container, which must import without the project's packages."""
    return env.get("MODAL_HF_SECRET", "").strip() or None


# The operator's shell's choice, read where `modal run` imports this. Modal's server checks that the Secret holds
# HF_TOKEN when the run starts, so a misnamed key fails at once, not as a 401 halfway through the download.
HF_SECRET = hf_secret_name(os.environ)
secrets = [modal.Secret.from_name(HF_SECRET, required_keys=["HF_TOKEN"])] if HF_SECRET else []


@app.function(image=image, volumes={MODELS_PATH: weights_volume}, secrets=secrets, timeout=3600)
def put_weights(force: bool = False) -> str:
    """Download into the Volume (skipped when it already holds the model, unless `force`)."""
    from huggingface_hub import snapshot_download

    target = Path(MODELS_PATH) / TARGET
    if (target / "model_index.json").is_file() and not force:
        return f"{target} is already there (force=True to download again)"
    staging = Path(MODELS_PATH) / f".{TARGET}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    snapshot_download(BASE_REPO, local_dir=staging, allow_patterns=ALLOW_PATTERNS)
    vae = staging / "vae"
    shutil.rmtree(vae, ignore_errors=True)
    snapshot_download(VAE_REPO, local_dir=vae, allow_patterns=["config.json", "diffusion_pytorch_model.safetensors"])
    (staging / "BASE_MODEL").write_text("sdxl-base-1.0\n", encoding="utf-8")
    # The worker's loader reads the fp16 files under their plain names.
    for weights in staging.rglob("*.fp16.safetensors"):
        weights.rename(weights.with_name(weights.name.replace(".fp16.safetensors", ".safetensors")))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    weights_volume.commit()
    # Whether a token was used, never the token.
    how = " (downloaded with a Hugging Face token)" if os.environ.get("HF_TOKEN") else ""
    return f"{target}: SDXL base 1.0 with the fp16-fix VAE{how}"


@app.local_entrypoint()
def main(force: bool = False) -> None:
    print(put_weights.remote(force))
