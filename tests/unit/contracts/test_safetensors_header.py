"""The cheap safetensors check: well-formed files pass; everything a worker would refuse is refused with a reason."""

from __future__ import annotations

import os
import struct

import pytest

from contracts.safetensors_header import (
    MAX_HEADER_BYTES,
    NotSafetensorsError,
    check_header,
    header_length,
)
from tests.support.safetensors_bytes import safetensors_bytes, with_header


def _check(data: bytes) -> int:
    length = header_length(data[:8], len(data))
    return check_header(data[8 : 8 + length], len(data)).tensor_count


def test_a_well_formed_file_passes_and_reports_its_tensors() -> None:
    assert _check(safetensors_bytes()) == 2
    assert _check(safetensors_bytes(metadata={"format": "pt"})) == 2


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (b"\x00" * 7, "too short"),
        (struct.pack("<Q", 0) + b"{}", "zero"),
        (struct.pack("<Q", 1000) + b"{}", "past the end"),
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}" * 10, "over"),
    ],
)
def test_a_bad_header_length_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(NotSafetensorsError, match=reason):
        _check(data)


def test_random_bytes_are_refused() -> None:
    # Random bytes read as a header length far past the end of the file.
    with pytest.raises(NotSafetensorsError):
        _check(os.urandom(4096))


def test_a_pickle_is_refused() -> None:
    with pytest.raises(NotSafetensorsError):
        _check(b"\x80\x04\x95" + os.urandom(200))


F32_4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}


@pytest.mark.parametrize(
    ("header", "data", "reason"),
    [
        ([1, 2], b"", "not a JSON object"),
        ({}, b"", "no tensors"),
        ({"__metadata__": {"a": "b"}}, b"", "no tensors"),
        ({"__metadata__": {"a": 1}, "t": F32_4}, bytes(16), "__metadata__"),
        ({"t": "oops"}, b"", "not an object"),
        ({"t": {**F32_4, "dtype": "I32"}}, bytes(16), "not a float type"),
        ({"t": {**F32_4, "shape": [-4]}}, bytes(16), "shape"),
        ({"t": {**F32_4, "data_offsets": [0]}}, bytes(16), "data_offsets"),
        ({"t": F32_4}, bytes(8), "past the end of the file"),
        ({"t": {**F32_4, "shape": [5]}}, bytes(16), "do not match its shape"),
        ({"t": F32_4}, bytes(20), "header covers 16 bytes"),
        ({"t": F32_4, "u": F32_4}, bytes(32), "holes or overlaps"),
    ],
)
def test_a_header_that_does_not_describe_the_data_is_refused(header: object, data: bytes, reason: str) -> None:
    with pytest.raises(NotSafetensorsError, match=reason):
        _check(with_header(header, data))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (with_header({"t": F32_4}, bytes(8)), "truncated"),
        (safetensors_bytes()[:-3], "truncated"),
        (struct.pack("<Q", 1000) + b"{}", "not_safetensors"),
        (with_header({"t": {**F32_4, "dtype": "I32"}}, bytes(16)), "unsupported_dtype"),
        (with_header({"t": F32_4}, bytes(20)), "not_safetensors"),
        (b"\x80\x04\x95" + bytes(200), "not_safetensors"),
    ],
)
def test_each_refusal_says_why_in_one_word(data: bytes, reason: str) -> None:
    with pytest.raises(NotSafetensorsError) as caught:
        _check(data)
    assert caught.value.reason == reason


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_a_header_nested_past_the_parsers_stack_is_refused_not_raised(opening: bytes) -> None:
    # 100,000 levels cost a few hundred KB, far under the header cap; json.loads raises RecursionError on them.
    depth = 100_000
    closing = b"]" if opening == b"[" else b"}"
    raw = opening * depth + (b"1" if closing == b"}" else b"") + closing * depth
    with pytest.raises(NotSafetensorsError, match="nested too deeply") as caught:
        _check(struct.pack("<Q", len(raw)) + raw)
    assert caught.value.reason == "not_safetensors"


def test_the_summary_holds_each_tensor_entry_and_the_metadata() -> None:
    data = safetensors_bytes({"a": ("F16", [2, 3])}, metadata={"ss_network_dim": "2"})
    length = header_length(data[:8], len(data))
    summary = check_header(data[8 : 8 + length], len(data))
    assert summary.tensors == {"a": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]}}
    assert summary.metadata == {"ss_network_dim": "2"}


def test_a_header_that_is_not_json_is_refused() -> None:
    raw = b"not json at all"
    with pytest.raises(NotSafetensorsError, match="not UTF-8 JSON"):
        _check(struct.pack("<Q", len(raw)) + raw)


def test_the_reason_quotes_at_most_a_short_piece_of_a_tensor_name() -> None:
    with pytest.raises(NotSafetensorsError) as caught:
        _check(with_header({"x" * 10_000: "oops"}))
    assert len(str(caught.value)) < 200
