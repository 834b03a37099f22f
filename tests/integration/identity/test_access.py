"""Who may call what: every route needs a valid token; someone else's avatar or LoRA does not exist for you."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt
import pytest

from services.identity.main import create_app
from services.identity.settings import IdentitySettings
from tests.support.auth import TEST_JWT_SECRET, bearer, new_owner
from tests.support.identity.client import complete, new_avatar, uploaded
from tests.support.lora_headers import lora_file
from tests.support.stack.service_fixtures import serving

SAMPLE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/avatars"): {"name": "V"},
    ("PATCH", "/api/v1/avatars/{avatar_id}"): {"name": "W"},
    ("POST", "/api/v1/avatars/{avatar_id}/loras"): {"size_bytes": 100},
    ("POST", "/api/v1/admin/loras/import"): {"avatar_id": str(uuid.uuid4()), "object_key": "x"},
}


def api_routes(settings: IdentitySettings) -> list[tuple[str, str]]:
    """(method, path template) of every API route, from the app's own OpenAPI document: a route added later is
    checked without editing this test."""
    paths = create_app(settings).openapi()["paths"]
    routes = sorted((method.upper(), path) for path, item in paths.items() for method in item)
    assert len(routes) >= 12, routes  # never an empty loop that passes for want of routes
    return routes


def filled(path: str, avatar_id: str, lora_id: str) -> str:
    return path.replace("{avatar_id}", avatar_id).replace("{lora_id}", lora_id)


def token(**claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "user-1", "iat": now, "exp": now + 600, **claims}, TEST_JWT_SECRET, algorithm="HS256")


BAD_AUTHORIZATION = {
    "no token": None,
    "not bearer": "Basic dXNlcjpwYXNz",
    "garbage": "Bearer not.a.jwt",
    "bad signature": "Bearer " + jwt.encode({"sub": "u", "exp": int(time.time()) + 600}, "x" * 40, algorithm="HS256"),
    "expired": "Bearer " + token(exp=int(time.time()) - 3600),
    "no exp": "Bearer " + jwt.encode({"sub": "u"}, TEST_JWT_SECRET, algorithm="HS256"),
    "alg none": "Bearer " + jwt.encode({"sub": "u", "exp": int(time.time()) + 600}, None, algorithm="none"),
}


@pytest.mark.parametrize("case", sorted(BAD_AUTHORIZATION))
async def test_every_route_refuses_a_missing_or_invalid_token_with_401_and_a_bearer_challenge(
    identity: httpx.AsyncClient, identity_settings: IdentitySettings, case: str
) -> None:
    value = BAD_AUTHORIZATION[case]
    headers = {"Authorization": value} if value else {}
    for method, path in api_routes(identity_settings):
        response = await identity.request(
            method,
            filled(path, str(uuid.uuid4()), str(uuid.uuid4())),
            json=SAMPLE_BODIES.get((method, path)),
            headers=headers,
        )

        assert response.status_code == 401, (case, method, path, response.text)
        assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert response.json()["error_code"] == "UNAUTHORIZED"


async def test_a_token_for_another_audience_is_refused_when_an_audience_is_configured(
    identity_settings: IdentitySettings,
) -> None:
    settings = identity_settings.model_copy(update={"auth_audience": "vixenbliss"})
    async with serving(create_app(settings), "http://identity") as client:
        wrong = await client.get("/api/v1/avatars", headers={"Authorization": "Bearer " + token(aud="other")})
        missing = await client.get("/api/v1/avatars", headers={"Authorization": "Bearer " + token()})
        right = await client.get("/api/v1/avatars", headers={"Authorization": "Bearer " + token(aud="vixenbliss")})

    assert (wrong.status_code, missing.status_code, right.status_code) == (401, 401, 200)


async def test_someone_elses_avatar_and_lora_answer_404_on_every_route(
    identity: httpx.AsyncClient, identity_settings: IdentitySettings
) -> None:
    owner = bearer(new_owner())
    avatar = await new_avatar(identity, owner)
    registration = await uploaded(identity, owner, lora_file(), avatar_id=avatar["id"])
    assert (await complete(identity, owner, registration["lora_id"])).status_code == 200
    stranger = bearer(new_owner())

    for method, path in api_routes(identity_settings):
        if "{" not in path:
            continue
        response = await identity.request(
            method,
            filled(path, avatar["id"], registration["lora_id"]),
            json=SAMPLE_BODIES.get((method, path)),
            headers=stranger,
        )
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error_code"] == "NOT_FOUND"

    # Nothing the stranger did changed anything.
    mine = (await identity.get(f"/api/v1/avatars/{avatar['id']}", headers=owner)).json()
    assert (mine["name"], mine["active_lora_id"]) == (avatar["name"], registration["lora_id"])
    assert (await identity.get("/api/v1/avatars", headers=stranger)).json()["items"] == []


async def test_only_an_admin_may_import_an_object_already_in_the_bucket(
    identity: httpx.AsyncClient, storage: Any
) -> None:
    owner = new_owner()
    avatar = await new_avatar(identity, bearer(owner))
    data = lora_file(rank=6)
    await storage.put_bytes("imports/vixen.safetensors", data)
    body = {"avatar_id": avatar["id"], "object_key": "imports/vixen.safetensors", "default_scale": 0.6}

    refused = await identity.post("/api/v1/admin/loras/import", json=body, headers=bearer(owner))
    imported = await identity.post("/api/v1/admin/loras/import", json=body, headers=bearer("ops", admin=True))
    missing = await identity.post(
        "/api/v1/admin/loras/import", json={**body, "object_key": "imports/none"}, headers=bearer("ops", admin=True)
    )
    await storage.put_bytes("imports/sd15.safetensors", b"\x80\x04not a lora")
    hostile = await identity.post(
        "/api/v1/admin/loras/import",
        json={**body, "object_key": "imports/sd15.safetensors"},
        headers=bearer("ops", admin=True),
    )

    assert refused.status_code == 403 and refused.json()["error_code"] == "FORBIDDEN"
    assert imported.status_code == 201, imported.text
    lora = imported.json()
    assert (lora["status"], lora["rank"], lora["default_scale"], lora["active"]) == ("ready", 6, 0.6, True)
    assert await storage.get_bytes(lora["object_key"]) == data
    # The version belongs to the avatar's owner, who sees it like any other.
    assert (await identity.get(f"/api/v1/loras/{lora['lora_id']}", headers=bearer(owner))).json() == lora
    assert missing.status_code == 404 and missing.json()["details"]["fields"][0]["field"] == "object_key"
    assert (hostile.status_code, hostile.json()["details"]["reason_code"]) == (422, "pickle")
