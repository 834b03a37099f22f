"""FastAPI wiring: the verifier on app.state, and the `CurrentPrincipal` / `AdminPrincipal` dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.common.auth.principal import Principal
from services.common.auth.tokens import InvalidToken, TokenVerifier
from services.common.http.errors import ForbiddenError, UnauthorizedError

# auto_error=False: a missing token gets our 401 (uniform body, WWW-Authenticate), not FastAPI's 403.
# The scheme also puts "bearer" security on every route that depends on it in the OpenAPI document.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description=(
        "a JWT whose `sub` is the owner id, in the `Authorization` header only: a token in a query string "
        "(`?access_token=`) is refused with 401, and never logged"
    ),
)


def install_verifier(app: FastAPI, verifier: TokenVerifier) -> None:
    """Make `verifier` the one the auth dependencies of `app` use (call it in the service's create_app)."""
    app.state.token_verifier = verifier


def _verifier(request: Request) -> TokenVerifier:
    verifier = getattr(request.app.state, "token_verifier", None)
    if not isinstance(verifier, TokenVerifier):
        raise RuntimeError("no token verifier on this app: call install_verifier(app, verifier) in create_app")
    return verifier


def _unauthorized(reason: str) -> UnauthorizedError:
    # RFC 6750 §3: error_description is a quoted string; every reason is a fixed ASCII text without quotes.
    challenge = f'Bearer error="invalid_token", error_description="{reason}"'
    return UnauthorizedError(f"not authenticated: {reason}", headers={"WWW-Authenticate": challenge})


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The caller of the request, from its bearer token; 401 when it has none or it is refused."""
    if credentials is None:
        raise _unauthorized("missing bearer token")
    try:
        return await _verifier(request).verify(credentials.credentials)
    except InvalidToken as error:
        raise _unauthorized(error.reason) from None


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


async def require_admin(principal: CurrentPrincipal) -> Principal:
    """The caller, when its token holds the admin role; 403 otherwise."""
    if not principal.is_admin:
        raise ForbiddenError(
            "this route needs the admin role",
            headers={"WWW-Authenticate": 'Bearer error="insufficient_scope", error_description="admin role required"'},
        )
    return principal


AdminPrincipal = Annotated[Principal, Depends(require_admin)]
