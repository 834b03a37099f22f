"""The uniform 4xx shape: validation errors list each field, domain errors keep their code, nothing leaks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError, OperationalError

from services.common.http.errors import (
    ConflictError,
    FieldError,
    InvalidRequestError,
    NotFoundError,
    UnauthorizedError,
    install_error_handlers,
)
from services.common.persistence.db import database_unreachable


class Body(BaseModel):
    name: str = Field(min_length=1)
    width: int = Field(ge=64, multiple_of=8)


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, unavailable=database_unreachable)

    @app.post("/things")
    async def create(body: Body) -> dict[str, str]:
        return {"name": body.name}

    @app.get("/things/{thing_id}")
    async def read(thing_id: uuid.UUID, kind: str = "plain") -> dict[str, str]:
        if kind == "missing":
            raise NotFoundError("unknown thing")
        if kind == "busy":
            raise ConflictError("thing is busy", fields=[FieldError("thing_id", "still running")])
        if kind == "bad":
            raise InvalidRequestError("unknown avatar", fields=[FieldError("avatar_id", "unknown avatar")])
        if kind == "anon":
            raise UnauthorizedError("sign in first")
        if kind == "teapot":
            raise HTTPException(status_code=418, detail="short and stout")
        if kind == "boom":
            raise RuntimeError("secret internals")
        if kind == "db-refused":
            raise ConnectionRefusedError(111, "Connect call failed ('10.0.0.9', 5432)")
        if kind == "db-lost":
            raise OperationalError("SELECT 1", {}, ConnectionResetError("connection reset by peer"))
        if kind == "db-integrity":
            raise IntegrityError("INSERT", {}, ValueError("duplicate key value violates unique constraint"))
        return {"id": str(thing_id)}

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def test_a_validation_error_lists_every_refused_field_with_its_reason(client: httpx.AsyncClient) -> None:
    response = await client.post("/things", json={"width": 13})

    assert response.status_code == 422
    body = response.json()
    assert body["error_code"] == "INVALID_REQUEST"
    assert set(body) == {"error", "error_code", "details"}
    fields = {f["field"]: f["reason"] for f in body["details"]["fields"]}
    assert fields == {"name": "Field required", "width": "Input should be a multiple of 8"}
    assert "width" in body["error"] and "name" in body["error"]


async def test_a_malformed_path_id_is_a_422_naming_the_parameter(client: httpx.AsyncClient) -> None:
    response = await client.get("/things/not-a-uuid")

    assert response.status_code == 422
    assert [f["field"] for f in response.json()["details"]["fields"]] == ["thing_id"]


@pytest.mark.parametrize("content", [b"{not json", b""])
async def test_a_body_that_is_not_json_is_a_422_not_a_500(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post("/things", content=content, headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert response.json()["error_code"] == "INVALID_REQUEST"
    assert response.json()["details"]["fields"][0]["field"] == "body"


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("missing", 404, "NOT_FOUND"),
        ("busy", 409, "CONFLICT"),
        ("bad", 422, "INVALID_REQUEST"),
        ("anon", 401, "UNAUTHORIZED"),
    ],
)
async def test_domain_errors_keep_their_status_code_and_fields(
    client: httpx.AsyncClient, kind: str, status: int, code: str
) -> None:
    response = await client.get(f"/things/{uuid.uuid4()}", params={"kind": kind})

    assert response.status_code == status
    assert response.json()["error_code"] == code
    assert isinstance(response.json()["details"]["fields"], list)


async def test_a_domain_error_carries_its_field_reasons(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/things/{uuid.uuid4()}", params={"kind": "bad"})

    assert response.json() == {
        "error": "unknown avatar",
        "error_code": "INVALID_REQUEST",
        "details": {"fields": [{"field": "avatar_id", "reason": "unknown avatar"}]},
    }


async def test_an_unknown_route_and_a_wrong_method_use_the_same_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    wrong_method = await client.delete("/things")
    teapot = await client.get(f"/things/{uuid.uuid4()}", params={"kind": "teapot"})

    assert (missing.status_code, missing.json()["error_code"]) == (404, "NOT_FOUND")
    assert (wrong_method.status_code, wrong_method.json()["error_code"]) == (405, "INVALID_REQUEST")
    assert "allow" in {k.lower() for k in wrong_method.headers}
    assert teapot.json() == {"error": "short and stout", "error_code": "INVALID_REQUEST", "details": {"fields": []}}


async def test_an_unexpected_exception_is_a_500_that_says_nothing_of_its_cause(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/things/{uuid.uuid4()}", params={"kind": "boom"})

    assert response.status_code == 500
    assert response.json()["error_code"] == "INTERNAL_ERROR"
    assert "secret" not in response.text


@pytest.mark.parametrize("kind", ["db-refused", "db-lost"])
async def test_a_database_that_cannot_be_reached_is_a_503_with_retry_after(
    client: httpx.AsyncClient, kind: str
) -> None:
    response = await client.get(f"/things/{uuid.uuid4()}", params={"kind": kind})

    assert response.status_code == 503
    assert response.json()["error_code"] == "SERVICE_UNAVAILABLE"
    assert int(response.headers["Retry-After"]) > 0
    assert "10.0.0.9" not in response.text and "reset" not in response.text


async def test_a_database_refusing_the_request_itself_stays_a_500(client: httpx.AsyncClient) -> None:
    # A constraint violation is not an outage: retrying the same request cannot help.
    response = await client.get(f"/things/{uuid.uuid4()}", params={"kind": "db-integrity"})

    assert response.status_code == 500 and "Retry-After" not in response.headers
