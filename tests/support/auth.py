"""Bearer tokens for tests: one HS256 secret the in-process services are configured with, and a minter for it."""

from __future__ import annotations

import uuid

from services.common.auth import mint_token

# 32+ bytes (the services refuse shorter HS256 secrets); used only by tests.
TEST_JWT_SECRET = "tests-only-hs256-secret-0123456789abcdef"


def bearer(subject: str, *, admin: bool = False, ttl_seconds: int = 600) -> dict[str, str]:
    """The Authorization header of a caller whose token's `sub` is `subject`."""
    token = mint_token(TEST_JWT_SECRET, subject, ttl_seconds=ttl_seconds, admin=admin)
    return {"Authorization": f"Bearer {token}"}


def new_owner() -> str:
    """A fresh owner id, as an IdP would issue one."""
    return f"user-{uuid.uuid4()}"
