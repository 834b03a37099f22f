"""Files that must never load as a LoRA: each builds its bytes from a real LoRA or from scratch."""

import io
import json
import os
import pickle
import struct
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors


class _WritesMarker:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def pickle_file(marker: Path) -> bytes:
    return pickle.dumps({"unet.lora.down.weight": _WritesMarker(marker)})


def torch_pickle_file(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"payload": _WritesMarker(marker)}, buffer)
    return buffer.getvalue()


def truncated(valid: bytes) -> bytes:
    return valid[: len(valid) // 2]


def huge_header() -> bytes:
    header = {"unet.x.lora.down.weight": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 4 * 10**10]}}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * 64


def with_nan(valid: bytes) -> bytes:
    tensors = load_safetensors(valid)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].clone()
    tensors[first][0, 0] = float("nan")
    return save_safetensors(tensors)


def with_int_tensor(valid: bytes) -> bytes:
    tensors = load_safetensors(valid)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].to(torch.int32)
    return save_safetensors(tensors)


def without_lora_keys() -> bytes:
    return save_safetensors({"model.weight": torch.ones(4, 4)})


def random_bytes() -> bytes:
    return os.urandom(64 * 1024)


def bad_lora_files(valid: bytes, marker: Path) -> dict[str, bytes]:
    """Name → bytes for every kind of bad file the worker must refuse with LORA_LOAD_FAILED."""
    return {
        "pickle": pickle_file(marker),
        "torch_pickle": torch_pickle_file(marker),
        "empty": b"",
        "truncated": truncated(valid),
        "huge_header": huge_header(),
        "nan_weights": with_nan(valid),
        "int_tensor": with_int_tensor(valid),
        "no_lora_keys": without_lora_keys(),
        "random_bytes": random_bytes(),
    }
