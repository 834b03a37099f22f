"""Read LoRA bytes as safetensors only (never a pickle), checking the header before any tensor is made."""

import torch
from safetensors.torch import load as load_safetensors

from contracts.safetensors_header import NotSafetensorsError, check_file
from gpu.engine.errors import lora_load_failed

LoraTensors = dict[str, torch.Tensor]


def parse_lora(data: bytes) -> LoraTensors:
    """Parse safetensors bytes into CPU tensors; refuse anything else, non-float tensors and NaN/Inf."""
    # The shared header rules (contracts/safetensors_header.py, also identity's at upload) run first: a header
    # that claims tensors bigger than the file, or non-float tensors, is refused before anything is allocated.
    try:
        check_file(data)
    except NotSafetensorsError as exc:
        raise lora_load_failed("LoRA file is not a safetensors file of float tensors", reason=str(exc)) from None
    try:
        tensors = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own SafetensorError and others on corrupt input
        raise lora_load_failed("LoRA file is not valid safetensors", reason=str(exc)[:200]) from None
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise lora_load_failed("LoRA tensor holds NaN or Inf values", tensor=name)
    return tensors
