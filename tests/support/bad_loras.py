"""The hostile LoRA corpus: every kind of file identity and the worker must refuse, and what each place answers.

One source for identity's tests (the reason code of `complete`, docs/identity.md) and the worker's (the error code
and a fragment of its message or details, docs/worker.md). Each case is built from a real LoRA of the tiny SDXL
(`lora_files["a"]`) or from scratch, so both places judge the same bytes against the same model
(`tiny-sdxl-random`). A case one place accepts by design says so here (ACCEPTED), with the reason why.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from contracts.errors import WorkerErrorCode
from contracts.lora_keys import MAX_RANK
from contracts.lora_targets import load_target_table

# The base model both places check the corpus against: the tiny SDXL the worker's tests really load.
CORPUS_BASE_MODEL = "tiny-sdxl-random"
ACCEPTED = "accepted"
_LOAD_FAILED = WorkerErrorCode.LORA_LOAD_FAILED


@dataclass(frozen=True)
class WorkerVerdict:
    """How the worker answers a file: its error code and a fragment of its message or details (None: it loads it)."""

    code: WorkerErrorCode | None
    says: str = ""


WORKER_LOADS_IT = WorkerVerdict(None)


@dataclass(frozen=True)
class HostileLora:
    """One file of the corpus and its expected outcome in each place."""

    name: str
    data: bytes
    # identity's `details.reason_code` on `complete`, or ACCEPTED
    identity: str
    worker: WorkerVerdict
    why: str
    # the name the worker downloads it under (the URL's last segment); neither place decides by the name
    file_name: str = "lora.safetensors"


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


def _header_file(header: object, data: bytes = b"\0" * 64) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def huge_header() -> bytes:
    """A header whose one tensor claims 4 TB of data (a reader that trusts it allocates them)."""
    shape = [1_000_000, 1_000_000]
    return _header_file({"unet.x.lora.down.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4 * 10**12]}})


def header_length_terabytes() -> bytes:
    """The 8-byte prefix claims a 1 TB JSON header."""
    return struct.pack("<Q", 10**12) + b'{"a": 1}' + b"\0" * 64


def header_length_past_end(valid: bytes) -> bytes:
    """A real file whose header length runs past the end of the file (but under the header cap)."""
    return struct.pack("<Q", len(valid) + 100) + valid[8:]


def json_nesting_bomb() -> bytes:
    """A header of 100,000 nested JSON arrays: a recursive parser runs out of stack."""
    depth = 100_000
    return _raw_header(b"[" * depth + b"]" * depth)


def _raw_header(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def overlapping_tensors() -> bytes:
    """Two tensors aliasing the same bytes (safetensors forbids holes and overlaps)."""
    header = {
        "unet.a.lora.down.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "unet.a.lora.up.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
    }
    return _header_file(header, b"\0" * 16)


def non_string_metadata(valid: bytes) -> bytes:
    """The real LoRA with a number in `__metadata__`, where safetensors allows only strings."""
    length = int.from_bytes(valid[:8], "little")
    header = json.loads(valid[8 : 8 + length])
    header["__metadata__"] = {"ss_network_dim": 4}
    return _raw_header(json.dumps(header).encode()) + valid[8 + length :]


def _edited(valid: bytes, edit: Callable[[dict[str, torch.Tensor]], None]) -> bytes:
    tensors = {name: tensor.clone() for name, tensor in load_safetensors(valid).items()}
    edit(tensors)
    return save_safetensors(tensors)


def _first(tensors: dict[str, torch.Tensor], side: str = "down") -> str:
    return next(name for name in sorted(tensors) if f"lora.{side}." in name)


def with_value(valid: bytes, value: float) -> bytes:
    """The real LoRA with one weight set to `value` (NaN or an infinity): only its data changes."""

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[_first(tensors)][0, 0] = value

    return _edited(valid, edit)


def with_nan(valid: bytes) -> bytes:
    return with_value(valid, float("nan"))


def with_nan_alpha(valid: bytes) -> bytes:
    """A kohya-style alpha scalar beside a layer, whose value is NaN."""

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        layer = _first(tensors).removesuffix(".lora.down.weight")
        tensors[f"{layer}.alpha"] = torch.tensor(float("nan"))

    return _edited(valid, edit)


def with_int_tensor(valid: bytes) -> bytes:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        first = sorted(tensors)[0]
        tensors[first] = tensors[first].to(torch.int32)

    return _edited(valid, edit)


def without_up_weight(valid: bytes) -> bytes:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        del tensors[_first(tensors, "up")]

    return _edited(valid, edit)


def with_transposed_down(valid: bytes) -> bytes:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        name = _first(tensors)
        tensors[name] = tensors[name].t().contiguous()

    return _edited(valid, edit)


def with_rank_over_max() -> bytes:
    """One layer of rank MAX_RANK + 1, alone: the smallest Linear of the tiny SDXL, in F16, to stay under the cap."""
    table = load_target_table(CORPUS_BASE_MODEL)
    layers = (
        (shape, component, path) for component, paths in table.components.items() for path, shape in paths.items()
    )
    (out_features, in_features), component, path = min(item for item in layers if len(item[0]) == 2)
    rank = MAX_RANK + 1
    return save_safetensors(
        {
            f"{component}.{path}.lora_A.weight": torch.zeros(rank, in_features, dtype=torch.float16),
            f"{component}.{path}.lora_B.weight": torch.zeros(out_features, rank, dtype=torch.float16),
        }
    )


def with_dora_scale(valid: bytes) -> bytes:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        down = _first(tensors)
        layer = down.removesuffix(".lora.down.weight")
        tensors[f"{layer}.lora_magnitude_vector"] = torch.ones(tensors[down].shape[1])
        tensors[f"{layer}.dora_scale"] = torch.ones(1, tensors[down].shape[1])

    return _edited(valid, edit)


def without_lora_keys() -> bytes:
    return save_safetensors({"model.weight": torch.ones(4, 4)})


def flux_lora_file() -> bytes:
    """A LoRA for Flux (a transformer, no UNet)."""
    stem = "transformer.single_transformer_blocks.0.attn.to_q"
    return save_safetensors(
        {f"{stem}.lora_A.weight": torch.full((4, 64), 0.01), f"{stem}.lora_B.weight": torch.full((64, 4), 0.01)}
    )


LOHA_STEM = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"  # a 64×64 Linear of the tiny SDXL


def loha_tensors(stem: str = LOHA_STEM, width: int = 64, rank: int = 4) -> dict[str, torch.Tensor]:
    """A LyCORIS LoHa (kohya names) over a width×width Linear layer."""
    generator = torch.Generator().manual_seed(rank)
    return {
        f"{stem}.{part}": (torch.randn(*shape, generator=generator) * 0.1).to(torch.float16)
        for part, shape in (
            ("hada_w1_a", (width, rank)),
            ("hada_w1_b", (rank, width)),
            ("hada_w2_a", (width, rank)),
            ("hada_w2_b", (rank, width)),
        )
    } | {f"{stem}.alpha": torch.tensor(float(rank))}


def lycoris_file() -> bytes:
    """A LyCORIS LoHa over a layer the tiny SDXL has: both places fuse it."""
    return save_safetensors(loha_tensors())


def loha_edited(edit: Callable[[dict[str, torch.Tensor]], object]) -> bytes:
    tensors = loha_tensors()
    edit(tensors)
    return save_safetensors(tensors)


def loha_oversize() -> bytes:
    """A LoHa of rank 513 over a 32×32 text-encoder layer: more numbers than a rank-1024 LoRA of it."""
    return save_safetensors(loha_tensors("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", width=32, rank=513))


def lokr_wrong_shape() -> bytes:
    """LoKr factors whose Kronecker product is 64×72, over a 64×64 layer."""
    return save_safetensors(
        {f"{LOHA_STEM}.lokr_w1": torch.full((8, 8), 0.1), f"{LOHA_STEM}.lokr_w2": torch.full((8, 9), 0.1)}
    )


def mixed_formats() -> bytes:
    """LoHa factors and a LoRA down/up pair in one layer."""
    pair = {f"{LOHA_STEM}.lora_down.weight": torch.full((4, 64), 0.1), f"{LOHA_STEM}.lora_up.weight": torch.ones(64, 4)}
    return save_safetensors(loha_tensors() | pair)


def dora_scale_of_another_width() -> bytes:
    return save_safetensors(loha_tensors() | {f"{LOHA_STEM}.dora_scale": torch.ones(32, 1)})


def random_bytes() -> bytes:
    return random.Random(10).randbytes(64 * 1024)


def over_the_cap(max_bytes: int) -> bytes:
    """A well-formed safetensors file one tensor larger than the cap both places are configured with."""
    return save_safetensors({"unet.x.lora.down.weight": torch.zeros(max_bytes // 4 + 16)})


# The names of the corpus, known at collection time (the bytes need the tiny LoRA, built by a fixture).
CASE_NAMES = (
    "pickle",
    "torch_pickle",
    "random_bytes",
    "empty",
    "truncated",
    "header_length_past_end",
    "header_length_terabytes",
    "header_claims_terabytes",
    "json_nesting_bomb",
    "overlapping_tensors",
    "non_string_metadata",
    "int_tensor",
    "nan_weights",
    "inf_weights",
    "nan_alpha",
    "sd15_lora",
    "flux_lora",
    "lycoris_loha",
    "loha_missing_part",
    "loha_nan",
    "loha_oversize",
    "lokr_wrong_shape",
    "mixed_formats",
    "dora_scale_wrong_shape",
    "no_lora_keys",
    "dora",
    "incomplete_layer",
    "shape_mismatch",
    "rank_too_large",
    "over_the_cap",
    "valid_named_ckpt",
    "valid_named_pt",
)


def hostile_loras(valid: bytes, sd15: bytes, marker: Path, max_bytes: int) -> dict[str, HostileLora]:
    """The corpus, name → case: `valid` and `sd15` are real LoRAs of the tiny SDXL and of an SD1.5-shaped UNet,
    `marker` the file a pickle payload creates if anything unpickles it, `max_bytes` both places' size cap."""
    not_safetensors = WorkerVerdict(_LOAD_FAILED, "not a safetensors file")
    cases = [
        HostileLora("pickle", pickle_file(marker), "pickle", not_safetensors, "a pickle whose payload writes a file"),
        HostileLora("torch_pickle", torch_pickle_file(marker), "pickle", not_safetensors, "torch.save's zip pickle"),
        HostileLora("random_bytes", random_bytes(), "not_safetensors", not_safetensors, "64 KiB of seeded noise"),
        HostileLora("empty", b"", "empty", WorkerVerdict(_LOAD_FAILED, "too short"), "no bytes at all"),
        HostileLora(
            "truncated", truncated(valid), "truncated", WorkerVerdict(_LOAD_FAILED, "truncated"), "cut in half"
        ),
        HostileLora(
            "header_length_past_end",
            header_length_past_end(valid),
            "not_safetensors",
            WorkerVerdict(_LOAD_FAILED, "runs past the end of the file"),
            "the 8-byte header length points past the file's end",
        ),
        HostileLora(
            "header_length_terabytes",
            header_length_terabytes(),
            "not_safetensors",
            WorkerVerdict(_LOAD_FAILED, "header length"),
            "the 8-byte header length claims a 1 TB header",
        ),
        HostileLora(
            "header_claims_terabytes",
            huge_header(),
            "truncated",
            WorkerVerdict(_LOAD_FAILED, "runs past the end of the file"),
            "a tensor of 4 TB in a 64-byte file: refused before anything is allocated",
        ),
        HostileLora(
            "json_nesting_bomb",
            json_nesting_bomb(),
            "not_safetensors",
            WorkerVerdict(_LOAD_FAILED, "nested too deeply"),
            "100,000 nested JSON arrays as the header",
        ),
        HostileLora(
            "overlapping_tensors",
            overlapping_tensors(),
            "not_safetensors",
            WorkerVerdict(_LOAD_FAILED, "holes or overlaps"),
            "two tensors aliasing the same bytes",
        ),
        HostileLora(
            "non_string_metadata",
            non_string_metadata(valid),
            "not_safetensors",
            WorkerVerdict(_LOAD_FAILED, "__metadata__"),
            "__metadata__ with a number where safetensors allows only strings",
        ),
        HostileLora(
            "int_tensor",
            with_int_tensor(valid),
            "unsupported_dtype",
            WorkerVerdict(_LOAD_FAILED, "not a float type"),
            "an int32 weight",
        ),
        HostileLora(
            "nan_weights",
            with_nan(valid),
            ACCEPTED,
            WorkerVerdict(_LOAD_FAILED, "NaN or Inf"),
            "identity reads only the header (and alpha scalars): a NaN weight is the worker's to refuse",
        ),
        HostileLora(
            "inf_weights",
            with_value(valid, float("inf")),
            ACCEPTED,
            WorkerVerdict(_LOAD_FAILED, "NaN or Inf"),
            "identity reads only the header (and alpha scalars): an infinite weight is the worker's to refuse",
        ),
        HostileLora(
            "nan_alpha",
            with_nan_alpha(valid),
            "invalid_values",
            WorkerVerdict(_LOAD_FAILED, "NaN or Inf"),
            "a NaN alpha scalar, which identity does read",
        ),
        HostileLora(
            "sd15_lora",
            sd15,
            "wrong_architecture",
            WorkerVerdict(_LOAD_FAILED, "a layer SDXL does not have"),
            "SD1.5 attention in the first down block, 32-wide cross-attention",
        ),
        HostileLora(
            "flux_lora",
            flux_lora_file(),
            "wrong_architecture",
            WorkerVerdict(_LOAD_FAILED, "targets nothing in SDXL"),
            "Flux keys",
        ),
        HostileLora(
            "lycoris_loha",
            lycoris_file(),
            ACCEPTED,
            WORKER_LOADS_IT,
            "a well-formed LyCORIS LoHa over a real layer: a format both places accept (contracts/lora_formats.py)",
        ),
        HostileLora(
            "loha_missing_part",
            loha_edited(lambda t: t.pop(f"{LOHA_STEM}.hada_w2_b")),
            "incomplete_layer",
            WorkerVerdict(_LOAD_FAILED, "has no hada_w2_b weight"),
            "a LoHa layer without one of its four factors",
        ),
        HostileLora(
            "loha_nan",
            loha_edited(lambda t: t[f"{LOHA_STEM}.hada_w1_a"].view(-1)[0].fill_(float("nan"))),
            ACCEPTED,
            WorkerVerdict(_LOAD_FAILED, "NaN or Inf"),
            "identity reads only the header (and alpha scalars): a NaN LoHa factor is the worker's to refuse",
        ),
        HostileLora(
            "loha_oversize",
            loha_oversize(),
            "rank_too_large",
            WorkerVerdict(_LOAD_FAILED, "rank-1024 LoRA"),
            "LoHa rank 513: its factors hold more numbers than a rank-1024 LoRA of the layer",
        ),
        HostileLora(
            "lokr_wrong_shape",
            lokr_wrong_shape(),
            "shape_mismatch",
            WorkerVerdict(_LOAD_FAILED, "does not fit"),
            "LoKr factors whose product is not the layer's shape",
        ),
        HostileLora(
            "mixed_formats",
            mixed_formats(),
            "unsupported_format",
            WorkerVerdict(_LOAD_FAILED, "mixes LoRA and LoHa"),
            "LoRA and LoHa weights in one layer",
        ),
        HostileLora(
            "dora_scale_wrong_shape",
            dora_scale_of_another_width(),
            "shape_mismatch",
            WorkerVerdict(_LOAD_FAILED, "dora_scale"),
            "a DoRA magnitude for 32 outputs on a 64-wide layer",
        ),
        HostileLora(
            "no_lora_keys",
            without_lora_keys(),
            "no_lora_weights",
            WorkerVerdict(_LOAD_FAILED, "targets nothing in SDXL"),
            "model weights, no adapter",
        ),
        HostileLora(
            "dora",
            with_dora_scale(valid),
            "unsupported_format",
            WorkerVerdict(_LOAD_FAILED, "second DoRA magnitude"),
            "both DoRA magnitudes (peft's and LyCORIS') on one layer",
        ),
        HostileLora(
            "incomplete_layer",
            without_up_weight(valid),
            "incomplete_layer",
            WorkerVerdict(_LOAD_FAILED, "without its pair"),
            "a down weight without its up weight",
        ),
        HostileLora(
            "shape_mismatch",
            with_transposed_down(valid),
            "shape_mismatch",
            WorkerVerdict(_LOAD_FAILED, "shapes do not fit"),
            "a down weight transposed",
        ),
        HostileLora(
            "rank_too_large",
            with_rank_over_max(),
            "rank_too_large",
            WorkerVerdict(_LOAD_FAILED, "shapes do not fit"),
            f"rank {MAX_RANK + 1}",
        ),
        HostileLora(
            "over_the_cap",
            over_the_cap(max_bytes),
            "too_large",
            WorkerVerdict(WorkerErrorCode.LORA_DOWNLOAD_FAILED, "larger than the cap"),
            "a well-formed file over LORA_MAX_BYTES",
        ),
        HostileLora(
            "valid_named_ckpt",
            valid,
            ACCEPTED,
            WORKER_LOADS_IT,
            "a real LoRA under a .ckpt name: identity names uploads itself and the worker sniffs the bytes, never the"
            " name, so a renamed safetensors file is the same LoRA (and a pickle named .safetensors is still refused)",
            file_name="vixen.ckpt",
        ),
        HostileLora(
            "valid_named_pt",
            valid,
            ACCEPTED,
            WORKER_LOADS_IT,
            "a real LoRA under a .pt name: accepted for the same reason",
            file_name="vixen.pt",
        ),
    ]
    corpus = {case.name: case for case in cases}
    assert tuple(corpus) == CASE_NAMES, "CASE_NAMES must list the corpus in order"
    return corpus
