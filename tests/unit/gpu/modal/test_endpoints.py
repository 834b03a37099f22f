"""The Modal web endpoints answer like the local server: driven offline through their real FastAPI apps.

Modal's queue is replaced by `FaultInjectingModal`, a stand-in for `Function.spawn` and `modal.FunctionCall`
that raises Modal's own exception classes on demand (timeouts, expired outputs, internal failures, unknown
ids): failures the real service cannot be made to produce offline.
"""

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import modal
import pytest
from fastapi.testclient import TestClient
from modal.exception import (
    ExecutionError,
    FunctionTimeoutError,
    InternalFailure,
    InvalidError,
    NotFoundError,
    OutputExpiredError,
    RemoteError,
    ServiceError,
)

from contracts.worker import WorkerError, WorkerRequest
from gpu.modal import app as modal_app
from gpu.modal.endpoints import (
    RESULT_MAX_WAIT_SECONDS,
    create_cancel_app,
    create_generate_app,
    create_result_app,
    create_submit_app,
)

PENDING = object()
VALID = {"prompt": "sks portrait", "width": 64, "height": 64, "steps": 2}
SUCCESS = {
    "image_base64": "iVBORw0KGgo=",
    "generation_time_seconds": 0.5,
    "model_info": {"base_model": "tiny", "lora_applied": False, "lora_scale": 1.0},
}


@dataclass
class FaultInjectingCall:
    """One call's handle, as `modal.FunctionCall.from_id` gives it: answers or raises what the test set."""

    modal_stand_in: "FaultInjectingModal"
    call_id: str

    def get(self, timeout: float | None = None) -> Any:
        # As Modal's: waits up to `timeout` for the call to end (an injected outcome), then raises TimeoutError.
        assert timeout is not None, "an endpoint must never wait without a bound"
        stand_in = self.modal_stand_in
        with stand_in.changed:
            stand_in.get_timeouts.append(timeout)
            if stand_in.outcomes.get(self.call_id) is PENDING and timeout > 0:
                stand_in.waiting.set()
                stand_in.changed.wait_for(lambda: stand_in.outcomes.get(self.call_id) is not PENDING, timeout)
            outcome = stand_in.outcomes.get(self.call_id, NotFoundError("function call not found"))
        if outcome is PENDING:
            raise TimeoutError()  # what modal raises while no output exists: the built-in TimeoutError
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def cancel(self, terminate_containers: bool = False) -> None:
        if self.modal_stand_in.cancel_fault is not None:
            raise self.modal_stand_in.cancel_fault
        if self.call_id not in self.modal_stand_in.outcomes:
            raise NotFoundError("function call not found")
        self.modal_stand_in.canceled.append((self.call_id, terminate_containers))


@dataclass
class FaultInjectingModal:
    """Stand-in for Modal's queue: `spawn` records the request, `lookup` hands out call handles."""

    spawned: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, Any] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
    canceled: list[tuple[str, bool]] = field(default_factory=list)
    spawn_fault: Exception | None = None
    cancel_fault: Exception | None = None
    # The `timeout` of every `get`; `waiting` is set once a `get` waits for a pending call; `changed` wakes it.
    get_timeouts: list[float] = field(default_factory=list)
    waiting: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def spawn(self, payload: dict[str, Any], trace_headers: dict[str, str]) -> str:
        if self.spawn_fault is not None:
            raise self.spawn_fault
        self.spawned.append(payload)
        call_id = f"fc-01TEST{next(self._ids):06d}"
        self.outcomes[call_id] = PENDING
        return call_id

    def lookup(self, call_id: str) -> FaultInjectingCall:
        self.lookups.append(call_id)
        return FaultInjectingCall(self, call_id)

    def inject(self, call_id: str, outcome: Any) -> None:
        """The call's next answer: an output dict, PENDING, or one of Modal's exceptions to raise."""
        with self.changed:
            self.outcomes[call_id] = outcome
            self.changed.notify_all()

    def inject_once_waited_on(self, call_id: str, outcome: Any) -> threading.Thread:
        """Inject `outcome` from another thread as soon as a `get` waits for the call (as a job ending meanwhile)."""

        def inject_when_waited_on() -> None:
            if self.waiting.wait(timeout=30):
                self.inject(call_id, outcome)

        thread = threading.Thread(target=inject_when_waited_on, daemon=True)
        thread.start()
        return thread


@pytest.fixture
def fake_modal() -> FaultInjectingModal:
    return FaultInjectingModal()


@pytest.fixture
def submit(fake_modal: FaultInjectingModal) -> TestClient:
    return TestClient(create_submit_app(fake_modal.spawn))


@pytest.fixture
def result(fake_modal: FaultInjectingModal) -> TestClient:
    return TestClient(create_result_app(fake_modal.lookup))


@pytest.fixture
def cancel(fake_modal: FaultInjectingModal) -> TestClient:
    return TestClient(create_cancel_app(fake_modal.lookup))


def assert_contract_error(body: dict[str, Any], code: str) -> WorkerError:
    error = WorkerError.model_validate(body)
    assert error.error_code == code and "detail" not in body
    return error


def assert_unavailable(response: Any, status: int = 503) -> dict[str, Any]:
    """Modal failed, not the request: JSON in the error shape, retryable, never a plain-text 500."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["error_code"] == "WORKER_UNAVAILABLE" and body["retryable"] is True
    return body


# --- submit -------------------------------------------------------------------------------------------


def test_submit_queues_the_validated_request_and_answers_202_with_the_call_id(
    submit: TestClient, fake_modal: FaultInjectingModal
) -> None:
    response = submit.post("/", json={**VALID, "unknown_field": 1})
    assert response.status_code == 202
    assert response.json() == {"call_id": "fc-01TEST000001"}
    # What reaches the GPU is the request as validated: defaults filled, unknown fields dropped.
    assert fake_modal.spawned == [WorkerRequest.model_validate(VALID).model_dump(mode="json", exclude_none=True)]


def test_submit_refuses_an_invalid_request_at_once_without_spawning(
    submit: TestClient, fake_modal: FaultInjectingModal
) -> None:
    response = submit.post("/", json={**VALID, "width": 63, "timeout_seconds": 3601})
    assert response.status_code == 422
    error = assert_contract_error(response.json(), "INVALID_REQUEST")
    assert {f["field"] for f in error.details["fields"]} == {"width", "timeout_seconds"}  # type: ignore[attr-defined]
    assert error.retryable is False
    assert fake_modal.spawned == []


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'"prompt"'])
def test_submit_answers_malformed_json_with_the_contract_body_not_fastapis_detail(
    submit: TestClient, fake_modal: FaultInjectingModal, content: bytes
) -> None:
    response = submit.post("/", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert_contract_error(response.json(), "INVALID_REQUEST")
    assert fake_modal.spawned == []


@pytest.mark.parametrize("fault", [InternalFailure("boom"), ServiceError("unavailable"), RuntimeError("x")])
def test_submit_answers_503_when_modal_does_not_take_the_job(
    submit: TestClient, fake_modal: FaultInjectingModal, fault: Exception
) -> None:
    fake_modal.spawn_fault = fault
    body = assert_unavailable(submit.post("/", json=VALID))
    assert body["details"] == {"modal_error": type(fault).__name__}


# --- result -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/?call_id={id}", "/{id}"])
def test_result_is_202_pending_then_the_body_with_its_status(
    submit: TestClient, result: TestClient, fake_modal: FaultInjectingModal, path: str
) -> None:
    call_id = submit.post("/", json=VALID).json()["call_id"]
    pending = result.get(path.format(id=call_id))
    assert (pending.status_code, pending.json()) == (202, {"call_id": call_id, "status": "pending"})

    fake_modal.inject(call_id, {**SUCCESS, "http_status": 200})
    done = result.get(path.format(id=call_id))
    assert (done.status_code, done.json()) == (200, SUCCESS)


def test_result_without_wait_answers_at_once(
    submit: TestClient, result: TestClient, fake_modal: FaultInjectingModal
) -> None:
    call_id = submit.post("/", json=VALID).json()["call_id"]
    assert result.get(f"/{call_id}").status_code == 202
    assert fake_modal.get_timeouts == [0]


@pytest.mark.parametrize("path", ["/?call_id={id}&wait=20", "/{id}?wait=20"])
def test_result_with_wait_holds_the_poll_until_the_call_ends(
    submit: TestClient, result: TestClient, fake_modal: FaultInjectingModal, path: str
) -> None:
    call_id = submit.post("/", json=VALID).json()["call_id"]
    ended = fake_modal.inject_once_waited_on(call_id, {**SUCCESS, "http_status": 200})

    done = result.get(path.format(id=call_id))

    assert (done.status_code, done.json()) == (200, SUCCESS)  # the result of the call that ended while waiting
    assert fake_modal.get_timeouts == [20.0]
    ended.join(timeout=30)


def test_result_wait_is_cut_to_its_cap(submit: TestClient, result: TestClient, fake_modal: FaultInjectingModal) -> None:
    call_id = submit.post("/", json=VALID).json()["call_id"]
    fake_modal.inject_once_waited_on(call_id, {**SUCCESS, "http_status": 200})

    assert result.get(f"/{call_id}", params={"wait": "3600"}).status_code == 200
    assert fake_modal.get_timeouts == [RESULT_MAX_WAIT_SECONDS]


@pytest.mark.parametrize("wait", ["-1", "soon", "nan", "inf"])
def test_result_refuses_a_bad_wait_without_asking_modal(
    result: TestClient, fake_modal: FaultInjectingModal, wait: str
) -> None:
    response = result.get("/fc-01ABC", params={"wait": wait})
    assert response.status_code == 422
    assert_contract_error(response.json(), "INVALID_REQUEST")
    assert fake_modal.lookups == []


def test_result_passes_a_worker_error_through_with_its_status(
    result: TestClient, fake_modal: FaultInjectingModal
) -> None:
    error = {"error": "not a LoRA", "error_code": "LORA_LOAD_FAILED", "details": {}, "retryable": False}
    fake_modal.inject("fc-01ABC", {**error, "http_status": 422})
    response = result.get("/fc-01ABC")
    assert (response.status_code, response.json()) == (422, error)


def test_result_maps_modals_function_timeout_to_the_contracts_timeout(
    result: TestClient, fake_modal: FaultInjectingModal
) -> None:
    fake_modal.inject("fc-01ABC", FunctionTimeoutError("Function timed out"))
    response = result.get("/?call_id=fc-01ABC")
    assert response.status_code == 504
    assert assert_contract_error(response.json(), "TIMEOUT").retryable is True


@pytest.mark.parametrize(
    "fault", [OutputExpiredError(), NotFoundError("function call not found"), InvalidError("bad id")]
)
def test_result_answers_404_for_an_unknown_or_expired_call(
    result: TestClient, fake_modal: FaultInjectingModal, fault: Exception
) -> None:
    fake_modal.inject("fc-01ABC", fault)
    response = result.get("/fc-01ABC")
    assert (response.status_code, response.json()) == (404, {"detail": "unknown or expired call_id"})


@pytest.mark.parametrize("call_id", ["nope", "fc-", "fc-01%2F..", "ta-01ABC", "fc-" + "A" * 65])
def test_result_answers_404_for_a_malformed_call_id_without_asking_modal(
    result: TestClient, fake_modal: FaultInjectingModal, call_id: str
) -> None:
    # A malformed id makes the real FunctionCall raise ExecutionError on hydration: never let it get there.
    response = result.get("/", params={"call_id": call_id})
    assert response.status_code == 404
    assert fake_modal.lookups == []


@pytest.mark.parametrize(
    "fault",
    [
        InternalFailure("retriable internal error"),
        RemoteError("Input was cancelled"),
        ExecutionError("Could not deserialize remote exception"),
        MemoryError(),
    ],
)
def test_result_answers_a_retryable_json_503_when_the_call_failed_inside_modal(
    result: TestClient, fake_modal: FaultInjectingModal, fault: Exception
) -> None:
    fake_modal.inject("fc-01ABC", fault)
    body = assert_unavailable(result.get("/fc-01ABC"))
    assert body["details"] == {"modal_error": type(fault).__name__}


def test_result_answers_502_when_the_call_returned_no_contract_body(
    result: TestClient, fake_modal: FaultInjectingModal
) -> None:
    fake_modal.inject("fc-01ABC", "not a dict")
    assert_unavailable(result.get("/fc-01ABC"), status=502)


def test_result_without_a_call_id_is_an_invalid_request(result: TestClient) -> None:
    response = result.get("/")
    assert response.status_code == 422
    assert_contract_error(response.json(), "INVALID_REQUEST")


# --- cancel -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/?call_id={id}", "/{id}"])
def test_cancel_of_an_unfinished_call_cancels_it_and_leaves_its_container_running(
    submit: TestClient, cancel: TestClient, fake_modal: FaultInjectingModal, path: str
) -> None:
    call_id = submit.post("/", json=VALID).json()["call_id"]
    response = cancel.delete(path.format(id=call_id))
    # The local DELETE /jobs/{id}'s answer for a job that stops later.
    assert (response.status_code, response.json()) == (202, {"call_id": call_id, "status": "canceling"})
    # Modal interrupts the input's main thread; the engine, on its own thread, stops at its next step and restores
    # the base weights before the interruption goes on (tests/integration/gpu/modal/test_cancel.py): the container
    # serves on.
    assert fake_modal.canceled == [(call_id, False)]


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        ({**SUCCESS, "http_status": 200}, "completed"),
        ({"error": "x", "error_code": "LORA_LOAD_FAILED", "details": {}, "http_status": 422}, "failed"),
        (FunctionTimeoutError("Function timed out"), "failed"),
        (RemoteError(""), "failed"),
    ],
)
def test_cancel_of_a_finished_call_leaves_its_outcome(
    cancel: TestClient, fake_modal: FaultInjectingModal, outcome: Any, state: str
) -> None:
    fake_modal.inject("fc-01ABC", outcome)
    response = cancel.delete("/fc-01ABC")
    assert (response.status_code, response.json()) == (200, {"call_id": "fc-01ABC", "status": state})
    assert fake_modal.canceled == []


def test_cancel_answers_404_for_an_unknown_expired_or_malformed_call_id(
    cancel: TestClient, fake_modal: FaultInjectingModal
) -> None:
    fake_modal.inject("fc-01EXPIRED", OutputExpiredError())
    assert cancel.delete("/fc-01UNKNOWN").status_code == 404
    assert cancel.delete("/fc-01EXPIRED").status_code == 404
    assert cancel.delete("/?call_id=not-a-call").status_code == 404
    assert fake_modal.lookups == ["fc-01UNKNOWN", "fc-01EXPIRED"] and fake_modal.canceled == []


@pytest.mark.parametrize("where", ["poll", "cancel"])
def test_cancel_answers_503_when_modal_cannot_be_asked(
    cancel: TestClient, fake_modal: FaultInjectingModal, where: str
) -> None:
    if where == "poll":
        fake_modal.inject("fc-01ABC", ServiceError("unavailable"))
    else:
        fake_modal.inject("fc-01ABC", PENDING)
        fake_modal.cancel_fault = ServiceError("unavailable")
    assert_unavailable(cancel.delete("/fc-01ABC"))
    assert fake_modal.canceled == []


# --- sync generate (on the GPU class) ----------------------------------------------------------------


def test_generate_validates_runs_and_answers_with_the_runs_status() -> None:
    runs: list[dict[str, Any]] = []

    async def serve(request: WorkerRequest, receive: Any, trace_headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        runs.append(request.model_dump(mode="json", exclude_none=True))
        return 424, {"error": "gone", "error_code": "LORA_DOWNLOAD_FAILED", "details": {}, "retryable": True}

    client = TestClient(create_generate_app(serve))
    for path in ("/", "/generate"):
        response = client.post(path, json=VALID)
        assert response.status_code == 424
        assert_contract_error(response.json(), "LORA_DOWNLOAD_FAILED")
    assert len(runs) == 2

    assert client.post("/", content=b"{oops", headers={"content-type": "application/json"}).status_code == 422
    invalid = client.post("/", json={"prompt": " "})
    assert invalid.status_code == 422 and assert_contract_error(invalid.json(), "INVALID_REQUEST")
    assert len(runs) == 2


# --- agreement with the local server and the Modal definition -----------------------------------------


def test_class_timeout_covers_the_longest_timeout_the_contract_allows() -> None:
    # The bound is read from the contract, so it follows the contract if that changes.
    assert modal_app.contract_max_timeout_seconds() == 3600
    WorkerRequest.model_validate({**VALID, "timeout_seconds": 3600})
    with pytest.raises(ValueError):
        WorkerRequest.model_validate({**VALID, "timeout_seconds": 3600.001})
    assert modal_app.contract_max_timeout_seconds() < modal_app.WORKER_TIMEOUT_SECONDS <= 24 * 3600
    assert modal_app.WORKER_STARTUP_TIMEOUT_SECONDS < modal_app.WORKER_TIMEOUT_SECONDS


def test_modal_app_wires_the_endpoints_to_modals_queue() -> None:
    for name in ("submit", "result", "cancel"):
        assert isinstance(getattr(modal_app, name), modal.Function)
    # FunctionCall.from_id is lazy: building a handle makes no network call.
    assert isinstance(modal_app.lookup_call("fc-01ABC"), modal.FunctionCall)


def test_the_web_endpoints_import_without_torch() -> None:
    # Modal's small web image has no torch: the endpoints and the error bodies they share must not need it.
    import subprocess
    import sys

    probe = "import sys, gpu.modal.endpoints; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "False"
