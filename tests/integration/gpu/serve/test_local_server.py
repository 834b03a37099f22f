"""The local worker app over HTTP: the contract's bodies and statuses, async jobs, auth, health."""

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gpu.serve.bootstrap import build_engine
from gpu.serve.server import LocalWorkerSettings, create_app
from tests.support.engine import image_size
from tests.support.file_server import FileServer

SMALL = {"prompt": "a portrait of sks person", "width": 64, "height": 64, "steps": 2, "seed": 1}


def client_for(settings: LocalWorkerSettings) -> TestClient:
    return TestClient(create_app(settings, lambda: build_engine(settings)))


@pytest.fixture
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    with client_for(LocalWorkerSettings(MODEL_DIR=tiny_model_dir, WORKER_DEVICE="cpu")) as test_client:
        yield test_client


def test_generate_returns_the_seed_contract(client: TestClient, file_server: FileServer, lora_files: dict[str, Path]):
    url = file_server.add("/a.safetensors", lora_files["a"].read_bytes())
    response = client.post("/generate", json={**SMALL, "lora_url": url, "lora_scale": 0.7, "negative_prompt": "blur"})
    assert response.status_code == 200
    body = response.json()
    assert image_size(base64.b64decode(body["image_base64"])) == (64, 64)
    assert body["generation_time_seconds"] > 0
    assert body["model_info"] == {"base_model": "tiny-sdxl-random", "lora_applied": True, "lora_scale": 0.7}
    assert body["timings"]["lora_source"] == "download"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"width": 100}, "width"),
        ({"steps": 0}, "steps"),
        ({"prompt": "   "}, "prompt"),
        ({"lora_scale": 9}, "lora_scale"),
        ({"lora_sha256": "xyz"}, "lora_sha256"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_requests_are_422_invalid_request_naming_the_field(client: TestClient, change: dict, field: str):
    response = client.post("/generate", json={**SMALL, **change})
    assert response.status_code == 422
    body = response.json()
    assert body["error_code"] == "INVALID_REQUEST"
    assert [f["field"] for f in body["details"]["fields"]] == [field]


def test_missing_prompt_and_non_json_are_invalid_requests(client: TestClient):
    assert client.post("/generate", json={"width": 64}).json()["error_code"] == "INVALID_REQUEST"
    response = client.post("/generate", content=b"not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error_code"] == "INVALID_REQUEST"


def test_error_codes_have_their_documented_statuses(client: TestClient, file_server: FileServer):
    bad = file_server.add("/bad.safetensors", b"\x00" * 100)
    response = client.post("/generate", json={**SMALL, "lora_url": bad})
    assert (response.status_code, response.json()["error_code"]) == (422, "LORA_LOAD_FAILED")
    response = client.post("/generate", json={**SMALL, "lora_url": file_server.url("/missing")})
    assert (response.status_code, response.json()["error_code"]) == (424, "LORA_DOWNLOAD_FAILED")
    response = client.post("/generate", json={**SMALL, "lora_url": "http://example.com/x.safetensors"})
    assert (response.status_code, response.json()["error_code"]) == (424, "LORA_DOWNLOAD_FAILED")


def test_async_jobs_submit_then_poll(client: TestClient):
    submitted = client.post("/jobs", json=SMALL)
    assert submitted.status_code == 202
    call_id = submitted.json()["call_id"]
    deadline = time.monotonic() + 60
    while True:
        polled = client.get(f"/jobs/{call_id}")
        if polled.status_code != 202:
            break
        assert polled.json()["status"] in ("pending", "running")
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert polled.status_code == 200
    assert image_size(base64.b64decode(polled.json()["image_base64"])) == (64, 64)
    assert client.get("/jobs/fc-unknown").status_code == 404


def test_async_job_failure_carries_the_error_shape(client: TestClient, file_server: FileServer):
    call_id = client.post("/jobs", json={**SMALL, "lora_url": file_server.url("/missing")}).json()["call_id"]
    for _ in range(600):
        polled = client.get(f"/jobs/{call_id}")
        if polled.status_code != 202:
            break
        time.sleep(0.05)
    assert (polled.status_code, polled.json()["error_code"]) == (424, "LORA_DOWNLOAD_FAILED")


def test_bearer_key_is_required_when_configured(tiny_model_dir: Path):
    settings = LocalWorkerSettings(MODEL_DIR=tiny_model_dir, WORKER_DEVICE="cpu", WORKER_API_KEY="s3cr3t-key")
    with client_for(settings) as client:
        assert client.post("/generate", json=SMALL).status_code == 401
        assert client.post("/generate", json=SMALL, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/jobs/fc-x", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.post("/generate", json=SMALL, headers={"Authorization": "Bearer s3cr3t-key"})
        assert ok.status_code == 200
        assert client.get("/healthz").status_code == 200


def test_health_reports_the_model(client: TestClient):
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["base_model"] == "tiny-sdxl-random" and body["device"] == "cpu"


def test_missing_model_gives_503_model_load_failed(tmp_path: Path):
    settings = LocalWorkerSettings(MODEL_DIR=tmp_path / "none", WORKER_DEVICE="cpu", WORKER_BUILD_TINY_MODEL=False)
    with client_for(settings) as client:
        assert client.get("/healthz").status_code == 503
        response = client.post("/generate", json=SMALL)
        assert (response.status_code, response.json()["error_code"]) == (503, "MODEL_LOAD_FAILED")
