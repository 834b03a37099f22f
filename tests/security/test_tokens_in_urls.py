"""Secrets in URLs never reach a log line: a client that puts its bearer token (or any token, signature or SigV4
parameter) in a query string is refused, and the access log and every other line show the path without it.

Against content served on a real socket (its HTTP protocol, uvicorn's access log through the service's handler),
with real PostgreSQL, RabbitMQ and S3."""

from __future__ import annotations

import uuid

import httpx

from services.common.auth import mint_token
from services.content.main import create_app
from services.content.settings import ContentSettings
from tests.support.auth import TEST_JWT_SECRET, bearer, new_owner
from tests.support.service_log import service_log
from tests.support.stack.live_server import live_server

PRESIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20301201%2Fauto%2Fs3%2Faws4_request"
    "&X-Amz-Date=20301201T000000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "ab12" * 16
)


async def test_tokens_in_query_strings_are_refused_and_never_logged(content_settings: ContentSettings) -> None:
    owner = new_owner()
    token = mint_token(TEST_JWT_SECRET, owner)
    # A JWT under a name nobody anticipated: caught by its shape.
    odd = mint_token(TEST_JWT_SECRET, new_owner())
    generation = uuid.uuid4()
    queries = {
        "access_token": f"access_token={token}",
        "token": f"token={token[:40]}&page=1",
        "sigv4": PRESIGNED_QUERY,
        "any name": f"state=1&whatever={odd}",
    }

    with (
        service_log(content_settings.secret_values()) as log,
        live_server(create_app(content_settings), "content-url-tokens") as url,
    ):
        async with httpx.AsyncClient(base_url=url) as client:
            answers = {
                name: await client.get(f"/api/v1/content/{generation}/events?{query}")
                for name, query in queries.items()
            }
            listed = await client.get(f"/api/v1/content?access_token={token}")
            # The header still works: the token was refused only for where it was put.
            allowed = await client.get("/api/v1/content", headers=bearer(owner))

    assert {name: answer.status_code for name, answer in answers.items()} == dict.fromkeys(queries, 401)
    assert listed.status_code == 401 and allowed.status_code == 200
    text = log.getvalue()
    assert f"/api/v1/content/{generation}/events?" in text, text[-2000:]
    for secret in (token, token[:40], odd, odd.split(".")[2], "AKIAEXAMPLE", "ab12" * 16):
        assert secret not in text, secret
