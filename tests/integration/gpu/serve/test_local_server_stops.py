"""The local worker app frees the GPU: a sync caller that disconnects stops its request at the next step,
DELETE /jobs/{id} drops a pending job (it never runs) or stops a running one, and a job whose budget ran out in
the queue is TIMEOUT without running. The real tiny pipeline throughout; the base weights are exact after each."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from gpu.engine.engine import SdxlLoraEngine
from gpu.engine.fingerprint import fingerprint_pipeline
from gpu.serve.server import LocalWorkerSettings, create_app
from tests.support.engine import tiny_engine
from tests.support.file_server import FileServer
from tests.support.stack.live_server import live_server
from tests.support.step_watch import WAIT, watch_steps

SMALL = {"prompt": "next", "width": 64, "height": 64, "steps": 3, "seed": 1}
LONG = {**SMALL, "steps": 100}


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> SdxlLoraEngine:
    return tiny_engine(tiny_model_dir)


@pytest.fixture(scope="module")
def settings(tiny_model_dir: Path) -> LocalWorkerSettings:
    return LocalWorkerSettings(MODEL_DIR=tiny_model_dir, WORKER_DEVICE="cpu")


@pytest.fixture
def client(engine: SdxlLoraEngine, settings: LocalWorkerSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, lambda: engine)) as test_client:
        yield test_client


@pytest.fixture
def lora_url(file_server: FileServer, lora_files: dict[str, Path]) -> str:
    return file_server.add("/a.safetensors", lora_files["a"].read_bytes())


def finished(client: TestClient, call_id: str) -> httpx.Response:
    response = client.get(f"/jobs/{call_id}", params={"wait": WAIT})
    assert response.status_code != 202, f"job {call_id} still {response.json()['status']} after {WAIT}s"
    return response


def test_sync_client_that_disconnects_frees_the_worker(
    engine: SdxlLoraEngine, settings: LocalWorkerSettings, lora_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = fingerprint_pipeline(engine.pipeline)

    async def scenario(base_url: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=base_url, timeout=WAIT) as http:
            body = {**LONG, "prompt": "gone", "lora_url": lora_url}
            abandoned = asyncio.create_task(http.post("/generate", json=body))
            await asyncio.to_thread(watch.wait_started, "gone")
            abandoned.cancel()  # httpx closes the connection: the client is gone mid-request
            with pytest.raises(asyncio.CancelledError):
                await abandoned
        async with httpx.AsyncClient(base_url=base_url, timeout=WAIT) as http:
            return await http.post("/generate", json={**SMALL, "lora_url": lora_url})

    with watch_steps(engine, monkeypatch) as watch, live_server(create_app(settings, lambda: engine)) as url:
        second = asyncio.run(scenario(url))
    assert second.status_code == 200, second.text
    assert watch.runs == ["gone", "next"]
    assert watch.steps["gone"] <= 3, f"the abandoned request ran {watch.steps['gone']} of 100 steps"
    assert fingerprint_pipeline(engine.pipeline) == before


def test_delete_of_a_running_job_stops_it_at_the_next_step(
    client: TestClient, engine: SdxlLoraEngine, lora_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = fingerprint_pipeline(engine.pipeline)
    with watch_steps(engine, monkeypatch) as watch:
        running = client.post("/jobs", json={**LONG, "prompt": "long", "lora_url": lora_url}).json()["call_id"]
        watch.wait_started("long")
        deleted = client.delete(f"/jobs/{running}")
        assert (deleted.status_code, deleted.json()) == (202, {"call_id": running, "status": "canceling"})
        ended = finished(client, running)
        following = client.post("/jobs", json=SMALL).json()["call_id"]
        assert finished(client, following).status_code == 200
    body = ended.json()
    assert (ended.status_code, body["error_code"], body["retryable"]) == (500, "GENERATION_FAILED", False)
    assert body["details"]["canceled"] is True and body["details"]["steps_done"] <= 3
    assert watch.steps["long"] <= 3 and watch.runs == ["long", "next"]
    assert client.delete(f"/jobs/{running}").json()["status"] == "canceled"  # a second DELETE changes nothing
    assert fingerprint_pipeline(engine.pipeline) == before


def test_delete_of_a_pending_job_means_it_never_runs(
    client: TestClient, engine: SdxlLoraEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with watch_steps(engine, monkeypatch) as watch:
        running = client.post("/jobs", json={**LONG, "prompt": "long"}).json()["call_id"]
        watch.wait_started("long")
        pending = client.post("/jobs", json={**SMALL, "prompt": "pending"}).json()["call_id"]
        deleted = client.delete(f"/jobs/{pending}")
        assert (deleted.status_code, deleted.json()) == (200, {"call_id": pending, "status": "canceled"})
        # Ended at once, without waiting for the job ahead of it.
        dropped = client.get(f"/jobs/{pending}")
        assert dropped.status_code == 500 and dropped.json()["details"]["canceled"] is True
        client.delete(f"/jobs/{running}")
        finished(client, running)
        following = client.post("/jobs", json=SMALL).json()["call_id"]
        assert finished(client, following).status_code == 200
    assert watch.runs == ["long", "next"]


def test_a_job_whose_budget_ran_out_in_the_queue_is_timeout_without_running(
    client: TestClient, engine: SdxlLoraEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    with watch_steps(engine, monkeypatch) as watch:
        running = client.post("/jobs", json={**LONG, "prompt": "long"}).json()["call_id"]
        watch.wait_started("long")
        queued_at = time.monotonic()
        queued = client.post("/jobs", json={**SMALL, "prompt": "queued", "timeout_seconds": 0.2}).json()["call_id"]
        # The job ahead runs on until the queued job's budget is spent, then leaves.
        watch.wait_until(lambda: time.monotonic() > queued_at + 0.3)
        client.delete(f"/jobs/{running}")
        refused = finished(client, queued)
    body = refused.json()
    assert (refused.status_code, body["error_code"]) == (504, "TIMEOUT")
    assert "before the request started" in body["error"] and body["details"]["waited_seconds"] >= 0.2
    assert watch.runs == ["long"]


def test_delete_and_wait_of_unknown_jobs_are_404(client: TestClient) -> None:
    assert client.delete("/jobs/fc-unknown").status_code == 404
    assert client.get("/jobs/fc-unknown", params={"wait": 1}).status_code == 404
    assert client.get("/jobs/fc-unknown", params={"wait": 999}).json()["error_code"] == "INVALID_REQUEST"


def test_delete_of_a_finished_job_keeps_its_result(client: TestClient) -> None:
    call_id = client.post("/jobs", json=SMALL).json()["call_id"]
    assert finished(client, call_id).status_code == 200
    assert client.delete(f"/jobs/{call_id}").json() == {"call_id": call_id, "status": "completed"}
    assert client.get(f"/jobs/{call_id}").status_code == 200
