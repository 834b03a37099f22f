"""SIGKILL of a real gateway process mid-job, with the real tiny worker, RabbitMQ, PostgreSQL and S3: a second
gateway takes the job over; one result, and in async mode the worker call polled again instead of a second run."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy.engine import URL

from contracts.events import GenerationCompleted, GenerationFailed, GenerationStarted
from contracts.topology import Topology
from scripts.stacklib.processes import ManagedProcess, free_port, start_process, stop, wait_until_ready
from services.common.persistence.db import create_engine, create_session_factory
from services.common.storage.objects import ObjectStorage
from services.inference_gateway.jobs import JobStore
from services.inference_gateway.models import Job
from tests.support.gateway.harness import ROOT, ResultLog, gateway_env, lora_request, publish_request

LEASE_SECONDS = 2


@contextmanager
def gateway_process(env: dict[str, str], log_path: Path) -> Iterator[ManagedProcess]:
    """`python -m services.inference_gateway` on a free port, ready; stopped (if still alive) afterwards."""
    port = free_port()
    argv = [sys.executable, "-m", "services.inference_gateway", "--host", "127.0.0.1", "--port", str(port)]
    process = start_process("gateway", argv, env=env, log_path=log_path, cwd=ROOT, port=port)
    try:
        wait_until_ready(process, host="127.0.0.1", timeout=90.0, health_path="/readyz")
        yield process
    finally:
        stop(process)


async def job_row(url: URL, generation_id: str) -> Job | None:
    engine = create_engine(url)
    try:
        return await JobStore(create_session_factory(engine), owner="test", lease_seconds=1).job(generation_id)
    finally:
        await engine.dispose()


async def until_attempt_recorded(url: URL, generation_id: str, mode: str, wait: float = 60.0) -> Job:
    """The job once its first attempt is recorded, with its worker call in async mode."""
    async with asyncio.timeout(wait):
        while True:
            job = await job_row(url, generation_id)
            if job is not None and job.attempts >= 1 and (job.call_id or mode == "sync"):
                return job
            await asyncio.sleep(0.05)


def served(worker_url: str) -> int:
    health = httpx.get(worker_url.replace("/generate", "/healthz"), timeout=10).json()
    return int(health["requests_served"])


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_a_gateway_killed_mid_job_is_taken_over_with_one_result_and_no_second_submit(
    mode: str,
    amqp: AbstractRobustConnection,
    topo: Topology,
    storage: ObjectStorage,
    rabbitmq_url: str,
    worker_url: str,
    pg_url: URL,
    lora_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    request = await lora_request(storage, lora_files["a"].read_bytes(), steps=60)
    env = {
        **os.environ,
        **gateway_env(
            rabbitmq_url,
            storage,
            topo,
            worker_url,
            MODAL_MODE=mode,
            MODAL_POLL_SECONDS=0.1,
            GATEWAY_DATABASE_URL=pg_url.render_as_string(hide_password=False),
            GATEWAY_JOB_LEASE_SECONDS=LEASE_SECONDS,
        ),
    }
    results = ResultLog(amqp, topo)
    before = served(worker_url)

    with gateway_process(env, tmp_path / "gateway-1.log") as first:
        await publish_request(amqp, topo, request)
        await results.until(request.generation_id, GenerationStarted)
        left = await until_attempt_recorded(pg_url, request.generation_id, mode)
        os.killpg(first.pid, signal.SIGKILL)
        assert first.popen is not None
        await asyncio.to_thread(first.popen.wait, 10)
    with gateway_process(env, tmp_path / "gateway-2.log"):
        final = await results.until(request.generation_id, (GenerationCompleted, GenerationFailed), wait=120)

    assert isinstance(final, GenerationCompleted), final
    job = await job_row(pg_url, request.generation_id)
    assert job is not None and job.state == "completed" and job.recoveries == 1
    terminal = [
        e for e in results.events[request.generation_id] if isinstance(e, GenerationCompleted | GenerationFailed)
    ]
    assert len(terminal) == 1
    if mode == "async":
        # The call the first gateway made is the one the second polled: one run on the worker, one attempt.
        assert job.call_id == left.call_id and final.attempts == 1
        assert served(worker_url) - before == 1
        assert [type(e).__name__ for e in results.events[request.generation_id]].count("GenerationStarted") == 1
    else:
        # The sync call died with the gateway (the worker stopped it on the disconnect): run once more.
        assert final.attempts == 2
