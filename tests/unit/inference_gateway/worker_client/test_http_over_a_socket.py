"""The provider client against a real HTTP worker whose calls take time: Modal's 303 chain for a long sync call, one
deadline per call, a sync call past the gateway's patience not submitted again, polls held by the worker or not."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest

from contracts.events import GenerationFailed
from contracts.worker import WorkerRequest
from services.inference_gateway import attempts as attempts_module
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.metrics import Metrics
from services.inference_gateway.ports import GatewayPorts, GenerationConfig, Timing
from services.inference_gateway.retries import RetryLimits, RetryPolicy, retry_rule
from services.inference_gateway.service import GenerationService
from services.inference_gateway.worker_client.http import (
    MAX_REDIRECTS,
    POLL_BACKOFF_START_SECONDS,
    ModalWorkerClient,
    ProviderConfig,
    WorkerMode,
)
from tests.support.gateway.fakes import FakeClock, FakeStorage, RecordingResultPublisher, gid, requested
from tests.support.gateway.long_call_worker import LongCallWorker

REQUEST = WorkerRequest(prompt="a portrait", width=64, height=64, steps=2, request_id=gid("gen-1"))


@asynccontextmanager
async def client_of(
    worker: LongCallWorker, mode: WorkerMode = "sync", poll_seconds: float = 2.0
) -> AsyncIterator[ModalWorkerClient]:
    base = worker.base_url
    config = ProviderConfig(
        mode=mode,
        generate_url=f"{base}/generate",
        submit_url=f"{base}/jobs",
        result_url=f"{base}/jobs/{{call_id}}",
        cancel_url=f"{base}/jobs/{{call_id}}",
        poll_seconds=poll_seconds,
    )
    async with httpx.AsyncClient() as http:
        yield ModalWorkerClient(http, config)


# --- sync: Modal's redirect chain, one deadline ---


async def test_a_sync_call_follows_a_same_origin_redirect_chain_longer_than_five_hops_to_its_answer() -> None:
    hops = MAX_REDIRECTS + 3
    with LongCallWorker(hops=hops, hop_seconds=0.02) as worker:
        async with client_of(worker) as client:
            result = await client.generate(REQUEST, 30.0)

    assert result.request_id == gid("gen-1")
    # One run: the POST once, then Modal's GETs of the same call (the body is never sent again).
    assert (worker.count("POST", "/generate"), worker.count("GET", "/generate")) == (1, hops)


async def test_a_sync_call_in_an_endless_redirect_chain_ends_at_its_one_deadline() -> None:
    with LongCallWorker(hops=None, hop_seconds=0.2) as worker:
        async with client_of(worker) as client:
            began = time.monotonic()
            with pytest.raises(GatewayFailure) as caught:
                await client.generate(REQUEST, 1.0)
            took = time.monotonic() - began

    assert caught.value.details["reason"] == "timeout" and 1.0 <= took < 1.5
    assert worker.count("POST", "/generate") == 1 and worker.count("GET", "/generate") >= 3
    assert retry_rule(caught.value) == ("worker_timeout", "never")


async def test_a_sync_answer_whose_body_comes_slowly_ends_at_the_calls_deadline_not_per_read() -> None:
    # Each piece comes well within a read timeout of 1 s; the whole body takes 3 s.
    with LongCallWorker(trickle_seconds=3.0) as worker:
        async with client_of(worker) as client:
            began = time.monotonic()
            with pytest.raises(GatewayFailure) as caught:
                await client.generate(REQUEST, 1.0)
            took = time.monotonic() - began

    assert caught.value.details["reason"] == "timeout" and took < 1.5


async def test_a_sync_call_past_the_gateways_patience_is_not_submitted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker is told to stop at 0.5 s and the gateway waits 0.5 s more (the grace, shortened from 15 s for the
    # test); the worker keeps the call in its redirect chain past both: it may still be running.
    monkeypatch.setattr(attempts_module, "RESPONSE_GRACE_SECONDS", 0.5)
    with LongCallWorker(hops=None, hop_seconds=0.2) as worker:
        async with client_of(worker) as client:
            clock = FakeClock()
            service = GenerationService(
                GatewayPorts(client, FakeStorage(), RecordingResultPublisher()),
                GenerationConfig(
                    RetryLimits(RetryPolicy(max_attempts=3, backoff_base_seconds=1.0, backoff_max_seconds=8.0)),
                    lora_url_ttl_seconds=300,
                    worker_timeout_seconds=0.5,
                ),
                Metrics(),
                Timing(clock=clock, sleep=clock.sleep, rand=lambda: 0.5),
            )
            result = await service.handle(requested(deadline_in=timedelta(minutes=10), lora_key=None))

    assert isinstance(result, GenerationFailed)
    assert (result.error_code, result.attempts) == ("WORKER_UNAVAILABLE", 1)
    assert worker.count("POST", "/generate") == 1


# --- async: polls held by the worker, or paced when it does not hold them ---


async def test_async_polls_at_once_and_the_worker_holds_the_poll_until_the_job_ends() -> None:
    with LongCallWorker(job_seconds=0.3, honours_wait=True) as worker:
        async with client_of(worker, "async", poll_seconds=5.0) as client:
            began = time.monotonic()
            result = await client.generate(REQUEST, 30.0)
            took = time.monotonic() - began

    assert result.request_id == gid("gen-1")
    submitted, *polls = [s for s in worker.seen if s.method in ("POST", "GET")]
    # One poll, sent before the job ended (not after MODAL_POLL_SECONDS), held by the worker until it did.
    assert len(polls) == 1 and "wait=" in polls[0].path
    assert polls[0].at - submitted.at < 0.25 and took < 1.0


async def test_async_backs_off_against_a_worker_that_ignores_wait() -> None:
    poll_seconds = 0.4
    with LongCallWorker(job_seconds=1.2, honours_wait=False) as worker:
        async with client_of(worker, "async", poll_seconds=poll_seconds) as client:
            result = await client.generate(REQUEST, 30.0)

    assert result.request_id == gid("gen-1")
    submitted, *polls = [s for s in worker.seen if s.method in ("POST", "GET")]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(polls)]
    assert polls[0].at - submitted.at < POLL_BACKOFF_START_SECONDS  # the first poll at once
    # Then pauses that grow from 0.1 s up to poll_seconds, never faster: a few polls, not a flood.
    assert gaps[0] >= POLL_BACKOFF_START_SECONDS and all(gap < poll_seconds + 0.2 for gap in gaps)
    assert all(later >= earlier - 0.05 for earlier, later in itertools.pairwise(gaps))
    assert 3 <= len(polls) <= 8
