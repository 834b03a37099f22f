"""Assemble the engine from settings: the one place that builds the pipeline, caches and LoRA store."""

from pathlib import Path

import torch

from gpu.engine.compiled import compile_unet, should_compile
from gpu.engine.engine import SdxlLoraEngine
from gpu.engine.lora.cache import DiskLoraCache, MemoryLoraCache
from gpu.engine.lora.download import DownloadPolicy
from gpu.engine.lora.plan import LoraPlan
from gpu.engine.lora.store import LoraStore
from gpu.engine.pipeline_loader import base_model_name, load_pipeline, resolve_device, resolve_dtype
from gpu.serve.settings import WorkerSettings


def build_store(settings: WorkerSettings) -> LoraStore:
    policy = DownloadPolicy(
        mode=settings.mode,
        allowed_hosts=tuple(settings.lora_allowed_hosts),
        max_bytes=settings.lora_max_bytes,
        connect_timeout_seconds=settings.lora_connect_timeout_seconds,
        total_timeout_seconds=settings.lora_download_timeout_seconds,
    )
    disk = (
        DiskLoraCache(settings.lora_cache_dir, settings.lora_cache_disk_bytes)
        if settings.lora_cache_dir is not None
        else None
    )
    return LoraStore(policy, MemoryLoraCache[LoraPlan](settings.lora_cache_memory_bytes), disk)


def build_engine(settings: WorkerSettings, device: torch.device | str | None = None) -> SdxlLoraEngine:
    """Load the model named by settings (building the tiny one first when asked) and wire the engine."""
    model_dir = Path(settings.model_dir)
    if settings.build_tiny_model:
        from gpu.tiny.model import ensure_tiny_model

        ensure_tiny_model(model_dir)
    target = torch.device(device) if device is not None else resolve_device(settings.device)
    # The dtype follows the device the engine will serve on: the one settings name, else the one it loads on. With
    # `device` given nothing probes CUDA: on Modal this runs before the memory snapshot, and a process that probed
    # CUDA then sees no device after restore.
    serving = torch.device(settings.device) if settings.device != "auto" else target
    pipeline = load_pipeline(model_dir, resolve_dtype(settings.dtype, serving), target)
    if should_compile(settings.compile, target):
        compile_unet(pipeline)
    return SdxlLoraEngine(
        pipeline,
        build_store(settings),
        base_model=base_model_name(model_dir, settings.base_model_name),
        default_timeout_seconds=settings.request_timeout_seconds,
        pristine_device=settings.lora_pristine_device,
        vae_half=settings.vae_half,
    )
