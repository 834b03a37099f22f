"""Load an SDXL pipeline from a local directory in a chosen dtype and device (MODEL_LOAD_FAILED otherwise)."""

from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline

from contracts.errors import WorkerErrorCode
from gpu.engine.errors import WorkerFailure

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise WorkerFailure(WorkerErrorCode.MODEL_LOAD_FAILED, "WORKER_DEVICE=cuda but no CUDA device is present")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    # Half precision on CPU is slow and poorly supported: auto means fp16 on GPU, fp32 on CPU.
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def base_model_name(model_dir: Path, configured: str | None) -> str:
    if configured:
        return configured
    marker = model_dir / "BASE_MODEL"
    if marker.is_file():
        return marker.read_text(encoding="utf-8").strip() or model_dir.name
    return model_dir.name


def load_pipeline(model_dir: Path, dtype: torch.dtype, device: torch.device) -> StableDiffusionXLPipeline:
    """Load from disk only (no hub, no pickle); any failure is MODEL_LOAD_FAILED with the cause."""
    if not (model_dir / "model_index.json").is_file():
        raise WorkerFailure(
            WorkerErrorCode.MODEL_LOAD_FAILED,
            "model directory has no model_index.json",
            model_dir=str(model_dir),
        )
    try:
        pipeline = StableDiffusionXLPipeline.from_pretrained(
            str(model_dir), dtype=dtype, use_safetensors=True, local_files_only=True
        )
        pipeline.to(device)
    except Exception as exc:  # a corrupt or partial model can fail in many ways inside diffusers
        raise WorkerFailure(
            WorkerErrorCode.MODEL_LOAD_FAILED,
            "could not load the base model",
            model_dir=str(model_dir),
            reason=f"{type(exc).__name__}: {str(exc)[:300]}",
        ) from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
