"""Side by side on the same model: the replaced LoRA strategies (diffusers adapters, fuse/unfuse) vs ours, and what
the phases share to time them (our swap's cost in a request, a device sync)."""

import time
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load as load_safetensors

from contracts.worker import WorkerSuccess


def swap_ms(outcome: WorkerSuccess) -> float:
    """Our swap's cost in a request: fusing the LoRA (load_ms) plus restoring the base weights (restore_ms)."""
    assert outcome.timings is not None
    return outcome.timings.load_ms + outcome.timings.restore_ms


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer around it measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def diffusers_adapter_swap_ms(pipeline: StableDiffusionXLPipeline, lora: bytes, runs: int) -> list[float]:
    """load_lora_weights + set_adapters + unload_lora_weights: the unfused adapter way, per request."""
    tensors = load_safetensors(lora)
    device = torch.device(pipeline.device)
    times = []
    for _ in range(runs):
        synchronize(device)
        started = time.perf_counter()
        pipeline.load_lora_weights(dict(tensors), adapter_name="compare", low_cpu_mem_usage=True)
        pipeline.set_adapters(["compare"], adapter_weights=[0.9])
        pipeline.unload_lora_weights()
        synchronize(device)
        times.append((time.perf_counter() - started) * 1000)
    return times


def fuse_unfuse_residue(pipeline: StableDiffusionXLPipeline, lora: bytes) -> dict[str, Any]:
    """One fuse_lora/unfuse_lora cycle (the replaced system's way): how many UNet tensors come back changed."""
    snapshot = {name: tensor.detach().to("cpu", copy=True) for name, tensor in pipeline.unet.state_dict().items()}
    pipeline.load_lora_weights(dict(load_safetensors(lora)), adapter_name="residue")
    pipeline.fuse_lora(lora_scale=0.9)
    pipeline.unfuse_lora()
    pipeline.unload_lora_weights()
    changed, worst = 0, 0.0
    for name, tensor in pipeline.unet.state_dict().items():
        original = snapshot[name]
        current = tensor.detach().to("cpu")
        if not torch.equal(current, original):
            changed += 1
            worst = max(worst, (current.float() - original.float()).abs().max().item())
        # Put the exact original back: the rest of the benchmark needs pristine weights.
        tensor.copy_(original)
    return {"changed_tensors": changed, "total_tensors": len(snapshot), "max_abs_difference": worst}
