"""The gateway's CPU-heavy steps run in worker threads: decoding the PNG and parsing the worker's answer (a base64
image of several MiB) would otherwise stall every other task on the event loop."""

from __future__ import annotations

import threading

import httpx
import pytest

from contracts.events import GenerationCompleted
from contracts.worker import WorkerRequest, WorkerSuccess
from services.inference_gateway import results
from services.inference_gateway.metrics import Metrics
from services.inference_gateway.ports import GatewayPorts, GenerationConfig, Timing
from services.inference_gateway.retries import RetryLimits, RetryPolicy
from services.inference_gateway.service import GenerationService
from services.inference_gateway.worker_client import http as worker_http
from services.inference_gateway.worker_client.http import ModalWorkerClient, ProviderConfig
from tests.support.gateway.fakes import (
    FakeClock,
    FakeStorage,
    FakeWorker,
    RecordingResultPublisher,
    gid,
    requested,
    success,
)

REQUEST = WorkerRequest(prompt="a portrait", width=64, height=64, steps=2, request_id=gid("gen-1"))


def record_thread(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[threading.Thread]:
    """Wrap `module.name` so that each call notes the thread it ran in."""
    threads: list[threading.Thread] = []
    original = getattr(module, name)

    def wrapped(*args: object) -> object:
        threads.append(threading.current_thread())
        return original(*args)

    monkeypatch.setattr(module, name, wrapped)
    return threads


async def test_the_png_is_decoded_and_checked_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = record_thread(monkeypatch, results, "decode_png")
    clock = FakeClock()
    gateway = GenerationService(
        GatewayPorts(FakeWorker(success()), FakeStorage(), RecordingResultPublisher()),
        GenerationConfig(
            RetryLimits(RetryPolicy(max_attempts=1, backoff_base_seconds=0.0, backoff_max_seconds=0.0)),
            lora_url_ttl_seconds=300,
            worker_timeout_seconds=60.0,
        ),
        Metrics(),
        Timing(clock=clock, sleep=clock.sleep),
    )

    result = await gateway.handle(requested())

    assert isinstance(result, GenerationCompleted)
    assert len(threads) == 1 and threads[0] is not threading.main_thread()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_worker_answer_is_parsed_off_the_event_loop(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = record_thread(monkeypatch, worker_http, "outcome_of")
    body = success(request_id=gid("gen-1")).model_dump_json().encode()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and mode == "async":
            return httpx.Response(202, json={"call_id": "fc-1"})
        return httpx.Response(200, content=body)

    config = ProviderConfig(
        mode=mode,  # type: ignore[arg-type]
        generate_url="http://worker/generate",
        submit_url="http://worker/jobs",
        result_url="http://worker/jobs/{call_id}",
        poll_seconds=0.001,
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        answered = await ModalWorkerClient(http, config).generate(REQUEST, 10.0)

    assert isinstance(answered, WorkerSuccess) and answered.request_id == gid("gen-1")
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
