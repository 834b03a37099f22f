"""Modal's sync endpoint (the class's ASGI app, label sdxl-lora-generate) stops the engine when its caller leaves
(an `http.disconnect`) and when Modal cancels the input (for an async input, Modal cancels its task): the engine
stops within a few steps, the base weights are bit-identical, and the next request starts at once.

Driven as Modal's ASGI wrapper drives the app (modal/_runtime/asgi.py): a scope, the body, then a `receive` that
blocks until the caller disconnects. The real tiny pipeline with a real LoRA throughout.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpu.engine.fingerprint import fingerprint_pipeline
from tests.support.file_server import FileServer
from tests.support.step_watch import WAIT, watch_steps

LONG = {"prompt": "long", "width": 64, "height": 64, "steps": 100}
NEXT = {"prompt": "next", "width": 64, "height": 64, "steps": 2}


def raw_method(cls: type, name: str) -> Any:
    return cls.__dict__[name]._get_raw_f()


@pytest.fixture(scope="module")
def worker(tiny_model_dir: Path) -> Iterator[Any]:
    """The Modal class, set up as its container does: the snap=True hook, then the snap=False hook."""
    from gpu.modal import app as modal_app

    patch = pytest.MonkeyPatch()
    patch.setenv("MODEL_DIR", str(tiny_model_dir))
    patch.setenv("WORKER_MODE", "local")
    patch.delenv("LORA_CACHE_DIR", raising=False)
    patch.delenv("WORKER_WARMUP_SIZES", raising=False)
    user_cls = modal_app.SdxlLoraWorker._get_user_cls()
    instance = user_cls.__new__(user_cls)
    raw_method(user_cls, "load")(instance)
    raw_method(user_cls, "to_gpu")(instance)
    yield instance
    patch.undo()


@pytest.fixture
def lora_url(file_server: FileServer, lora_files: dict[str, Path]) -> str:
    return file_server.add("/a.safetensors", lora_files["a"].read_bytes())


class AsgiCall:
    """One POST to an ASGI app, its messages recorded; `disconnect()` is the caller going away."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = json.dumps(body).encode()
        self._sent_body = False
        self._gone = asyncio.Event()
        self.sent: list[dict[str, Any]] = []

    def disconnect(self) -> None:
        self._gone.set()

    async def receive(self) -> dict[str, Any]:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def run(self, app: Any) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "https",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", b"modal.run")],
            "client": ("127.0.0.1", 1),
            "server": ("modal.run", 443),
        }
        await app(scope, self.receive, self.send)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    def body(self) -> dict[str, Any]:
        return dict(json.loads(b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")))


def sync_app(worker: Any) -> Any:
    return raw_method(type(worker), "generate_sync")(worker)


def next_request_starts_at_once(app: Any, watch: Any, loop_run: Any) -> float:
    """The next request's answer (a success) and how long after its arrival its first step ran."""
    arrived = time.monotonic()
    first_step: list[float] = []
    watch.on_step(lambda: not first_step and first_step.append(time.monotonic()))
    call = AsgiCall(NEXT)
    loop_run(call.run(app))
    assert call.status == 200, call.body()
    assert call.body()["model_info"]["lora_applied"] is False
    return first_step[0] - arrived


def test_a_caller_that_disconnects_stops_the_engine_and_the_next_request_starts_at_once(
    worker: Any, lora_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = worker.lifecycle.engine
    before = fingerprint_pipeline(engine.pipeline)
    app = sync_app(worker)
    with watch_steps(engine, monkeypatch) as watch:

        async def scenario() -> AsgiCall:
            call = AsgiCall({**LONG, "lora_url": lora_url})
            running = asyncio.create_task(call.run(app))
            started = await asyncio.to_thread(watch.started("long").wait, WAIT)
            assert started, "the long request never reached its first step"
            call.disconnect()
            await asyncio.wait_for(running, WAIT)
            return call

        call = asyncio.run(scenario())
        assert watch.steps["long"] <= 3, f"the engine ran {watch.steps['long']} steps for a caller who had left"
        answer = call.body()  # sent to nobody: the contract's cancel error
        assert answer["error_code"] == "GENERATION_FAILED" and answer["details"]["canceled"] is True
        assert fingerprint_pipeline(engine.pipeline) == before
        assert next_request_starts_at_once(app, watch, asyncio.run) < 5.0
    assert fingerprint_pipeline(engine.pipeline) == before


def test_modal_cancelling_the_input_task_stops_the_engine_before_the_cancel_goes_on(
    worker: Any, lora_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For an async input Modal calls `task.cancel()` on it (modal/_container_entrypoint.py): the handler must
    stop the engine, and only end once the weights are restored."""
    engine = worker.lifecycle.engine
    before = fingerprint_pipeline(engine.pipeline)
    app = sync_app(worker)
    with watch_steps(engine, monkeypatch) as watch:

        async def scenario() -> None:
            call = AsgiCall({**LONG, "lora_url": lora_url})
            running = asyncio.create_task(call.run(app))
            assert await asyncio.to_thread(watch.started("long").wait, WAIT)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(running, WAIT)
            # The cancel went on only after the engine had stopped and restored the weights.
            assert fingerprint_pipeline(engine.pipeline) == before
            assert call.status is None  # Modal answers a canceled input itself

        asyncio.run(scenario())
        assert watch.steps["long"] <= 3, f"the engine ran {watch.steps['long']} steps for a canceled input"
        assert next_request_starts_at_once(app, watch, asyncio.run) < 5.0
    assert fingerprint_pipeline(engine.pipeline) == before
