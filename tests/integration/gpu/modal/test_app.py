"""The Modal app imports without network or credentials, and its class serves the contract locally."""

import base64
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.engine import image_size
from tests.support.log_records import Records


def raw_method(cls: type, name: str) -> Any:
    # The decorators keep the original function; this calls it as Modal's container would.
    return cls.__dict__[name]._get_raw_f()


def test_modal_app_definition_uses_modal_1x_names() -> None:
    import modal

    from gpu.modal import app as modal_app

    assert isinstance(modal_app.app, modal.App)
    assert modal_app.app.name == "vixenbliss-sdxl-lora"
    user_cls = modal_app.SdxlLoraWorker._get_user_cls()
    for name in ("load", "to_gpu", "generate", "generate_sync"):
        assert name in user_cls.__dict__


def test_modal_class_generate_path_runs_the_tiny_model(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, file_server: Any, lora_files: dict[str, Path]
) -> None:
    from gpu.modal import app as modal_app

    monkeypatch.setenv("MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("WORKER_MODE", "local")
    monkeypatch.setenv("WORKER_WARMUP_SIZES", "64x64")
    monkeypatch.delenv("LORA_CACHE_DIR", raising=False)
    user_cls = modal_app.SdxlLoraWorker._get_user_cls()
    worker = user_cls.__new__(user_cls)
    raw_method(user_cls, "load")(worker)  # before the snapshot: CPU
    raw_method(user_cls, "to_gpu")(worker)  # after restore: no GPU here, stays on CPU; then the warm-up
    assert worker.lifecycle.engine.requests_served == 1  # the warm-up's generation, before the first input

    url = file_server.add("/a.safetensors", lora_files["a"].read_bytes())
    payload = {"prompt": "sks", "width": 64, "height": 64, "steps": 2, "lora_url": url}
    body = raw_method(user_cls, "generate")(worker, payload)
    assert body["http_status"] == 200 and body["model_info"]["lora_applied"] is True
    assert image_size(base64.b64decode(body["image_base64"])) == (64, 64)

    invalid = raw_method(user_cls, "generate")(worker, {"prompt": "sks", "width": 63})
    assert (invalid["http_status"], invalid["error_code"]) == (422, "INVALID_REQUEST")

    # The sync endpoint is an ASGI app built over this container's runtime.
    sync = TestClient(raw_method(user_cls, "generate_sync")(worker))
    response = sync.post("/", json={**payload, "lora_url": file_server.url("/none")})
    assert response.status_code == 424 and response.json()["error_code"] == "LORA_DOWNLOAD_FAILED"


def test_modal_class_answers_model_load_failed_instead_of_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpu.modal import app as modal_app

    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "no-weights"))
    user_cls = modal_app.SdxlLoraWorker._get_user_cls()
    worker = user_cls.__new__(user_cls)
    raw_method(user_cls, "load")(worker)
    raw_method(user_cls, "to_gpu")(worker)
    body = raw_method(user_cls, "generate")(worker, {"prompt": "sks"})
    assert (body["http_status"], body["error_code"]) == (503, "MODEL_LOAD_FAILED")


def test_modal_class_cancel_stops_the_engine_and_the_container_serves_on(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, file_server: Any, lora_files: dict[str, Path]
) -> None:
    """Modal's cancel of the running input, as its container delivers it (SIGUSR1 → InputCancellation in the main
    thread): the engine, on its own thread, stops and restores the weights before the cancel goes on."""
    from modal.exception import InputCancellation

    from gpu.engine.fingerprint import fingerprint_pipeline
    from gpu.modal import app as modal_app
    from tests.support.modal_cancel import modal_cancel_signal
    from tests.support.step_watch import watch_steps

    monkeypatch.setenv("MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("WORKER_MODE", "local")
    monkeypatch.delenv("LORA_CACHE_DIR", raising=False)
    user_cls = modal_app.SdxlLoraWorker._get_user_cls()
    worker = user_cls.__new__(user_cls)
    raw_method(user_cls, "load")(worker)
    raw_method(user_cls, "to_gpu")(worker)
    engine = worker.lifecycle.engine
    before = fingerprint_pipeline(engine.pipeline)

    url = file_server.add("/a.safetensors", lora_files["a"].read_bytes())
    payload = {"prompt": "long", "width": 64, "height": 64, "steps": 100, "lora_url": url}
    with modal_cancel_signal() as cancel, watch_steps(engine, monkeypatch) as watch:
        watch.on_step(lambda: cancel.delivered == 0 and cancel.send())
        with pytest.raises(InputCancellation):
            raw_method(user_cls, "generate")(worker, payload)
        assert fingerprint_pipeline(engine.pipeline) == before
        assert watch.steps["long"] <= 3
    body = raw_method(user_cls, "generate")(worker, {**payload, "steps": 2})
    assert body["http_status"] == 200 and body["model_info"]["lora_applied"] is True
    assert fingerprint_pipeline(engine.pipeline) == before


def test_no_gpu_after_restore_is_model_load_failed_and_logged_never_a_cpu_worker(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpu.modal import app as modal_app

    monkeypatch.setenv("MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("WORKER_DEVICE", "cuda")
    user_cls = modal_app.SdxlLoraWorker._get_user_cls()
    worker = user_cls.__new__(user_cls)
    raw_method(user_cls, "load")(worker)  # sets up the worker's logging (root handlers): listen on the logger
    seen = Records()
    logger = logging.getLogger("gpu.serve.lifecycle")
    logger.addHandler(seen)
    try:
        raw_method(user_cls, "to_gpu")(worker)  # this machine has no CUDA device
    finally:
        logger.removeHandler(seen)

    body = raw_method(user_cls, "generate")(worker, {"prompt": "sks", "width": 64, "height": 64, "steps": 1})
    assert (body["http_status"], body["error_code"]) == (503, "MODEL_LOAD_FAILED")
    assert "no CUDA device" in body["error"]
    assert any(r.levelno == logging.ERROR and "no GPU after restore" in r.getMessage() for r in seen.records)


def test_a_load_that_failed_before_the_snapshot_is_tried_again_from_the_reloaded_volume(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpu.serve.handler import status_and_body
    from gpu.serve.lifecycle import WorkerLifecycle
    from gpu.serve.settings import WorkerSettings

    volume = tmp_path / "volume" / "sdxl-base-1.0"  # empty when the snapshot was taken
    monkeypatch.setenv("MODEL_DIR", str(volume))
    monkeypatch.setenv("WORKER_MODE", "local")
    reloads: list[int] = []

    def reload_volume() -> None:  # the weights arrived on the Volume meanwhile
        reloads.append(1)
        shutil.copytree(tiny_model_dir, volume)

    worker = WorkerLifecycle(WorkerSettings(), reload_weights=reload_volume)
    worker.load_before_snapshot()
    assert worker.engine is None and worker.load_error is not None
    worker.start_serving(phase="after restore", reload_failed_load=True)

    status, body = status_and_body(worker.run({"prompt": "sks", "width": 64, "height": 64, "steps": 1}))
    assert reloads == [1] and worker.load_error is None
    assert status == 200 and image_size(base64.b64decode(body["image_base64"])) == (64, 64)
