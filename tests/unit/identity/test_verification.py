"""The one-pass LoRA verifier: the same verdict however the bytes are chunked, and a reason for every refusal."""

from __future__ import annotations

import hashlib
import pickle
import struct

import pytest

from contracts.lora_keys import LoraRejectedError
from contracts.lora_targets import load_target_table
from services.identity.verification import LoraVerifier, VerifiedLora
from tests.support.lora_headers import (
    SDXL,
    checkpoint_file,
    flux_lora_file,
    ia3_file,
    loha_file,
    lora_file,
    lora_tensors,
    sd15_lora_file,
)
from tests.support.safetensors_bytes import with_header

TABLE = load_target_table(SDXL)
MAX_BYTES = 1024 * 1024


def verify(data: bytes, chunk: int = 65536, declared: int | None = None, max_bytes: int = MAX_BYTES) -> VerifiedLora:
    verifier = LoraVerifier(TABLE, max_bytes=max_bytes, declared_size=declared)
    for start in range(0, len(data), chunk):
        verifier.feed(data[start : start + chunk])
    return verifier.finish(lambda offset, length: data[offset : offset + length])


def reason_of(data: bytes, **options: int | None) -> str:
    with pytest.raises(LoraRejectedError) as caught:
        verify(data, **options)  # type: ignore[arg-type]
    return caught.value.reason


@pytest.mark.parametrize("chunk", [1, 3, 7, 8, 9, 100, 10**7])
def test_the_verdict_does_not_depend_on_how_the_bytes_arrive(chunk: int) -> None:
    data = lora_file(metadata={"ss_network_dim": "4"})

    verified = verify(data, chunk=chunk)

    assert verified.sha256 == hashlib.sha256(data).hexdigest()
    assert verified.size_bytes == len(data)
    assert (verified.summary.rank, verified.summary.layer_count) == (4, 5)
    assert verified.metadata == {"ss_network_dim": "4"}


@pytest.mark.parametrize(
    ("dtype", "raw"),
    [
        ("F32", struct.pack("<f", 8.0)),
        ("F16", struct.pack("<e", 8.0)),
        ("F64", struct.pack("<d", 8.0)),
        ("BF16", struct.pack("<f", 8.0)[2:]),
    ],
)
def test_alpha_scalars_are_read_from_the_same_bytes_in_every_float_dtype(dtype: str, raw: bytes) -> None:
    tensors = lora_tensors(layers=(("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),))
    header: dict[str, object] = {}
    data = b""
    for name, (tensor_dtype, shape) in tensors.items():
        size = 2 * shape[0] * shape[1]
        header[name] = {"dtype": tensor_dtype, "shape": shape, "data_offsets": [len(data), len(data) + size]}
        data += bytes(size)
    stem = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    header[f"{stem}.alpha"] = {"dtype": dtype, "shape": [], "data_offsets": [len(data), len(data) + len(raw)]}
    data += raw

    assert verify(with_header(header, data), chunk=5).summary.alpha == 8.0


def test_a_nan_alpha_is_refused() -> None:
    stem = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    header = {
        f"{stem}.lora_A.weight": {"dtype": "F32", "shape": [1, 640], "data_offsets": [0, 2560]},
        f"{stem}.lora_B.weight": {"dtype": "F32", "shape": [640, 1], "data_offsets": [2560, 5120]},
        f"{stem}.alpha": {"dtype": "F32", "shape": [], "data_offsets": [5120, 5124]},
    }
    assert reason_of(with_header(header, bytes(5120) + struct.pack("<f", float("nan")))) == "invalid_values"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (pickle.dumps({"unet.lora.down.weight": [1.0]}), "pickle"),
        (b"PK\x03\x04" + bytes(100), "pickle"),
        (bytes(range(256)) * 10, "not_safetensors"),
        (lora_file()[:-100], "truncated"),
        (with_header({"t": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)), "unsupported_dtype"),
        (sd15_lora_file(), "wrong_architecture"),
        (flux_lora_file(), "wrong_architecture"),
        (ia3_file(), "unsupported_format"),
        (loha_file(complete=False), "incomplete_layer"),
        (checkpoint_file(), "no_lora_weights"),
    ],
)
def test_every_refusal_carries_its_reason(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


def test_a_lycoris_loha_is_accepted_with_its_rank_and_alpha() -> None:
    summary = verify(loha_file()).summary
    # The pattern-filled data reads as an fp16 alpha; what matters is that the layer's alpha is read and counted.
    assert (summary.rank, summary.layer_count, summary.alpha_layers) == (4, 1, 1)
    assert summary.target_modules == ("to_q",)


def test_a_file_over_the_cap_is_refused_as_soon_as_the_cap_is_passed() -> None:
    data = lora_file()
    verifier = LoraVerifier(TABLE, max_bytes=len(data) - 1, declared_size=None)

    with pytest.raises(LoraRejectedError) as caught:
        verifier.feed(data)

    assert caught.value.reason == "too_large"


def test_a_file_of_another_size_than_declared_is_refused() -> None:
    data = lora_file()

    assert reason_of(data, declared=len(data) + 1) == "size_mismatch"


def test_a_header_length_no_file_could_have_stops_the_read_at_the_eighth_byte() -> None:
    verifier = LoraVerifier(TABLE, max_bytes=MAX_BYTES, declared_size=None)

    with pytest.raises(LoraRejectedError) as caught:
        verifier.feed(struct.pack("<Q", 2**40))

    assert caught.value.reason == "not_safetensors"


def test_a_refusal_message_is_bounded() -> None:
    name = "unet." + "x" * 5000 + ".lora_A.weight"

    with pytest.raises(LoraRejectedError) as caught:
        verify(with_header({name: {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}, bytes(2)))

    assert len(caught.value.message) <= 500
