"""Read LoRA bytes as safetensors only (never a pickle), checking the header before any tensor is made."""

import json
import math
import struct

import torch
from safetensors.torch import load as load_safetensors

from gpu.errors import lora_load_failed

# Float tensors only: an integer or boolean tensor in a LoRA is a sign of a foreign or hostile file.
LoraTensors = dict[str, torch.Tensor]

FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
MAX_HEADER_BYTES = 16 * 1024 * 1024


def _check_header(data: bytes) -> dict[str, dict[str, object]]:
    if len(data) < 8:
        raise lora_load_failed("LoRA file is too short to be safetensors", bytes=len(data))
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len == 0 or header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise lora_load_failed(
            "LoRA file is not safetensors (bad header length)", header_bytes=header_len, file_bytes=len(data)
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise lora_load_failed("LoRA file is not safetensors (header is not JSON)") from None
    if not isinstance(header, dict):
        raise lora_load_failed("LoRA file is not safetensors (header is not an object)")
    header.pop("__metadata__", None)
    if not header:
        raise lora_load_failed("LoRA file holds no tensors")
    payload_len = len(data) - 8 - header_len
    for name, info in header.items():
        _check_entry(name, info, payload_len)
    return header


def _check_entry(name: str, info: object, payload_len: int) -> None:
    if not isinstance(info, dict):
        raise lora_load_failed("LoRA header entry is malformed", tensor=name)
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in FLOAT_DTYPES:
        raise lora_load_failed("LoRA tensor is not a float tensor", tensor=name, dtype=str(dtype))
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise lora_load_failed("LoRA tensor shape is malformed", tensor=name)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise lora_load_failed("LoRA tensor offsets are malformed", tensor=name)
    begin, end = offsets
    expected = math.prod(shape) * FLOAT_DTYPES[dtype]
    # A header that claims tensors bigger than the file is refused here, before anything is allocated.
    if not (0 <= begin <= end <= payload_len) or end - begin != expected:
        raise lora_load_failed(
            "LoRA tensor does not fit the file (truncated or forged header)",
            tensor=name,
            claimed_bytes=expected,
            payload_bytes=payload_len,
        )


def parse_lora(data: bytes) -> LoraTensors:
    """Parse safetensors bytes into CPU tensors; refuse anything else, non-float tensors and NaN/Inf."""
    _check_header(data)
    try:
        tensors = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own SafetensorError and others on corrupt input
        raise lora_load_failed("LoRA file is not valid safetensors", reason=str(exc)[:200]) from None
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise lora_load_failed("LoRA tensor holds NaN or Inf values", tensor=name)
    return tensors
