"""The Modal web endpoints as plain FastAPI apps; Modal's pieces (spawn, call lookup, run) come in as callables.

`gpu/modal/app.py` serves these apps with `@modal.asgi_app` and hands them the real `spawn`,
`modal.FunctionCall.from_id` and the class's runtime; tests hand them stand-ins. Every answer is the worker
contract's (as `gpu.serve.server` gives it locally): a bad body is 422 `INVALID_REQUEST` before any GPU container
starts, a Modal failure is a JSON error body with its status, never a plain-text 500. No torch here: the
submit, result and cancel endpoints run on a small CPU image. Nor OpenTelemetry: the caller's W3C trace context
(`traceparent`, `tracestate`) is passed on as it came, and the GPU function continues that trace.
"""

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from modal.exception import (
    ConnectionError as ModalConnectionError,
)
from modal.exception import (
    FunctionTimeoutError,
    InternalError,
    InternalFailure,
    InvalidError,
    NotFoundError,
    OutputExpiredError,
    RemoteError,
    ResourceExhaustedError,
    ServiceError,
)

from contracts.errors import WORKER_ERROR_HTTP_STATUS, WORKER_ERROR_RETRYABLE, GatewayErrorCode, WorkerErrorCode
from contracts.worker import JobStatus, JobSubmitted, WorkerError, WorkerRequest
from gpu.engine.errors import validation_error

log = logging.getLogger("gpu.modal.endpoints")

# What Modal's FunctionCall ids look like (`fc-` and a ULID-like tail). Anything else is answered 404 without
# asking Modal: `FunctionCall.from_id` would accept it and `get` would raise ExecutionError on hydration.
CALL_ID_PATTERN = re.compile(r"fc-[0-9A-Za-z]{1,64}")

# The longest a poll holds its answer for the call to end (`?wait=`, longer asks are cut to it): well inside the
# result function's 60 s timeout (gpu/modal/app.py), so Modal never stops a poll that is only waiting.
RESULT_MAX_WAIT_SECONDS = 45.0

# Modal's control plane could not be asked (the call itself may be fine): ask again later.
MODAL_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    InternalError,
    ServiceError,
    ResourceExhaustedError,
    ModalConnectionError,
)
# The call ended without an answer for reasons that say nothing about the request: submit it again.
# RemoteError is also what `get` raises for an input that was canceled (a TERMINATED result without data).
MODAL_CALL_FAILURES: tuple[type[Exception], ...] = (InternalFailure, RemoteError)
# No such call (any more): 404, as the local server answers an unknown or expired job.
MODAL_NO_SUCH_CALL: tuple[type[Exception], ...] = (NotFoundError, InvalidError, OutputExpiredError)


class CallHandle(Protocol):
    """What the endpoints use of `modal.FunctionCall`."""

    def get(self, timeout: float | None = None) -> Any: ...

    def cancel(self, terminate_containers: bool = False) -> None: ...


# The caller's W3C trace context headers (`traceparent`, `tracestate`) as they came; empty when none came.
TraceHeaders = dict[str, str]
TRACE_HEADER_NAMES = ("traceparent", "tracestate")

# Queue one generation (the validated request as JSON, the trace headers) and return its call id:
# `Function.spawn(...).object_id`.
Spawn = Callable[[dict[str, Any], TraceHeaders], str]
# A handle for a call id: `modal.FunctionCall.from_id` (lazy: errors surface in `get`/`cancel`).
Lookup = Callable[[str], CallHandle]
# An ASGI `receive` (after the body: `http.disconnect` once the caller has gone).
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
# Serve one generation in this container while the caller waits, in the caller's trace: the contract's HTTP status
# and body. Its caller's disconnect, or this task's cancellation, stops the engine (gpu.serve.lifecycle `answer`).
ServeSync = Callable[[WorkerRequest, Receive, TraceHeaders], Awaitable[tuple[int, dict[str, Any]]]]


def trace_headers(request: Request) -> TraceHeaders:
    """The W3C trace context headers the caller sent, to pass to the GPU function (checked there, not here)."""
    return {name: request.headers[name] for name in TRACE_HEADER_NAMES if name in request.headers}


def worker_error_response(code: WorkerErrorCode, message: str, **details: object) -> JSONResponse:
    """A contract error body with the status the contract gives its code."""
    body = WorkerError(error=message, error_code=code, details=details, retryable=WORKER_ERROR_RETRYABLE[code])
    return JSONResponse(body.model_dump(mode="json"), status_code=WORKER_ERROR_HTTP_STATUS[code])


def unavailable_response(message: str, error: BaseException, status_code: int = 503) -> JSONResponse:
    """Modal could not give an answer: the error shape with the gateway's WORKER_UNAVAILABLE, retryable.

    Not one of the worker's codes, so the gateway reads it as a 5xx without a contract body: it polls again,
    then retries the generation. Only the exception's type goes out (its text may name internals).
    """
    body = {
        "error": message,
        "error_code": GatewayErrorCode.WORKER_UNAVAILABLE.value,
        "details": {"modal_error": type(error).__name__},
        "retryable": True,
    }
    return JSONResponse(body, status_code=status_code)


def not_found_response() -> JSONResponse:
    # The local server's answer for an unknown or expired job (gpu.serve.server), word for word.
    return JSONResponse({"detail": "unknown or expired call_id"}, status_code=404)


def contract_app(title: str) -> FastAPI:
    """A FastAPI app whose validation failures (malformed JSON included) answer the contract's 422 body."""
    app = FastAPI(title=title, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(exc.errors()).model_dump(mode="json"), status_code=422)

    return app


def create_generate_app(serve: ServeSync) -> FastAPI:
    """Sync mode (label sdxl-lora-generate), on the GPU class: validate, run here, answer with the status. For an
    ASGI input Modal cancels by cancelling this handler's task, and a caller who leaves is an `http.disconnect`:
    `serve` watches both and stops the engine at its next step, so no GPU time goes to an image nobody reads."""
    app = contract_app("VixenBliss GPU worker on Modal: generate")

    async def generate(request: WorkerRequest, http_request: Request) -> JSONResponse:
        status, body = await serve(request, http_request.receive, trace_headers(http_request))
        return JSONResponse(body, status_code=status)

    for path in ("/", "/generate"):
        app.add_api_route(path, generate, methods=["POST"])
    return app


def create_submit_app(spawn: Spawn) -> FastAPI:
    """Async mode, submit (label sdxl-lora-submit): validate here, then queue; 202 `{call_id}`."""
    app = contract_app("VixenBliss GPU worker on Modal: submit")

    async def submit(request: WorkerRequest, http_request: Request) -> JSONResponse:
        # Only a request that passed validation reaches a GPU container.
        payload = request.model_dump(mode="json", exclude_none=True)
        try:
            call_id = await asyncio.to_thread(spawn, payload, trace_headers(http_request))
        except Exception as error:
            log.warning("spawn failed: %s", type(error).__name__)
            return unavailable_response("Modal did not accept the job", error)
        return JSONResponse(JobSubmitted(call_id=call_id).model_dump(), status_code=202)

    for path in ("/", "/jobs"):
        app.add_api_route(path, submit, methods=["POST"], status_code=202)
    return app


def _finished_response(call_id: str, output: Any) -> JSONResponse:
    """The class's `generate` output: the contract body with its status in `http_status`."""
    if not isinstance(output, dict) or not isinstance(output.get("http_status"), int):
        error = TypeError(type(output).__name__)
        log.error("call %s returned no contract body", call_id)
        return unavailable_response("the worker call returned no contract body", error, status_code=502)
    body = dict(output)
    status = body.pop("http_status")
    return JSONResponse(body, status_code=status)


def create_result_app(lookup: Lookup) -> FastAPI:
    """Async mode, poll (label sdxl-lora-result): `GET /?call_id=…` or `GET /{call_id}`, as the local server.

    `wait` (seconds, as the local `GET /jobs/{id}?wait=`): hold the answer until the call ends or that long
    (`FunctionCall.get(timeout=...)`, at most RESULT_MAX_WAIT_SECONDS), so a result reaches the gateway when it is
    ready, not at its next poll. Negative or not a number: 422."""
    app = contract_app("VixenBliss GPU worker on Modal: result")

    async def poll(call_id: str, wait: Annotated[float, Query(ge=0, allow_inf_nan=False)] = 0.0) -> JSONResponse:
        if not CALL_ID_PATTERN.fullmatch(call_id):
            return not_found_response()
        timeout = min(wait, RESULT_MAX_WAIT_SECONDS)
        try:
            # Modal's async `get` is not cancellation-safe (poll_function); the blocking one in a thread is.
            output = await asyncio.to_thread(lambda: lookup(call_id).get(timeout=timeout))
        except FunctionTimeoutError:
            # Modal stopped the input at the class timeout: the contract's TIMEOUT, not a crash.
            return worker_error_response(
                WorkerErrorCode.TIMEOUT, "the worker call ran past Modal's function timeout", source="modal"
            )
        except OutputExpiredError:
            return not_found_response()
        except TimeoutError:
            # The built-in TimeoutError (Modal's own TimeoutError is not one): no output yet. Modal does not
            # say whether the input is queued or running; "pending" covers both.
            return JSONResponse(JobStatus(call_id=call_id, status="pending").model_dump(), status_code=202)
        except (NotFoundError, InvalidError):
            return not_found_response()
        except MODAL_TRANSPORT_ERRORS + MODAL_CALL_FAILURES as error:
            log.warning("call %s failed in Modal: %s", call_id, type(error).__name__)
            return unavailable_response("the worker call failed inside Modal; submit it again", error)
        except Exception as error:
            # ExecutionError (an undeserializable remote exception) or an exception raised in the container:
            # the handler never raises, so this is a crashed container, not the request's fault.
            log.error("call %s ended with %s", call_id, type(error).__name__)
            return unavailable_response("the worker call ended without a contract answer", error)
        return _finished_response(call_id, output)

    # One handler, two routes: FastAPI reads `call_id` from the path where the path names it, else the query.
    for path in ("/", "/{call_id}"):
        app.add_api_route(path, poll, methods=["GET"])
    return app


def create_cancel_app(lookup: Lookup) -> FastAPI:
    """Async mode, cancel (label sdxl-lora-cancel): `DELETE /?call_id=…` or `DELETE /{call_id}`.

    Answers as the local `DELETE /jobs/{id}`: 202 `canceling` for a call without output yet (Modal does not
    say whether it is queued, then it never starts, or running), 200 `completed`/`failed` for one that is
    over (its outcome stands, nothing is canceled), 404 for an unknown or expired one.
    A running input is stopped with `FunctionCall.cancel(terminate_containers=False)`: Modal interrupts it with
    a signal (InputCancellation in the method's main thread); the engine runs on its own thread, so the
    interruption cancels the request's budget and waits for the engine to stop at its next step and restore the
    base weights (`gpu.serve.cancellable.run_cancellable`). The container is fit to serve the next input.
    """
    app = contract_app("VixenBliss GPU worker on Modal: cancel")

    def cancel_call(call_id: str) -> tuple[int, str]:
        call = lookup(call_id)
        try:
            output = call.get(timeout=0)
        except TimeoutError:  # the built-in one: no output yet
            call.cancel(terminate_containers=False)
            return 202, "canceling"
        except MODAL_TRANSPORT_ERRORS + MODAL_NO_SUCH_CALL:
            raise  # answered by the caller: 503, or 404
        except Exception:
            # FunctionTimeoutError, InternalFailure, a terminated input: over, without a success.
            return 200, "failed"
        finished = isinstance(output, dict) and output.get("http_status") == 200
        return 200, "completed" if finished else "failed"

    async def cancel(call_id: str) -> JSONResponse:
        if not CALL_ID_PATTERN.fullmatch(call_id):
            return not_found_response()
        try:
            status_code, state = await asyncio.to_thread(cancel_call, call_id)
        except MODAL_NO_SUCH_CALL:
            return not_found_response()
        except Exception as error:
            log.warning("cancel of %s failed: %s", call_id, type(error).__name__)
            return unavailable_response("Modal did not take the cancel; send it again", error)
        return JSONResponse({"call_id": call_id, "status": state}, status_code=status_code)

    for path in ("/", "/{call_id}"):
        app.add_api_route(path, cancel, methods=["DELETE"])
    return app
