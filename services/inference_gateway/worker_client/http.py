"""The worker contract over HTTP (Modal or the local worker), sync or submit+poll.

Maps every answer to a WorkerSuccess or a GatewayFailure: a contract error body → its WorkerErrorCode;
a connection error, a timeout or a 5xx without a contract body → WORKER_UNAVAILABLE; a success body that
does not parse → INVALID_WORKER_RESPONSE. Nothing here logs a request body: it carries the presigned URL.

Cancel: a call cancelled by its caller (asyncio) stops on the worker too. In sync mode the closed connection
does it (the worker watches for the disconnect; a call already in Modal's redirect chain is no longer tied to one
connection and runs on to its own deadline, the request's `timeout_seconds`); in async mode the job is canceled
on the worker (DELETE of its cancel URL, best effort and bounded) before the CancelledError goes on, and so is a
job given up on; after `keep_jobs_on_cancel()` (the gateway shutting down) a cancelled call leaves its job running,
for the gateway that takes the job over to poll with `resume`.
Redirects are followed here, not by httpx: the credentials (Modal-Key, Modal-Secret, Authorization) never go
to another origin, and a request body (it carries the presigned LoRA URL) is never re-sent to one. A sync call
stays in Modal's redirect chain (a 303 to the same URL every ~150 s while the call runs) until it ends or its one
deadline passes: the whole call, redirects and body included, gets `timeout_seconds`, never one per read.

Polls (async mode) ask the worker to hold each answer up to `poll_wait_seconds` (`?wait=`) and poll again at
once, so a result arrives when it is ready; a worker that answers "pending" at once (one that ignores `wait`)
is polled after a pause that grows to `poll_seconds`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from contracts.errors import GatewayErrorCode
from contracts.worker import JobSubmitted, WorkerError, WorkerRequest, WorkerSuccess
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.retries import poll_given_up
from services.inference_gateway.worker_client.urls import result_url, with_wait

log = logging.getLogger(__name__)

# A 2048² PNG in base64 plus JSON is a few MiB; refuse to buffer much more than that.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
CONNECT_TIMEOUT_SECONDS = 10.0
# Statuses that mean "try again later" even without a contract body.
_TRANSIENT_4XX = {408, 425, 429}
# How long a cancel (and waiting for a submit's call id in order to cancel it) may hold up a cancelled call.
CANCEL_TIMEOUT_SECONDS = 10.0
# Redirects other than a same-origin GET (to another origin, or keeping a POST): a few at most.
MAX_REDIRECTS = 5
# Same-origin GET redirects (Modal's chain for a long sync call, one about every 150 s): followed while the call's
# deadline allows; this cap (2.5 h of 150 s hops, past the longest call) only stops a server that loops at once.
MAX_CHAIN_REDIRECTS = 60
# A held poll's read timeout is its `wait` plus this: the worker's answer, not the read timeout, ends the wait.
POLL_READ_GRACE_SECONDS = 10.0
# Pauses after a "pending" that came back at once (a worker that ignores `wait`): this, doubled up to poll_seconds.
POLL_BACKOFF_START_SECONDS = 0.1
# A "pending" that came back before this share of the asked wait means the worker did not hold it.
HELD_POLL_SHARE = 0.5
# Headers that carry the worker credentials: dropped on a redirect to another origin.
CREDENTIAL_HEADERS = ("Modal-Key", "Modal-Secret", "Authorization")

WorkerMode = Literal["sync", "async"]


@dataclass(frozen=True)
class ProviderConfig:
    """Where the worker is and how to authenticate (headers are kept out of repr)."""

    mode: WorkerMode
    generate_url: str
    submit_url: str | None = None
    result_url: str | None = None
    cancel_url: str | None = None
    # The longest pause between two polls (after a failed poll, or for a worker that does not hold polls).
    poll_seconds: float = 2.0
    # How long each poll asks the worker to hold its answer for the job to end (`?wait=`; 0: never).
    poll_wait_seconds: float = 30.0
    # How long the polls of a submitted job may keep failing (the worker unreachable, or 5xx without a contract body)
    # before the call is given up: the job may still run there, and a new attempt would run it a second time.
    poll_outage_seconds: float = 0.0
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
        self._keep_jobs = False

    @property
    def mode(self) -> WorkerMode:
        """sync or async."""
        return self._config.mode

    def keep_jobs_on_cancel(self) -> None:
        """From now on a cancelled call does not cancel its async job (shutdown: another gateway resumes it)."""
        self._keep_jobs = True

    async def generate(
        self,
        request: WorkerRequest,
        timeout_seconds: float,
        *,
        on_call: Callable[[str], Awaitable[None]] | None = None,
    ) -> WorkerSuccess:
        """One attempt, bounded by `timeout_seconds`; the success or a GatewayFailure. In async mode `on_call` gets
        the call id once the job is submitted (if it raises, the job is canceled and the error goes on)."""
        body = request.model_dump(mode="json", exclude_none=True)
        if self._config.mode == "sync":
            status, content = await self._send("POST", self._config.generate_url, timeout_seconds, body)
            return await outcome_off_loop(status, content)
        return await self._submit_and_poll(body, timeout_seconds, on_call)

    async def resume(self, call_id: str, timeout_seconds: float) -> WorkerSuccess:
        """Poll a job submitted earlier (by this gateway before it restarted, or by another) until it is done."""
        if self._config.mode != "async":
            raise unavailable("a worker call can only be resumed in async mode", reason="not_resumable")
        give_up_at = self._clock() + timeout_seconds
        try:
            return await self._poll(call_id, give_up_at, timeout_seconds)
        except asyncio.CancelledError:
            await self._cancel_unless_kept(call_id, "the call was cancelled")
            raise

    async def _submit_and_poll(
        self, body: dict[str, object], timeout_seconds: float, on_call: Callable[[str], Awaitable[None]] | None
    ) -> WorkerSuccess:
        assert self._config.submit_url and self._config.result_url
        give_up_at = self._clock() + timeout_seconds
        submit = asyncio.ensure_future(self._send("POST", self._config.submit_url, min(timeout_seconds, 60.0), body))
        try:
            # Shielded: cancelled while submitting, the job may exist already; its call id is needed to cancel it.
            status, content = await asyncio.shield(submit)
        except asyncio.CancelledError:
            # Not recorded yet: nobody could poll it, so it is canceled even at shutdown.
            await self._cancel_after_submit(submit)
            raise
        call_id = _call_id(status, content)
        if call_id is None:
            return await outcome_off_loop(status, content)  # a sync answer or an error body
        try:
            if on_call is not None:
                await on_call(call_id)
        except BaseException:
            # Not recorded (the job was canceled meanwhile, or the record failed): nobody would poll it.
            await self.cancel_job(call_id, "its call id could not be recorded")
            raise
        try:
            return await self._poll(call_id, give_up_at, timeout_seconds)
        except asyncio.CancelledError:
            await self._cancel_unless_kept(call_id, "the call was cancelled")
            raise

    async def _cancel_unless_kept(self, call_id: str, why: str) -> None:
        if self._keep_jobs:
            log.info("job %s left running on the worker (%s): the gateway is stopping", call_id, why)
            return
        await self.cancel_job(call_id, why)

    async def _cancel_after_submit(self, submit: asyncio.Future[tuple[int, bytes]]) -> None:
        """Wait (bounded) for a submit that was under way when the call was cancelled, and cancel its job."""
        done, _ = await asyncio.wait({submit}, timeout=CANCEL_TIMEOUT_SECONDS)
        if not done:
            submit.cancel()
            log.warning("cancelled while submitting; the submit did not finish, so its job (if any) runs on")
            return
        if submit.cancelled() or submit.exception() is not None:
            return
        call_id = _call_id(*submit.result())
        if call_id is not None:
            await self.cancel_job(call_id, "the call was cancelled while submitting")

    async def cancel_job(self, call_id: str, why: str) -> int | None:
        """Ask the worker to stop a job (DELETE on the cancel URL): best effort, bounded; the answer's status."""
        if self._config.cancel_url is None:
            log.warning("job %s not canceled on the worker (%s): no MODAL_CANCEL_URL", call_id, why)
            return None
        url = result_url(self._config.cancel_url, call_id)
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
                status, _ = await self._send("DELETE", url, CANCEL_TIMEOUT_SECONDS)
        except (GatewayFailure, TimeoutError) as error:
            log.warning("job %s: cancel on the worker failed (%s): %r", call_id, why, error)
            return None
        log.info("job %s: cancel on the worker (%s) answered HTTP %d", call_id, why, status)
        return status

    async def _poll(self, call_id: str, give_up_at: float, timeout_seconds: float) -> WorkerSuccess:
        """Poll a job until it ends: the first poll at once, each held by the worker up to `poll_wait_seconds`.
        Failed polls are waited out while retries.poll_given_up allows (`poll_outage_seconds`): the job exists, and
        submitting again would run it twice."""
        assert self._config.result_url
        url = result_url(self._config.result_url, call_id)
        failures = 0
        failing_since: float | None = None
        pause = 0.0
        while True:
            left = give_up_at - self._clock()
            if left > 0 and pause > 0:
                await self._sleep(min(pause, left))
                left = give_up_at - self._clock()
            if left <= 0:
                # Given up on: the job must not keep the GPU busy for a result nobody will read.
                await self.cancel_job(call_id, "no result in time")
                raise unavailable(f"worker job gave no result within {timeout_seconds:.0f}s", reason="timeout")
            wait = min(self._config.poll_wait_seconds, left)
            asked_at = self._clock()
            failed: GatewayFailure | None = None
            try:
                status, content = await self._send("GET", with_wait(url, wait), wait + POLL_READ_GRACE_SECONDS)
            except GatewayFailure as failure:
                status, content, failed = 0, b"", failure
            else:
                if status >= 500 and contract_error(_json_object(content)) is None:
                    failed = unavailable(f"worker answered HTTP {status} to a poll", status=status)
            if failed is None:
                if status == 202:
                    failures, failing_since = 0, None
                    pause = next_poll_pause(pause, self._clock() - asked_at, wait, self._config.poll_seconds)
                    continue
                if status in (404, 410):
                    raise unavailable("worker lost the job (unknown or expired call id)", status=status)
                return await outcome_off_loop(status, content)
            pause = self._config.poll_seconds
            failures += 1
            failing_since = self._clock() if failing_since is None else failing_since
            outage = self._clock() - failing_since
            if poll_given_up(failures, outage, self._config.poll_outage_seconds):
                # Marked as a call that may have run: a new attempt stays within the attempts limit.
                raise unavailable(
                    f"polls of the worker job failed for {outage:.0f}s",
                    reason="poll_failed",
                    **{k: v for k, v in failed.details.items() if k in ("status", "endpoint")},
                )

    async def _send(
        self, method: str, url: str, timeout_seconds: float, body: dict[str, object] | None = None
    ) -> tuple[int, bytes]:
        """One call, redirects and the whole body included, within `timeout_seconds` (httpx's own timeout is per
        read: a body trickling in, or a redirect chain, would otherwise outlast it)."""
        read_timeout = httpx.Timeout(timeout_seconds, connect=min(CONNECT_TIMEOUT_SECONDS, timeout_seconds))
        try:
            async with asyncio.timeout(timeout_seconds):
                return await self._follow(method, url, read_timeout, body)
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            # The request never left: the worker did not get it (retried as an unreachable worker).
            raise unavailable(
                "worker could not be reached", endpoint=endpoint_label(url), reason=type(error).__name__
            ) from None
        except (httpx.TimeoutException, TimeoutError):
            raise unavailable(
                f"worker did not answer within {timeout_seconds:.0f}s", endpoint=endpoint_label(url), reason="timeout"
            ) from None
        except httpx.HTTPError as error:
            # The exception text may carry the URL; only its type and the endpoint without a query go out.
            raise unavailable(
                "worker could not be reached", endpoint=endpoint_label(url), reason=type(error).__name__
            ) from None

    async def _follow(
        self, method: str, url: str, read_timeout: httpx.Timeout, body: dict[str, object] | None
    ) -> tuple[int, bytes]:
        """Send, and follow redirects: a same-origin GET chain up to MAX_CHAIN_REDIRECTS, others MAX_REDIRECTS."""
        request = self._http.build_request(
            method, url, json=body, headers=dict(self._config.headers), timeout=read_timeout
        )
        chained = other = 0
        while True:
            response = await self._http.send(request, stream=True, follow_redirects=False)
            try:
                if response.next_request is None:
                    return response.status_code, await _read_capped(response)
                request = redirected(request, response.next_request, url)
            finally:
                await response.aclose()
            if is_chain_hop(request, url):
                chained += 1
            else:
                other += 1
            if chained > MAX_CHAIN_REDIRECTS or other > MAX_REDIRECTS:
                raise unavailable(
                    "worker redirected too many times",
                    endpoint=endpoint_label(url),
                    limit=MAX_CHAIN_REDIRECTS if chained > MAX_CHAIN_REDIRECTS else MAX_REDIRECTS,
                    reason="redirect_limit",
                )


async def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > MAX_RESPONSE_BYTES:
            raise invalid("worker response is larger than the gateway accepts", limit=MAX_RESPONSE_BYTES)
        chunks.append(chunk)
    return b"".join(chunks)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default_port = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default_port


def is_chain_hop(following: httpx.Request, first_url: str) -> bool:
    """A same-origin GET redirect: how Modal keeps a long sync call waiting (the body is not sent again)."""
    return following.method == "GET" and _origin(following.url) == _origin(httpx.URL(first_url))


def next_poll_pause(previous: float, answered_in: float, asked_wait: float, ceiling: float) -> float:
    """Seconds before the next poll after a "pending": none when the worker held the poll (it waited for the job),
    else a pause that starts at POLL_BACKOFF_START_SECONDS and doubles up to `ceiling` (a worker ignoring `wait`
    is never polled faster than that)."""
    if asked_wait > 0 and answered_in >= HELD_POLL_SHARE * asked_wait:
        return 0.0
    return min(ceiling, max(2.0 * previous, POLL_BACKOFF_START_SECONDS))


def redirected(previous: httpx.Request, following: httpx.Request, first_url: str) -> httpx.Request:
    """The request that follows a redirect (httpx built it: method, body and URL as the status says), without
    the credentials when it leaves the first URL's origin; a body is never sent to another origin."""
    if _origin(following.url) == _origin(httpx.URL(first_url)):
        return following
    if following.method != "GET":
        # 307/308 keep the method and the body, and the body holds the presigned LoRA URL.
        raise invalid(
            f"worker redirected a {following.method} to another origin; not followed",
            endpoint=endpoint_label(str(previous.url)),
            redirect_host=following.url.host,
        )
    for name in CREDENTIAL_HEADERS:
        following.headers.pop(name, None)
    return following


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
