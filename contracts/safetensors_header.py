"""Safetensors header rules every LoRA object must pass: identity at upload, the worker before loading."""

from __future__ import annotations

# stdlib only: contracts imports nothing of the project and no third-party package but pydantic.
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# safetensors layout: an 8-byte little-endian header length N, N bytes of JSON, then the tensor data.
HEADER_LENGTH_BYTES = 8
# One rule set for identity (from a ranged read of the header) and the worker (from the whole file).
MAX_HEADER_BYTES = 16 * 1024 * 1024
FLOAT_DTYPE_BYTES: dict[str, int] = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_NAME_IN_REASON = 80


# Why a file is refused, finer than the message (identity records it as the LoRA's rejection reason).
NOT_SAFETENSORS = "not_safetensors"
TRUNCATED = "truncated"
UNSUPPORTED_DTYPE = "unsupported_dtype"


class NotSafetensorsError(ValueError):
    """The object is not a safetensors file the worker would load; the message says why, `reason` in one word."""

    def __init__(self, message: str, reason: str = NOT_SAFETENSORS) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class HeaderSummary:
    """What the header says: every tensor's entry (dtype, shape, data_offsets) and the string metadata."""

    tensors: Mapping[str, Mapping[str, object]]
    metadata: Mapping[str, str] | None = field(default=None)

    @property
    def tensor_count(self) -> int:
        return len(self.tensors)

    @property
    def has_metadata(self) -> bool:
        return self.metadata is not None


def header_length(prefix: bytes, object_size: int) -> int:
    """The JSON header's length from the first 8 bytes, checked against the object's size."""
    if object_size < HEADER_LENGTH_BYTES + 2 or len(prefix) < HEADER_LENGTH_BYTES:
        raise NotSafetensorsError(f"file is {object_size} bytes: too short to be safetensors")
    length = int.from_bytes(prefix[:HEADER_LENGTH_BYTES], "little")
    if length < 2:
        raise NotSafetensorsError("header length is zero: not safetensors")
    if length > MAX_HEADER_BYTES:
        raise NotSafetensorsError(f"header length {length} is over {MAX_HEADER_BYTES} bytes: not safetensors")
    if HEADER_LENGTH_BYTES + length > object_size:
        # Random bytes and pickles read as such a length as often as a file cut inside its header does.
        raise NotSafetensorsError(f"header length {length} runs past the end of the file: not safetensors")
    return length


def check_header(header: bytes, object_size: int) -> HeaderSummary:
    """Parse the JSON header and check every tensor entry against the data that follows it."""
    data_size = object_size - HEADER_LENGTH_BYTES - len(header)
    try:
        parsed = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise NotSafetensorsError("header is not UTF-8 JSON: not safetensors") from None
    except RecursionError:
        # Deeply nested arrays or objects (a few bytes per level) exhaust the parser's stack long before the cap.
        raise NotSafetensorsError("header JSON is nested too deeply: not safetensors") from None
    if not isinstance(parsed, dict):
        raise NotSafetensorsError("header is not a JSON object: not safetensors")
    metadata = parsed.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise NotSafetensorsError("__metadata__ must map names to strings")
    if not parsed:
        raise NotSafetensorsError("file holds no tensors")
    spans = sorted(_tensor_span(str(name), entry, data_size) for name, entry in parsed.items())
    # safetensors itself refuses holes and overlaps: the tensors must tile the data exactly.
    position = 0
    for begin, end in spans:
        if begin != position:
            raise NotSafetensorsError("tensor data has holes or overlaps: not safetensors")
        position = end
    if position != data_size:
        reason = TRUNCATED if position > data_size else NOT_SAFETENSORS
        raise NotSafetensorsError(f"header covers {position} bytes of data but the file has {data_size}", reason)
    return HeaderSummary(tensors=parsed, metadata=metadata)


def _tensor_span(name: str, entry: object, data_size: int) -> tuple[int, int]:
    label = name[:_NAME_IN_REASON]
    if not isinstance(entry, dict):
        raise NotSafetensorsError(f"tensor {label!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in FLOAT_DTYPE_BYTES:
        raise NotSafetensorsError(f"tensor {label!r}: dtype {str(dtype)[:16]!r} is not a float type", UNSUPPORTED_DTYPE)
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise NotSafetensorsError(f"tensor {label!r}: shape is malformed")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise NotSafetensorsError(f"tensor {label!r}: data_offsets are malformed")
    begin, end = offsets
    if end - begin != math.prod(shape) * FLOAT_DTYPE_BYTES[dtype] or begin > end:
        raise NotSafetensorsError(f"tensor {label!r}: data_offsets do not match its shape and dtype")
    if end > data_size:
        raise NotSafetensorsError(f"tensor {label!r}: runs past the end of the file (truncated)", TRUNCATED)
    return begin, end


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_file(data: bytes) -> HeaderSummary:
    """Both checks over a whole file in memory (the worker's case)."""
    length = header_length(data[:HEADER_LENGTH_BYTES], len(data))
    return check_header(data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length], len(data))
