"""The Modal web endpoints pass the caller's W3C trace context on to the GPU function, as it came."""

from typing import Any, cast

from fastapi.testclient import TestClient

from contracts.worker import WorkerRequest
from gpu.modal.endpoints import create_generate_app, create_submit_app

VALID = {"prompt": "sks portrait", "width": 64, "height": 64, "steps": 2}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_submit_hands_the_trace_headers_to_spawn() -> None:
    spawned: list[dict[str, str]] = []

    def spawn(payload: dict[str, Any], trace_headers: dict[str, str]) -> str:
        spawned.append(trace_headers)
        return "fc-01TRACE"

    client = TestClient(create_submit_app(spawn))
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=1", "baggage": "x=y"}
    assert client.post("/", json=VALID, headers=headers).status_code == 202
    assert client.post("/", json=VALID).status_code == 202
    assert spawned == [{"traceparent": TRACEPARENT, "tracestate": "vendor=1"}, {}]


def test_generate_hands_the_trace_headers_to_the_run() -> None:
    handed: list[dict[str, str]] = []

    async def serve(request: WorkerRequest, receive: Any, trace_headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        handed.append(trace_headers)
        return 200, {"image_base64": ""}

    client = TestClient(create_generate_app(serve))
    assert client.post("/generate", json=VALID, headers={"traceparent": TRACEPARENT}).status_code == 200
    assert handed == [{"traceparent": TRACEPARENT}]


def test_the_gpu_function_takes_the_trace_headers_as_an_optional_argument() -> None:
    import inspect

    from gpu.modal import app as modal_app

    user_cls = cast(Any, modal_app.SdxlLoraWorker)._get_user_cls()
    parameters = inspect.signature(user_cls.__dict__["generate"]._get_raw_f()).parameters
    assert parameters["trace_headers"].default is None
