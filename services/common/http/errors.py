"""The uniform HTTP error shape: domain errors, and handlers that turn every 4xx into that shape."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

INVALID_REQUEST = "INVALID_REQUEST"
NOT_FOUND = "NOT_FOUND"
CONFLICT = "CONFLICT"
UNAUTHORIZED = "UNAUTHORIZED"
FORBIDDEN = "FORBIDDEN"
RATE_LIMITED = "RATE_LIMITED"
INTERNAL_ERROR = "INTERNAL_ERROR"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
# What a 503 asks the caller to wait before trying again (a database restarting takes seconds).
UNAVAILABLE_RETRY_AFTER_SECONDS = 5
# A 503 for a pool with no connection free: a burst that passes in a moment.
DATABASE_BUSY = "DATABASE_BUSY"
BUSY_RETRY_AFTER_SECONDS = 2

# Statuses without a code of their own (405, 413, 415, …) are requests the service cannot take as sent.
_CODE_BY_STATUS: dict[int, str] = {
    401: UNAUTHORIZED,
    403: FORBIDDEN,
    404: NOT_FOUND,
    409: CONFLICT,
    422: INVALID_REQUEST,
    429: RATE_LIMITED,
}


@dataclass(frozen=True)
class FieldError:
    """One refused input: the field's dotted path and why."""

    field: str
    reason: str


class FieldErrorBody(BaseModel):
    """One refused input, as sent."""

    field: str
    reason: str


class ErrorDetails(BaseModel):
    """What is known about the error beyond its sentence."""

    fields: list[FieldErrorBody] = Field(default_factory=list)
    reason_code: str | None = Field(
        default=None, description="a finer, stable reason where the error_code has several (e.g. LORA_REJECTED)"
    )


class ErrorBody(BaseModel):
    """Every 4xx (and 5xx) body: a sentence, a stable code, and the refused fields."""

    error: str
    error_code: str
    details: ErrorDetails = Field(default_factory=ErrorDetails)


class DomainError(Exception):
    """Base of the errors a use case raises for a request it refuses; each maps to one status and code."""

    status_code: ClassVar[int] = 422
    error_code: ClassVar[str] = INVALID_REQUEST

    def __init__(
        self,
        message: str,
        *,
        fields: Sequence[FieldError] = (),
        reason_code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields: tuple[FieldError, ...] = tuple(fields)
        self.reason_code = reason_code
        # Response headers the status calls for (WWW-Authenticate on a 401, Retry-After on a 503).
        self.headers: dict[str, str] = dict(headers or {})


class InvalidRequestError(DomainError):
    """The request is well formed but refers to or asks for something that cannot be (422)."""

    status_code = 422
    error_code = INVALID_REQUEST


class NotFoundError(DomainError):
    """The resource named in the path does not exist (404)."""

    status_code = 404
    error_code = NOT_FOUND


class ConflictError(DomainError):
    """The resource is not in a state that allows the request (409)."""

    status_code = 409
    error_code = CONFLICT


class UnauthorizedError(DomainError):
    """The caller is not authenticated (401)."""

    status_code = 401
    error_code = UNAUTHORIZED


class ForbiddenError(DomainError):
    """The caller is authenticated but may not do this (403): an admin route called without the admin role."""

    status_code = 403
    error_code = FORBIDDEN


class TooManyRequestsError(DomainError):
    """The caller is over a limit (429): `details.reason_code` says which, `Retry-After` says when to try again."""

    status_code = 429
    error_code = RATE_LIMITED

    def __init__(self, message: str, *, reason_code: str, retry_after_seconds: int) -> None:
        super().__init__(message, reason_code=reason_code, headers={"Retry-After": str(max(1, retry_after_seconds))})


def error_body(
    message: str, error_code: str, fields: Sequence[FieldError] = (), reason_code: str | None = None
) -> dict[str, Any]:
    """The JSON body of an error (`details.reason_code` only when there is one)."""
    body = ErrorBody(
        error=message,
        error_code=error_code,
        details=ErrorDetails(
            fields=[FieldErrorBody(field=f.field, reason=f.reason) for f in fields], reason_code=reason_code
        ),
    ).model_dump()
    if reason_code is None:
        del body["details"]["reason_code"]
    return body


def validation_fields(errors: Sequence[Any]) -> list[FieldError]:
    """FieldErrors of a RequestValidationError: the location without its source (body, path, query)."""
    fields: list[FieldError] = []
    for item in errors:
        loc = [str(part) for part in item.get("loc", ())]
        if item.get("type") == "json_invalid":
            fields.append(FieldError("body", f"invalid JSON: {item.get('ctx', {}).get('error', 'cannot parse')}"))
            continue
        path = loc[1:] if len(loc) > 1 and loc[0] in {"body", "path", "query", "header", "cookie"} else loc
        fields.append(FieldError(".".join(path) or "body", _reason(item)))
    return fields


def _reason(item: Any) -> str:
    message = str(item.get("msg", "invalid"))
    # pydantic prefixes custom validator messages; the reason reads better without it.
    return message.removeprefix("Value error, ")


async def _on_validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    fields = validation_fields(exc.errors())
    summary = "; ".join(f"{f.field}: {f.reason}" for f in fields)
    message = f"invalid request: {summary}" if summary else "invalid request"
    return JSONResponse(error_body(message[:1000], INVALID_REQUEST, fields), status_code=422)


async def _on_domain_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return JSONResponse(
        error_body(exc.message, exc.error_code, exc.fields, exc.reason_code),
        status_code=exc.status_code,
        headers=exc.headers or None,
    )


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status < 400:
        return Response(status_code=status, headers=exc.headers)
    if status == 400:
        # FastAPI's only 400: a body it could not even decode (not UTF-8). Bad input is a 422 here, always.
        reason = "the body is not JSON (UTF-8)"
        return JSONResponse(
            error_body(f"invalid request: {reason}", INVALID_REQUEST, [FieldError("body", reason)]), 422
        )
    headers = dict(exc.headers or {})
    if status == 405:
        # FastAPI registers one route per method, so Starlette's Allow names only the first route of the path.
        headers["Allow"] = ", ".join(allowed_methods(request))
    code = _CODE_BY_STATUS.get(status, INVALID_REQUEST if status < 500 else INTERNAL_ERROR)
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    return JSONResponse(error_body(message, code), status_code=status, headers=headers or None)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app fully matches at the request's path (asked route by route, so
    included routers answer for their own routes)."""
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in request.app.routes)
    ]


async def _on_unexpected(_request: Request, exc: Exception) -> Response:
    # Starlette logs the exception as well; the body says nothing about it (it may hold internals).
    log.error("unhandled %s while serving a request", type(exc).__name__)
    return JSONResponse(error_body("internal error", INTERNAL_ERROR), status_code=500)


def unavailable_response() -> JSONResponse:
    """503 SERVICE_UNAVAILABLE with Retry-After: a dependency is down, nothing was done, the same request may be
    sent again."""
    return JSONResponse(
        error_body("a dependency of the service is unavailable; nothing was done, try again", SERVICE_UNAVAILABLE),
        status_code=503,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
    )


def busy_response() -> JSONResponse:
    """503 SERVICE_UNAVAILABLE (`reason_code` DATABASE_BUSY) with a short Retry-After: no database connection came
    free in time, nothing was done, the same request may be sent again."""
    return JSONResponse(
        error_body(
            "the service is too busy to take this request now; nothing was done, try again",
            SERVICE_UNAVAILABLE,
            reason_code=DATABASE_BUSY,
        ),
        status_code=503,
        headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
    )


async def _on_pool_timeout(_request: Request, exc: Exception) -> Response:
    # Handled here rather than as an unexpected error: an answer, not a traceback in the log for each request.
    log.warning("answered 503: no database connection came free in time (%s)", type(exc).__name__)
    return busy_response()


def install_error_handlers(app: FastAPI, unavailable: Callable[[BaseException], bool] | None = None) -> None:
    """Make every error response of `app` use the uniform shape. An unhandled error for which `unavailable` is true
    (the database could not be reached) is a 503 with Retry-After rather than a 500: the request's transaction
    did not commit, so nothing of it was written. So is, in every app, a database pool checkout that timed out."""

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        if unavailable is not None and unavailable(exc):
            log.warning("answered 503: %s while serving a request", type(exc).__name__)
            return unavailable_response()
        return await _on_unexpected(request, exc)

    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(DomainError, _on_domain_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    # Imported here: what only needs the error shape (the token CLI) does not load the database library.
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    app.add_exception_handler(PoolTimeoutError, _on_pool_timeout)
    app.add_exception_handler(Exception, on_unexpected)


_STATUS_DESCRIPTIONS: dict[int, str] = {
    401: "missing, malformed, expired or otherwise invalid bearer token (with a WWW-Authenticate challenge)",
    403: "the token lacks the role this route needs",
    404: "not found, or not the caller's",
    409: "the resource is not in a state that allows this",
    422: "invalid request: details.fields names each refused field and why",
    429: "over a limit: details.reason_code says which one, the Retry-After header (seconds) when to try again",
    503: "a dependency (the database) is unavailable: nothing was done; try again after Retry-After seconds",
}


def error_responses(*statuses: int, described: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route's error statuses, each with the uniform body; `described` replaces the
    generic sentence of a status where the route means something finer."""
    finer = described or {}
    return {
        status: {"model": ErrorBody, "description": finer.get(status, _STATUS_DESCRIPTIONS[status])}
        for status in statuses
    }


# The errors of a route that takes input and names a resource (content's routes pass it as `responses=`).
ERROR_RESPONSES = error_responses(404, 409, 422)
