"""Verify a LoRA file from one pass over its bytes: sha256, safetensors header and SDXL fit come from the same bytes."""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from contracts.lora_keys import LoraRejectedError, LoraSummary, check_lora_tensors
from contracts.lora_targets import TargetTable
from contracts.safetensors_header import (
    HEADER_LENGTH_BYTES,
    MAX_HEADER_BYTES,
    NOT_SAFETENSORS,
    NotSafetensorsError,
    check_header,
    header_length,
)

# A pickle starts with the PROTO opcode; torch.save writes a zip archive. Neither is ever opened here.
_PICKLE_PREFIXES = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


class RejectReason(StrEnum):
    """Why a file is refused before a LoRA is ever loaded (besides those of contracts.lora_keys)."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    PICKLE = "pickle"
    SIZE_MISMATCH = "size_mismatch"
    INVALID_VALUES = "invalid_values"


# How a scalar of each float dtype is stored (bf16 is the top half of an f32).
_SCALAR_FORMATS = {"F16": "<e", "F32": "<f", "F64": "<d"}
ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True)
class VerifiedLora:
    """A file that passed every check, described by the bytes that were checked."""

    sha256: str
    size_bytes: int
    summary: LoraSummary
    metadata: Mapping[str, str]


class LoraVerifier:
    """Fed a file's bytes once, in order; `finish` says whether they are a LoRA for the table's base model.

    The hash and the header come from the very bytes that are fed (and that the caller stores), so nothing
    can change the file between its check and its use.
    """

    def __init__(self, table: TargetTable, *, max_bytes: int, declared_size: int | None) -> None:
        self._table = table
        self._max_bytes = max_bytes
        self._declared_size = declared_size
        self._digest = hashlib.sha256()
        self._size = 0
        # The first 8 bytes and the JSON header, kept until parsed; the tensor data only passes through.
        self._head = bytearray()
        self._head_limit = HEADER_LENGTH_BYTES

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk; refuses early what can be refused before the end (size, pickle, header length)."""
        self._size += len(chunk)
        if self._size > self._max_bytes:
            raise too_large(self._max_bytes)
        self._digest.update(chunk)
        rest = chunk
        if len(self._head) < HEADER_LENGTH_BYTES:
            take = HEADER_LENGTH_BYTES - len(self._head)
            self._head += chunk[:take]
            rest = chunk[take:]
            if len(self._head) == HEADER_LENGTH_BYTES:
                self._on_prefix(bytes(self._head))
        missing = self._head_limit - len(self._head)
        if missing > 0:
            self._head += rest[:missing]

    def finish(self, read_at: ReadAt) -> VerifiedLora:
        """The verdict once every byte was fed: a VerifiedLora, or LoraRejectedError with the reason.

        `read_at(offset, length)` reads back bytes that were fed (the alpha scalars: the header holds no values).
        """
        if self._size == 0:
            raise LoraRejectedError(RejectReason.EMPTY, "the file is empty")
        if self._declared_size is not None and self._size != self._declared_size:
            raise LoraRejectedError(
                RejectReason.SIZE_MISMATCH, f"the file is {self._size} bytes but {self._declared_size} were declared"
            )
        try:
            length = header_length(bytes(self._head[:HEADER_LENGTH_BYTES]), self._size)
            header = check_header(bytes(self._head[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length]), self._size)
            alphas = alpha_values(header.tensors, HEADER_LENGTH_BYTES + length, read_at)
            summary = check_lora_tensors(header.tensors, self._table, alpha_values=alphas)
        except NotSafetensorsError as error:
            raise LoraRejectedError(error.reason, f"not a safetensors file of float tensors: {error}") from None
        return VerifiedLora(self._digest.hexdigest(), self._size, summary, dict(header.metadata or {}))

    def _on_prefix(self, prefix: bytes) -> None:
        if prefix.startswith(_PICKLE_PREFIXES):
            raise LoraRejectedError(
                RejectReason.PICKLE, "a pickle or PyTorch checkpoint: only .safetensors files are accepted"
            )
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES:
            # Checked again in finish() with the file's size; here it only stops reading a file already lost.
            raise LoraRejectedError(NOT_SAFETENSORS, f"header length {length} is over {MAX_HEADER_BYTES} bytes")
        self._head_limit = HEADER_LENGTH_BYTES + length


def alpha_values(tensors: Mapping[str, Mapping[str, object]], data_start: int, read_at: ReadAt) -> dict[str, float]:
    """The value of each scalar `.alpha` tensor (kohya's per-layer scale); refuses NaN and infinities."""
    values: dict[str, float] = {}
    for name, entry in tensors.items():
        shape, offsets, dtype = entry["shape"], entry["data_offsets"], entry["dtype"]
        if not name.endswith(".alpha") or not isinstance(shape, list) or math.prod(shape) != 1:
            continue
        assert isinstance(offsets, list) and isinstance(dtype, str)  # checked by check_header
        raw = read_at(data_start + offsets[0], offsets[1] - offsets[0])
        value = (
            struct.unpack("<f", b"\0\0" + raw)[0] if dtype == "BF16" else struct.unpack(_SCALAR_FORMATS[dtype], raw)[0]
        )
        if not math.isfinite(value):
            raise LoraRejectedError(RejectReason.INVALID_VALUES, f"tensor {name[:120]!r} is {value}")
        values[name] = float(value)
    return values


def too_large(max_bytes: int) -> LoraRejectedError:
    """The refusal of a file over the cap."""
    return LoraRejectedError(RejectReason.TOO_LARGE, f"the file is over the limit of {max_bytes} bytes")
