"""The gateway's one failure type: an error code with a message and details, raised by adapters."""

from __future__ import annotations

from collections.abc import Mapping

from contracts.errors import GatewayErrorCode, WorkerErrorCode

ErrorCode = WorkerErrorCode | GatewayErrorCode


class GatewayFailure(Exception):
    """A failed step of one attempt; the service decides whether to retry it."""

    def __init__(self, code: ErrorCode, message: str, details: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, object] = dict(details or {})

    def __repr__(self) -> str:
        return f"GatewayFailure({self.code.value}, {self.message!r})"
