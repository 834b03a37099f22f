"""Why a LoRA file is refused: the stable reason codes and the one exception that carries them (no torch)."""

from __future__ import annotations

from enum import StrEnum

# The longest sentence a rejection keeps: identity stores it on the version and shows it to the creator.
REJECTION_MESSAGE_LIMIT = 500
_NAME_IN_MESSAGE = 120


class LoraRejectReason(StrEnum):
    """Why a file is not a LoRA the worker can apply to this base model (stable codes)."""

    NO_LORA_WEIGHTS = "no_lora_weights"  # no adapter weight at all (a checkpoint, an embedding)
    UNSUPPORTED_FORMAT = "unsupported_format"  # other adapter kinds ((IA)^3, OFT, …), stray tensors, mixed formats
    WRONG_ARCHITECTURE = "wrong_architecture"  # names a module the base model does not have (SD1.5, Flux, SD3)
    SHAPE_MISMATCH = "shape_mismatch"  # the module exists but the weights do not fit it
    INCOMPLETE_LAYER = "incomplete_layer"  # a part of a layer's adapter without the others it needs
    RANK_TOO_LARGE = "rank_too_large"  # a rank over MAX_RANK, or more numbers than a MAX_RANK LoRA of the layer


class LoraRejectedError(ValueError):
    """The file is refused; `reason` is the stable code (a LoraRejectReason here, identity adds file-level ones),
    `message` the sentence for the creator (bounded), naming the first offending key where there is one."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message[:REJECTION_MESSAGE_LIMIT]


def rejected(reason: LoraRejectReason, name: str, problem: str) -> LoraRejectedError:
    """The refusal of tensor `name` (shortened) for `problem`."""
    label = name if len(name) <= _NAME_IN_MESSAGE else name[: _NAME_IN_MESSAGE - 1] + "…"
    return LoraRejectedError(reason, f"LoRA tensor {label!r} {problem}")
