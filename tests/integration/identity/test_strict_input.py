"""Strict input: no coercion, no unknown fields, no control characters; malformed JSON is a 422 in the one shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.auth import bearer, new_owner
from tests.support.identity.client import new_avatar


@pytest.fixture
def auth() -> dict[str, str]:
    return bearer(new_owner())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"size_bytes": "100"}, "size_bytes"),
        ({"size_bytes": 100.5}, "size_bytes"),
        ({"size_bytes": True}, "size_bytes"),
        ({"size_bytes": 100, "default_scale": "0.5"}, "default_scale"),
        ({"size_bytes": 100, "default_scale": True}, "default_scale"),
        ({"size_bytes": 100, "default_scale": 2.5}, "default_scale"),
        ({"size_bytes": 100, "activate": "yes"}, "activate"),
        ({"size_bytes": 100, "trigger_words": "sks"}, "trigger_words"),
        ({"size_bytes": 100, "trigger_words": ["new\nline"]}, "trigger_words.0"),
        ({"size_bytes": 100, "trigger_words": [" "]}, "trigger_words.0"),
        ({"size_bytes": 100, "trigger_words": ["w"] * 51}, "trigger_words"),
        ({"size_bytes": 100, "upload_to": "elsewhere"}, "upload_to"),
        ({}, "size_bytes"),
    ],
)
async def test_a_registration_that_is_not_exactly_right_is_a_422_naming_the_field(
    identity: httpx.AsyncClient, auth: dict[str, str], body: dict[str, Any], field: str
) -> None:
    avatar = await new_avatar(identity, auth)

    response = await identity.post(f"/api/v1/avatars/{avatar['id']}/loras", json=body, headers=auth)

    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["details"]["fields"]] == [field]


@pytest.mark.parametrize(
    "name",
    ["", "   ", "x" * 101, "nul\x00byte", "esc\x1b[31m", "line\nbreak", "c1\x85control", "tab\tinside"],
)
async def test_an_avatar_name_must_be_one_line_of_1_to_100_visible_characters(
    identity: httpx.AsyncClient, auth: dict[str, str], name: str
) -> None:
    response = await identity.post("/api/v1/avatars", json={"name": name}, headers=auth)

    assert response.status_code == 422
    assert [f["field"] for f in response.json()["details"]["fields"]] == ["name"]


async def test_names_are_stored_in_one_unicode_spelling(identity: httpx.AsyncClient, auth: dict[str, str]) -> None:
    decomposed = "Rene\u0301e"  # e + combining acute accent

    response = await identity.post("/api/v1/avatars", json={"name": decomposed}, headers=auth)

    assert response.json()["name"] == "Ren\u00e9e"


async def test_a_description_may_break_lines_but_not_hold_other_control_characters(
    identity: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    fine = await identity.post("/api/v1/avatars", json={"name": "V", "description": "a\nb"}, headers=auth)
    tab = await identity.post("/api/v1/avatars", json={"name": "V", "description": "a\tb"}, headers=auth)
    long = await identity.post("/api/v1/avatars", json={"name": "V", "description": "d" * 1001}, headers=auth)

    assert fine.status_code == 201
    assert (tab.status_code, long.status_code) == (422, 422)


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"name": "V"', "application/json"),
        (b"name=V", "application/x-www-form-urlencoded"),
        (b'["V"]', "application/json"),
        (b"\xff\xfe{}", "application/json"),
        (b"\xc3\x28\x14z\x04\x1eUxv", "application/json"),
        (b"", "application/json"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_a_422_in_the_uniform_shape(
    identity: httpx.AsyncClient, auth: dict[str, str], content: bytes, content_type: str
) -> None:
    response = await identity.post("/api/v1/avatars", content=content, headers={**auth, "content-type": content_type})

    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"error", "error_code", "details"}
    assert body["error_code"] == "INVALID_REQUEST"
    assert body["details"]["fields"]


@pytest.mark.parametrize("path", ["/api/v1/avatars/not-a-uuid", "/api/v1/loras/123", "/api/v1/avatars/1/loras"])
async def test_an_id_that_is_not_a_uuid_is_a_422_naming_it(
    identity: httpx.AsyncClient, auth: dict[str, str], path: str
) -> None:
    response = await identity.get(path, headers=auth)

    assert response.status_code == 422
    assert response.json()["details"]["fields"][0]["field"] in {"avatar_id", "lora_id"}


async def test_an_integral_number_written_with_a_fraction_is_still_an_integer(
    identity: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    avatar = await new_avatar(identity, auth)

    response = await identity.post(f"/api/v1/avatars/{avatar['id']}/loras", json={"size_bytes": 100.0}, headers=auth)

    # JSON Schema counts 100.0 as an integer; only the fraction, strings and booleans are refused.
    assert response.status_code == 201
    assert response.json()["size_bytes"] == 100


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/v1/avatars", "GET, POST"),
        ("OPTIONS", "/api/v1/avatars/00000000-0000-0000-0000-000000000000", "DELETE, GET, PATCH"),
    ],
)
async def test_a_method_a_path_does_not_serve_is_a_405_listing_every_method_it_does(
    identity: httpx.AsyncClient, auth: dict[str, str], method: str, path: str, allowed: str
) -> None:
    response = await identity.request(method, path, headers=auth)

    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["error_code"] == "INVALID_REQUEST"
