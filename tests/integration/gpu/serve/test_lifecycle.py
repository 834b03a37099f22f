"""One worker lifecycle for every host (gpu/serve/lifecycle.py): the local server and the Modal class load, move, warm
up
and serve on one engine thread, the warm-up included (CUDA-graph trees are kept per thread, so code warmed on
another thread would be recorded again on the first request), and each logs the devices it found and the one it
serves on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gpu.engine.budget import RequestBudget
from gpu.engine.engine import SdxlLoraEngine
from gpu.serve.server import LocalWorkerSettings, create_app
from tests.support.engine import tiny_engine
from tests.support.log_records import Records
from tests.support.step_watch import WAIT

SMALL = {"prompt": "sks", "width": 64, "height": 64, "steps": 1}


@pytest.fixture
def engine_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each engine call ran on (warm-up and requests alike), in order."""
    threads: list[str] = []
    generate = SdxlLoraEngine.generate

    def recorded(self: SdxlLoraEngine, request: Any, budget: RequestBudget | None = None) -> Any:
        threads.append(threading.current_thread().name)
        return generate(self, request, budget)

    monkeypatch.setattr(SdxlLoraEngine, "generate", recorded)
    return threads


@pytest.fixture
def lifecycle_log() -> Iterator[Records]:
    seen = Records()
    logger = logging.getLogger("gpu.serve.lifecycle")
    logger.addHandler(seen)
    logger.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        logger.removeHandler(seen)
        logger.setLevel(logging.NOTSET)


def test_the_local_server_warms_up_and_serves_sync_and_jobs_on_one_thread(
    tiny_model_dir: Path, engine_threads: list[str], lifecycle_log: Records
) -> None:
    settings = LocalWorkerSettings(MODEL_DIR=tiny_model_dir, WORKER_DEVICE="cpu", WORKER_WARMUP_SIZES="64x64")
    with TestClient(create_app(settings, lambda: tiny_engine(tiny_model_dir))) as client:
        assert len(engine_threads) == 1  # the warm-up, before the first request
        assert client.post("/generate", json=SMALL).status_code == 200
        call_id = client.post("/jobs", json=SMALL).json()["call_id"]
        assert client.get(f"/jobs/{call_id}", params={"wait": WAIT}).status_code == 200
        assert client.get("/healthz").json()["compiled_unet"] is None  # an eager UNet has no compile gate
    assert len(engine_threads) == 3 and len(set(engine_threads)) == 1, engine_threads
    assert any("at start: 0 CUDA device(s) visible; serving on cpu" in r.getMessage() for r in lifecycle_log.records)


def test_the_modal_class_warms_up_and_serves_both_of_its_ways_in_on_one_thread(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, engine_threads: list[str], lifecycle_log: Records
) -> None:
    from gpu.modal import app as modal_app

    monkeypatch.setenv("MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("WORKER_MODE", "local")
    monkeypatch.setenv("WORKER_WARMUP_SIZES", "64x64")
    monkeypatch.delenv("LORA_CACHE_DIR", raising=False)
    user_cls = modal_app.SdxlLoraWorker._get_user_cls()
    worker = user_cls.__new__(user_cls)
    user_cls.__dict__["load"]._get_raw_f()(worker)
    assert worker.lifecycle.thread._threads == set()  # no thread before the snapshot
    user_cls.__dict__["to_gpu"]._get_raw_f()(worker)
    body = user_cls.__dict__["generate"]._get_raw_f()(worker, SMALL)  # .remote / .spawn
    assert body["http_status"] == 200
    sync = TestClient(user_cls.__dict__["generate_sync"]._get_raw_f()(worker))  # the sync web endpoint
    assert sync.post("/", json=SMALL).status_code == 200
    assert len(engine_threads) == 3 and len(set(engine_threads)) == 1, engine_threads
    messages = [r.getMessage() for r in lifecycle_log.records]
    assert any(m.startswith("loaded on the CPU before the snapshot; accelerator probes held off: ") for m in messages)
    assert any("after restore: 0 CUDA device(s) visible; serving on cpu" in m for m in messages), messages
