"""Provider client for the worker contract over HTTP (Modal or the local worker), sync or submit+poll.

Maps every answer to a WorkerSuccess or a GatewayFailure: a contract error body → its WorkerErrorCode;
a connection error, a timeout or a 5xx without a contract body → WORKER_UNAVAILABLE; a success body that
does not parse → INVALID_WORKER_RESPONSE. Nothing here logs a request body: it carries the presigned URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlsplit

import httpx
from pydantic import ValidationError

from contracts.errors import GatewayErrorCode
from contracts.worker import JobSubmitted, WorkerError, WorkerRequest, WorkerSuccess
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.settings import CALL_ID_PLACEHOLDER

log = logging.getLogger(__name__)

# A 2048² PNG in base64 plus JSON is a few MiB; refuse to buffer much more than that.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
CONNECT_TIMEOUT_SECONDS = 10.0
# Statuses that mean "try again later" even without a contract body.
_TRANSIENT_4XX = {408, 425, 429}
# Poll errors in a row (connection refused, 5xx) before a job counts as lost.
MAX_POLL_FAILURES = 3

WorkerMode = Literal["sync", "async"]


@dataclass(frozen=True)
class ProviderConfig:
    """Where the worker is and how to authenticate (headers are kept out of repr)."""

    mode: WorkerMode
    generate_url: str
    submit_url: str | None = None
    result_url: str | None = None
    poll_seconds: float = 2.0
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


def auth_headers(api_key: str | None, api_token: str | None) -> dict[str, str]:
    """Both set: Modal proxy auth (Modal-Key, Modal-Secret). Only one: `Authorization: Bearer` with it."""
    if api_key and api_token:
        return {"Modal-Key": api_key, "Modal-Secret": api_token}
    single = api_key or api_token
    return {"Authorization": f"Bearer {single}"} if single else {}


def endpoint_label(url: str) -> str:
    """Host and path of a URL, for logs and error details (never its query)."""
    parts = urlsplit(url)
    return f"{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"


def unavailable(message: str, **details: object) -> GatewayFailure:
    """WORKER_UNAVAILABLE: the worker could not be reached or gave no usable answer; worth retrying."""
    return GatewayFailure(GatewayErrorCode.WORKER_UNAVAILABLE, message, details)


def invalid(message: str, **details: object) -> GatewayFailure:
    """INVALID_WORKER_RESPONSE: the worker answered something the contract does not allow."""
    return GatewayFailure(GatewayErrorCode.INVALID_WORKER_RESPONSE, message, details)


def _json_object(content: bytes) -> dict[str, object] | None:
    try:
        value = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def contract_error(body: Mapping[str, object] | None) -> WorkerError | None:
    """The contract error in a body, if it is one."""
    if body is None or "error_code" not in body:
        return None
    try:
        return WorkerError.model_validate(body)
    except ValidationError:
        return None


def outcome_of(status: int, content: bytes) -> WorkerSuccess:
    """The success in a final answer (sync response or finished job); GatewayFailure otherwise."""
    body = _json_object(content)
    if status == 200:
        if body is None:
            raise invalid("worker answered 200 with a body that is not a JSON object", bytes=len(content))
        try:
            return WorkerSuccess.model_validate(body)
        except ValidationError as bad:
            fields = sorted({".".join(str(p) for p in e["loc"]) for e in bad.errors(include_input=False)})
            raise invalid("worker's success body does not match the contract", fields=fields[:10]) from None
    answer = contract_error(body)
    if answer is not None:
        raise GatewayFailure(answer.error_code, answer.error, {**answer.details, "status": status})
    if status >= 500 or status in _TRANSIENT_4XX:
        raise unavailable(f"worker answered HTTP {status} without a contract body", status=status)
    if status in (401, 403):
        raise invalid(f"worker refused the credentials (HTTP {status}); check MODAL_API_KEY and MODAL_API_TOKEN")
    raise invalid(f"worker answered HTTP {status} without a contract body", status=status)


async def outcome_off_loop(status: int, content: bytes) -> WorkerSuccess:
    """`outcome_of` in a worker thread: a success body holds a base64 PNG of several MiB, and parsing and validating
    it on the event loop would stall every other task (consumers, health checks) for that long."""
    return await asyncio.to_thread(outcome_of, status, content)


class ModalWorkerClient:
    """Calls the worker: one POST (sync), or a submit POST then GET polls until the job is done (async)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        config: ProviderConfig,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._config = config
        self._sleep = sleep
        self._clock = clock

    @property
    def mode(self) -> WorkerMode:
        """sync or async."""
        return self._config.mode

    async def generate(self, request: WorkerRequest, timeout_seconds: float) -> WorkerSuccess:
        """One attempt, bounded by `timeout_seconds`; the success or a GatewayFailure."""
        body = request.model_dump(mode="json", exclude_none=True)
        if self._config.mode == "sync":
            status, content = await self._send("POST", self._config.generate_url, timeout_seconds, body)
            return await outcome_off_loop(status, content)
        return await self._submit_and_poll(body, timeout_seconds)

    async def _submit_and_poll(self, body: dict[str, object], timeout_seconds: float) -> WorkerSuccess:
        assert self._config.submit_url and self._config.result_url
        give_up_at = self._clock() + timeout_seconds
        status, content = await self._send("POST", self._config.submit_url, min(timeout_seconds, 60.0), body)
        call_id = _call_id(status, content)
        if call_id is None:
            return await outcome_off_loop(status, content)  # a sync answer or an error body
        url = result_url(self._config.result_url, call_id)
        failures = 0
        while True:
            left = give_up_at - self._clock()
            if left <= 0:
                raise unavailable(f"worker job gave no result within {timeout_seconds:.0f}s", reason="timeout")
            await self._sleep(min(self._config.poll_seconds, left))
            try:
                status, content = await self._send("GET", url, min(max(left, 1.0), 60.0))
            except GatewayFailure as failure:
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    raise failure
                continue
            if status == 202:
                failures = 0
                continue
            if status in (404, 410):
                raise unavailable("worker lost the job (unknown or expired call id)", status=status)
            if status >= 500 and contract_error(_json_object(content)) is None:
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    return await outcome_off_loop(status, content)
                continue
            return await outcome_off_loop(status, content)

    async def _send(
        self, method: str, url: str, timeout_seconds: float, body: dict[str, object] | None = None
    ) -> tuple[int, bytes]:
        timeout = httpx.Timeout(timeout_seconds, connect=min(CONNECT_TIMEOUT_SECONDS, timeout_seconds))
        try:
            async with self._http.stream(
                method, url, json=body, headers=dict(self._config.headers), timeout=timeout
            ) as response:
                chunks: list[bytes] = []
                total = 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > MAX_RESPONSE_BYTES:
                        raise invalid("worker response is larger than the gateway accepts", limit=MAX_RESPONSE_BYTES)
                    chunks.append(chunk)
                return response.status_code, b"".join(chunks)
        except httpx.TimeoutException:
            raise unavailable(
                f"worker did not answer within {timeout_seconds:.0f}s", endpoint=endpoint_label(url), reason="timeout"
            ) from None
        except httpx.HTTPError as error:
            # The exception text may carry the URL; only its type and the endpoint without a query go out.
            raise unavailable(
                "worker could not be reached", endpoint=endpoint_label(url), reason=type(error).__name__
            ) from None


def _call_id(status: int, content: bytes) -> str | None:
    if status not in (200, 201, 202):
        return None
    body = _json_object(content)
    if body is None or "call_id" not in body:
        return None
    try:
        return JobSubmitted.model_validate(body).call_id
    except ValidationError:
        return None


def result_url(template: str, call_id: str) -> str:
    """The poll URL of a job: `{call_id}` in the template replaced, else `call_id` added as a query."""
    quoted = quote(call_id, safe="")
    if CALL_ID_PLACEHOLDER in template:
        return template.replace(CALL_ID_PLACEHOLDER, quoted)
    separator = "&" if urlsplit(template).query else "?"
    return f"{template}{separator}call_id={quoted}"
