"""Hand-built safetensors files (no torch): the layout is an 8-byte header length, JSON, then the data."""

from __future__ import annotations

import json
import math
import struct

DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I32": 4}


def safetensors_bytes(
    tensors: dict[str, tuple[str, list[int]]] | None = None, metadata: dict[str, str] | None = None
) -> bytes:
    """A well-formed safetensors file with the given tensors (name → dtype, shape), data filled with a pattern."""
    tensors = tensors or {
        "unet.down.lora_A.weight": ("F32", [4, 8]),
        "unet.down.lora_B.weight": ("F16", [8, 4]),
    }
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    data = bytes(i % 251 for i in range(offset))
    return struct.pack("<Q", len(raw)) + raw + data


def with_header(header: object, data: bytes = b"") -> bytes:
    """A file whose JSON header is `header` (anything JSON can write), followed by `data`."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data
