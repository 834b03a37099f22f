"""The provider client against scripted HTTP answers: status/body → success or error code, sync and async."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from contracts.worker import WorkerRequest
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.retries import retry_rule
from services.inference_gateway.worker_client.http import (
    ModalWorkerClient,
    ProviderConfig,
    auth_headers,
    next_poll_pause,
    outcome_of,
)
from services.inference_gateway.worker_client.urls import result_url, with_wait
from tests.support.gateway.fakes import gid, success

OK_BODY = success().model_dump_json().encode()
REQUEST = WorkerRequest(
    prompt="a portrait",
    width=64,
    height=64,
    steps=2,
    lora_url="http://127.0.0.1:9000/b/k?X-Amz-Signature=abc",
    request_id=gid("gen-1"),
)


def code_of(status: int, content: bytes) -> str:
    with pytest.raises(GatewayFailure) as caught:
        outcome_of(status, content)
    return caught.value.code.value


def error_body(code: str, **extra: object) -> bytes:
    return json.dumps({"error": "it broke", "error_code": code, "details": {"k": 1}, **extra}).encode()


def test_a_success_body_parses() -> None:
    assert outcome_of(200, OK_BODY).model_info.base_model == "tiny-sdxl-random"


@pytest.mark.parametrize(
    ("status", "content", "code"),
    [
        (422, error_body("LORA_LOAD_FAILED"), "LORA_LOAD_FAILED"),
        (424, error_body("LORA_DOWNLOAD_FAILED"), "LORA_DOWNLOAD_FAILED"),
        (503, error_body("CUDA_OOM"), "CUDA_OOM"),
        (500, error_body("GENERATION_FAILED"), "GENERATION_FAILED"),
        (504, error_body("TIMEOUT"), "TIMEOUT"),
        (422, error_body("INVALID_REQUEST"), "INVALID_REQUEST"),
        (502, b"<html>bad gateway</html>", "WORKER_UNAVAILABLE"),
        (500, b'{"detail": "Internal Server Error"}', "WORKER_UNAVAILABLE"),
        (503, error_body("NOT_A_CODE"), "WORKER_UNAVAILABLE"),
        (429, b"slow down", "WORKER_UNAVAILABLE"),
        (200, b"not json", "INVALID_WORKER_RESPONSE"),
        (200, b"[1, 2]", "INVALID_WORKER_RESPONSE"),
        (200, b'{"image_base64": "x"}', "INVALID_WORKER_RESPONSE"),
        (401, b'{"detail": "missing or wrong bearer token"}', "INVALID_WORKER_RESPONSE"),
        (404, b"Not Found", "INVALID_WORKER_RESPONSE"),
    ],
)
def test_answers_map_to_error_codes(status: int, content: bytes, code: str) -> None:
    assert code_of(status, content) == code


def test_a_contract_error_keeps_its_message_and_details() -> None:
    with pytest.raises(GatewayFailure) as caught:
        outcome_of(422, error_body("LORA_LOAD_FAILED"))
    assert caught.value.message == "it broke"
    assert caught.value.details == {"k": 1, "status": 422}


def test_auth_headers() -> None:
    assert auth_headers("key", "secret") == {"Modal-Key": "key", "Modal-Secret": "secret"}
    assert auth_headers("key", None) == {"Authorization": "Bearer key"}
    assert auth_headers(None, "token") == {"Authorization": "Bearer token"}
    assert auth_headers(None, None) == {}


def test_result_url() -> None:
    assert result_url("http://w/jobs/{call_id}", "fc-1") == "http://w/jobs/fc-1"
    assert result_url("https://ws--sdxl-lora-result.modal.run/", "fc 1") == (
        "https://ws--sdxl-lora-result.modal.run/?call_id=fc%201"
    )
    assert result_url("https://x/r?a=1", "fc-1") == "https://x/r?a=1&call_id=fc-1"


def test_a_poll_url_asks_the_worker_to_hold_its_answer() -> None:
    assert with_wait("http://w/jobs/fc-1", 30.0) == "http://w/jobs/fc-1?wait=30.000"
    assert with_wait("https://r.modal.run/?call_id=fc-1", 2.5) == "https://r.modal.run/?call_id=fc-1&wait=2.500"
    assert with_wait("http://w/jobs/fc-1", 0.0) == "http://w/jobs/fc-1"  # MODAL_POLL_WAIT_SECONDS=0: no wait asked


def test_the_pause_after_a_pending_answer() -> None:
    # Held by the worker (it answered after most of the wait): poll again at once.
    assert next_poll_pause(0.8, answered_in=29.9, asked_wait=30.0, ceiling=2.0) == 0.0
    # Answered at once (the worker ignores `wait`): 0.1 s, doubling, never more than the ceiling.
    pauses = [0.0]
    for _ in range(6):
        pauses.append(next_poll_pause(pauses[-1], answered_in=0.01, asked_wait=30.0, ceiling=2.0))
    assert pauses[1:] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert next_poll_pause(0.0, answered_in=0.0, asked_wait=0.0, ceiling=2.0) == 0.1  # no wait asked


Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, **config: object) -> tuple[ModalWorkerClient, list[float]]:
    sleeps: list[float] = []
    now = [0.0]

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    settings: dict[str, object] = {"mode": "sync", "generate_url": "http://worker/generate", **config}
    return ModalWorkerClient(http, ProviderConfig(**settings), sleep=sleep, clock=lambda: now[0]), sleeps  # type: ignore[arg-type]


async def test_sync_posts_the_contract_body_with_auth_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=OK_BODY)

    worker, _ = client(handler, headers={"Modal-Key": "k", "Modal-Secret": "s"})
    result = await worker.generate(REQUEST, 30.0)

    assert result.generation_time_seconds == 0.25
    (sent,) = seen
    assert sent.method == "POST" and str(sent.url) == "http://worker/generate"
    assert sent.headers["Modal-Key"] == "k" and sent.headers["Modal-Secret"] == "s"
    body = json.loads(sent.content)
    assert body["lora_url"] == REQUEST.lora_url and body["request_id"] == gid("gen-1")
    assert "lora_sha256" not in body  # unset extensions are left out


async def test_a_refused_connection_is_worker_unavailable_without_the_url_query() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused to http://worker/generate?token=abc", request=request)

    worker, _ = client(handler)
    with pytest.raises(GatewayFailure) as caught:
        await worker.generate(REQUEST, 30.0)
    assert caught.value.code.value == "WORKER_UNAVAILABLE"
    assert caught.value.details == {"endpoint": "worker/generate", "reason": "ConnectError"}


async def test_a_timeout_is_worker_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    worker, _ = client(handler)
    with pytest.raises(GatewayFailure) as caught:
        await worker.generate(REQUEST, 5.0)
    assert caught.value.code.value == "WORKER_UNAVAILABLE" and caught.value.details["reason"] == "timeout"


def async_config() -> dict[str, object]:
    return {"mode": "async", "submit_url": "http://worker/jobs", "result_url": "http://worker/jobs/{call_id}"}


async def test_async_submits_then_polls_until_done() -> None:
    polls = [202, 202, 200]
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.method == "POST":
            return httpx.Response(202, json={"call_id": "fc-1"})
        status = polls.pop(0)
        if status == 202:
            return httpx.Response(202, json={"call_id": "fc-1", "status": "running"})
        return httpx.Response(200, content=OK_BODY)

    worker, sleeps = client(handler, **async_config(), poll_seconds=0.5)
    result = await worker.generate(REQUEST, 30.0)

    assert result.model_info.lora_applied
    assert seen == [("POST", "/jobs")] + [("GET", "/jobs/fc-1")] * 3
    # Polled at once; "pending" answered without waiting (no time passes here): pauses that grow.
    assert sleeps == [0.1, 0.2]


async def test_async_maps_a_finished_job_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"call_id": "fc-1"})
        return httpx.Response(422, content=error_body("LORA_LOAD_FAILED"))

    worker, _ = client(handler, **async_config())
    with pytest.raises(GatewayFailure) as caught:
        await worker.generate(REQUEST, 30.0)
    assert caught.value.code.value == "LORA_LOAD_FAILED"


async def test_async_submit_refused_with_a_contract_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, content=error_body("INVALID_REQUEST"))

    worker, _ = client(handler, **async_config())
    with pytest.raises(GatewayFailure) as caught:
        await worker.generate(REQUEST, 30.0)
    assert caught.value.code.value == "INVALID_REQUEST"


async def test_async_gives_up_at_the_timeout_and_on_a_lost_job() -> None:
    def pending(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"call_id": "fc-1"})
        return httpx.Response(202, json={"call_id": "fc-1", "status": "pending"})

    worker, sleeps = client(pending, **async_config(), poll_seconds=2.0)
    with pytest.raises(GatewayFailure) as caught:
        await worker.generate(REQUEST, 5.0)
    assert caught.value.code.value == "WORKER_UNAVAILABLE" and caught.value.details["reason"] == "timeout"
    assert sum(sleeps) == pytest.approx(5.0)

    def lost(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"call_id": "fc-1"})
        return httpx.Response(404, json={"detail": "unknown or expired call_id"})

    worker, _ = client(lost, **async_config())
    with pytest.raises(GatewayFailure) as caught:
        await worker.generate(REQUEST, 30.0)
    assert caught.value.code.value == "WORKER_UNAVAILABLE" and caught.value.details["status"] == 404


async def test_async_tolerates_a_transient_poll_failure() -> None:
    answers: list[Callable[[httpx.Request], httpx.Response]] = [
        lambda r: httpx.Response(502, text="bad gateway"),
        lambda r: httpx.Response(200, content=OK_BODY),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"call_id": "fc-1"})
        return answers.pop(0)(request)

    worker, _ = client(handler, **async_config())
    assert (await worker.generate(REQUEST, 30.0)).generation_time_seconds == 0.25


def cancelable_async_config() -> dict[str, object]:
    return {**async_config(), "generate_url": "http://worker/generate", "cancel_url": "http://worker/jobs/{call_id}"}


async def test_async_cancelled_while_polling_cancels_the_job_on_the_worker_then_reraises() -> None:
    seen: list[tuple[str, str]] = []
    polled = asyncio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.method == "POST":
            return httpx.Response(202, json={"call_id": "fc-1"})
        if request.method == "DELETE":
            return httpx.Response(202, json={"call_id": "fc-1", "status": "canceling"})
        polled.set()
        return httpx.Response(202, json={"call_id": "fc-1", "status": "running"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    worker = ModalWorkerClient(http, ProviderConfig(**cancelable_async_config(), poll_seconds=0.01))  # type: ignore[arg-type]
    call = asyncio.create_task(worker.generate(REQUEST, 30.0))
    await polled.wait()
    call.cancel()

    with pytest.raises(asyncio.CancelledError):
        await call
    assert seen[0] == ("POST", "/jobs") and seen[-1] == ("DELETE", "/jobs/fc-1")
    assert seen.count(("DELETE", "/jobs/fc-1")) == 1


async def test_async_cancelled_while_submitting_waits_for_the_call_id_and_cancels_that_job() -> None:
    seen: list[tuple[str, str]] = []
    submitting, answer = asyncio.Event(), asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.method == "POST":
            submitting.set()
            await answer.wait()
            return httpx.Response(202, json={"call_id": "fc-7"})
        return httpx.Response(200, json={"call_id": "fc-7", "status": "canceled"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    worker = ModalWorkerClient(http, ProviderConfig(**cancelable_async_config()))  # type: ignore[arg-type]
    call = asyncio.create_task(worker.generate(REQUEST, 30.0))
    await submitting.wait()
    call.cancel()
    answer.set()

    with pytest.raises(asyncio.CancelledError):
        await call
    assert seen == [("POST", "/jobs"), ("DELETE", "/jobs/fc-7")]


async def test_async_gives_up_at_the_timeout_and_cancels_the_job() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.method == "POST":
            return httpx.Response(202, json={"call_id": "fc-1"})
        return httpx.Response(202, json={"call_id": "fc-1", "status": "running"})

    worker, _ = client(handler, **cancelable_async_config(), poll_seconds=2.0)
    with pytest.raises(GatewayFailure) as caught:
        await worker.generate(REQUEST, 5.0)

    assert caught.value.details["reason"] == "timeout"
    assert seen[-1] == ("DELETE", "/jobs/fc-1")


async def test_a_failed_cancel_does_not_hide_the_cancellation() -> None:
    polled = asyncio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"call_id": "fc-1"})
        if request.method == "DELETE":
            raise httpx.ConnectError("worker gone")
        polled.set()
        return httpx.Response(202, json={"call_id": "fc-1", "status": "running"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    worker = ModalWorkerClient(http, ProviderConfig(**cancelable_async_config(), poll_seconds=0.01))  # type: ignore[arg-type]
    call = asyncio.create_task(worker.generate(REQUEST, 30.0))
    await polled.wait()
    call.cancel()

    with pytest.raises(asyncio.CancelledError):
        await call


async def test_async_waits_out_failing_polls_for_the_outage_window_without_submitting_again() -> None:
    # A worker unreachable for 10 s while its job runs: the same job is polled until it answers, never resubmitted.
    submits: list[httpx.Request] = []
    polls = [502] * 20 + [200]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            submits.append(request)
            return httpx.Response(202, json={"call_id": "fc-1"})
        status = polls.pop(0)
        return httpx.Response(200, content=OK_BODY) if status == 200 else httpx.Response(status, text="down")

    worker, sleeps = client(handler, **async_config(), poll_seconds=0.5, poll_outage_seconds=60.0)

    assert (await worker.generate(REQUEST, 300.0)).generation_time_seconds == 0.25
    assert len(submits) == 1 and sum(sleeps) == pytest.approx(10.0)  # 20 failed polls, poll_seconds after each


async def test_async_gives_up_polling_after_the_outage_window_as_a_call_that_may_have_run() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"call_id": "fc-1"})
        return httpx.Response(503, text="down")

    worker, sleeps = client(handler, **async_config(), poll_seconds=1.0, poll_outage_seconds=5.0)

    with pytest.raises(GatewayFailure) as caught:
        await worker.generate(REQUEST, 300.0)
    assert caught.value.code.value == "WORKER_UNAVAILABLE"
    assert caught.value.details["reason"] == "poll_failed" and caught.value.details["status"] == 503
    # Not "unreachable": a new attempt (which would run the job again) stays within the attempts limit.
    assert retry_rule(caught.value) == ("worker_unavailable", "retry")
    assert 5.0 <= sum(sleeps) <= 7.0
