"""Bearer JWT authentication for the services: settings, verification, FastAPI dependencies, dev tokens."""

from services.common.auth.dependencies import (
    AdminPrincipal,
    CurrentPrincipal,
    authenticate,
    install_verifier,
    require_admin,
)
from services.common.auth.principal import Principal
from services.common.auth.settings import AuthSettings, auth_secret_values
from services.common.auth.tokens import InvalidToken, TokenVerifier, mint_token

__all__ = [
    "AdminPrincipal",
    "AuthSettings",
    "CurrentPrincipal",
    "InvalidToken",
    "Principal",
    "TokenVerifier",
    "auth_secret_values",
    "authenticate",
    "install_verifier",
    "mint_token",
    "require_admin",
]
