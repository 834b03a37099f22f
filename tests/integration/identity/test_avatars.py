"""Avatars over HTTP with real RabbitMQ, PostgreSQL and S3: owned by the token, paged, updated, deleted."""

from __future__ import annotations

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import AvatarCreated, AvatarDeleted, AvatarUpdated, LoraRetired
from contracts.topology import CONTENT_IDENTITY_EVENTS, Topology
from tests.support.auth import bearer, new_owner
from tests.support.identity.client import complete, new_avatar, uploaded
from tests.support.lora_headers import lora_file
from tests.support.queues import drain_events


async def test_an_avatar_belongs_to_the_token_subject_and_is_announced(
    identity: httpx.AsyncClient, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    owner = new_owner()

    response = await identity.post(
        "/api/v1/avatars", json={"name": "Vixen", "description": "line one\nline two"}, headers=bearer(owner)
    )

    assert response.status_code == 201
    avatar = response.json()
    assert (avatar["owner_id"], avatar["name"], avatar["description"], avatar["active_lora_id"]) == (
        owner,
        "Vixen",
        "line one\nline two",
        None,
    )
    [(envelope, payload)] = await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=1)
    assert payload == AvatarCreated(avatar_id=avatar["id"], owner_id=owner, name="Vixen")
    assert (envelope.source, envelope.subject) == ("/vixenbliss/identity", avatar["id"])
    assert (await identity.get(f"/api/v1/avatars/{avatar['id']}", headers=bearer(owner))).json() == avatar


async def test_the_owner_can_never_be_set_from_the_body(identity: httpx.AsyncClient) -> None:
    response = await identity.post(
        "/api/v1/avatars", json={"name": "V", "owner_id": "someone-else"}, headers=bearer(new_owner())
    )

    assert response.status_code == 422
    assert [f["field"] for f in response.json()["details"]["fields"]] == ["owner_id"]


async def test_the_list_pages_through_the_callers_avatars_newest_first_without_gaps_or_repeats(
    identity: httpx.AsyncClient,
) -> None:
    auth = bearer(new_owner())
    created = [(await new_avatar(identity, auth, name=f"a{i}"))["id"] for i in range(7)]
    await new_avatar(identity, bearer(new_owner()), name="someone else's")

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await identity.get("/api/v1/avatars", params=params, headers=auth)).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == list(reversed(created))
    assert pages == 3


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
        ({"cursor": "!!"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
    ],
)
async def test_a_bad_cursor_or_limit_is_a_422_naming_it(
    identity: httpx.AsyncClient, params: dict[str, object], field: str
) -> None:
    response = await identity.get("/api/v1/avatars", params=params, headers=bearer(new_owner()))

    assert response.status_code == 422
    assert [f["field"] for f in response.json()["details"]["fields"]] == [field]


async def test_an_update_changes_only_the_fields_sent_and_announces_what_the_event_carries_once(
    identity: httpx.AsyncClient, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    auth = bearer(new_owner())
    avatar = await new_avatar(identity, auth)
    await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=1)

    renamed = await identity.patch(f"/api/v1/avatars/{avatar['id']}", json={"name": "Nova"}, headers=auth)
    unchanged = await identity.patch(f"/api/v1/avatars/{avatar['id']}", json={"name": "Nova"}, headers=auth)
    described = await identity.patch(f"/api/v1/avatars/{avatar['id']}", json={"description": "d"}, headers=auth)

    assert renamed.status_code == unchanged.status_code == described.status_code == 200
    assert (described.json()["name"], described.json()["description"]) == ("Nova", "d")
    events = await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=1, grace=0.3)
    assert [type(p) for _, p in events] == [AvatarUpdated]
    assert events[0][1].name == "Nova"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": None}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "tab\there"}, "name"),
        ({"description": "bell\x07"}, "description"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_a_bad_update_is_a_422_naming_the_field(
    identity: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    auth = bearer(new_owner())
    avatar = await new_avatar(identity, auth)

    response = await identity.patch(f"/api/v1/avatars/{avatar['id']}", json=body, headers=auth)

    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["details"]["fields"]] == [field]


async def test_an_active_lora_id_of_no_version_of_the_avatar_is_a_404_naming_it(identity: httpx.AsyncClient) -> None:
    # A well-formed id that names nothing the caller has: as an id in the path, a 404 (the schema allows any UUID).
    auth = bearer(new_owner())
    avatar = await new_avatar(identity, auth)
    body = {"active_lora_id": "00000000-0000-0000-0000-000000000000"}

    response = await identity.patch(f"/api/v1/avatars/{avatar['id']}", json=body, headers=auth)

    assert (response.status_code, response.json()["error_code"]) == (404, "NOT_FOUND"), response.text
    assert [f["field"] for f in response.json()["details"]["fields"]] == ["active_lora_id"]


async def test_deleting_an_avatar_retires_its_versions_and_it_is_gone_everywhere(
    identity: httpx.AsyncClient, amqp: AbstractRobustConnection, topo: Topology
) -> None:
    auth = bearer(new_owner())
    avatar = await new_avatar(identity, auth)
    ready = await uploaded(identity, auth, lora_file(), avatar_id=avatar["id"])
    assert (await complete(identity, auth, ready["lora_id"])).status_code == 200
    pending = await uploaded(identity, auth, lora_file(rank=2), avatar_id=avatar["id"])
    await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=3)

    deleted = await identity.delete(f"/api/v1/avatars/{avatar['id']}", headers=auth)

    assert deleted.status_code == 204
    events = await drain_events(amqp, topo.queue(CONTENT_IDENTITY_EVENTS).name, expect=2, grace=0.3)
    assert [type(p) for _, p in events] == [AvatarDeleted, LoraRetired]
    assert events[1][1].lora_model_id == ready["lora_id"]  # type: ignore[attr-defined]
    for method, path in [
        ("GET", f"/api/v1/avatars/{avatar['id']}"),
        ("DELETE", f"/api/v1/avatars/{avatar['id']}"),
        ("GET", f"/api/v1/loras/{ready['lora_id']}"),
        ("POST", f"/api/v1/loras/{pending['lora_id']}/complete"),
    ]:
        assert (await identity.request(method, path, headers=auth)).status_code == 404, (method, path)
    listed = (await identity.get("/api/v1/avatars", headers=auth)).json()
    assert listed["items"] == []
