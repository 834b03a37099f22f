"""The smoke test's minted token carries the audience and issuer the deployment names, as its services require."""

from __future__ import annotations

import pytest

from services.common.auth import TokenVerifier
from services.tools.smoke.settings import SmokeSettings
from tests.support.auth_tokens import HS_SECRET
from tests.support.settings_env import settings_env

BASE = {
    "RABBITMQ_URL": "amqp://smoke:smoke-password-0123@127.0.0.1:5672/%2F",
    "R2_ENDPOINT_URL": "http://127.0.0.1:9000",
    "R2_ACCESS_KEY_ID": "smoke-access-key",
    "R2_SECRET_ACCESS_KEY": "smoke-secret-access-key",
    "R2_BUCKET_NAME": "smoke-bucket",
    "SMOKE_CONTENT_URL": "http://127.0.0.1:8000",
    "SMOKE_AVATAR_ID": "avatar-1",
    "MODAL_ENDPOINT_URL": "http://127.0.0.1:8003/generate",
    "AUTH_JWT_SECRET": HS_SECRET,
}


async def test_a_production_deployments_audience_and_issuer_are_in_the_minted_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    named = {"AUTH_AUDIENCE": "vixenbliss-api", "AUTH_ISSUER": "vixenbliss-compose"}
    settings_env(monkeypatch, SmokeSettings, {**BASE, **named})

    token = SmokeSettings().bearer()

    verifier = TokenVerifier(hs256_secret=HS_SECRET, audience="vixenbliss-api", issuer="vixenbliss-compose")
    assert (await verifier.verify(token)).subject == "smoke-test"


async def test_without_them_the_token_names_none(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env(monkeypatch, SmokeSettings, BASE)

    principal = await TokenVerifier(hs256_secret=HS_SECRET).verify(SmokeSettings().bearer())

    assert "aud" not in principal.claims and "iss" not in principal.claims
