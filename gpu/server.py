"""Local HTTP app serving the worker contract: POST /generate, POST /jobs, GET and DELETE /jobs/{id}, GET /healthz."""

import argparse
import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from pydantic import BaseModel, Field

from contracts.worker import JobStatus, JobSubmitted, WorkerError, WorkerRequest
from gpu.budget import RequestBudget
from gpu.errors import WorkerFailure, request_canceled, validation_error
from gpu.handler import run_request, status_and_body
from gpu.jobs import CancelState, JobQueue, Outcome, QueueFullError
from gpu.serving import ServingEngine
from gpu.settings import WorkerSettings
from gpu.telemetry import TRACER_NAME, configure_tracing, record_request

log = logging.getLogger("gpu.server")


class LocalWorkerSettings(WorkerSettings):
    """The local server's defaults: loopback http allowed, tiny model built on first use."""

    mode: Literal["local", "production"] = Field(default="local", alias="WORKER_MODE")
    build_tiny_model: bool = Field(default=True, alias="WORKER_BUILD_TINY_MODEL")
    # "echo": the platform benchmark's engine (gpu/echo_engine.py), a PNG at once and no model; never for serving.
    engine: Literal["sdxl", "echo"] = Field(default="sdxl", alias="WORKER_ENGINE")


class JobCancel(BaseModel):
    """Answer to DELETE /jobs/{call_id} (local extension): what the cancel found.

    `canceled`: the job had not started and never will; `canceling`: it is running and stops at its next
    denoising step (GET then answers the cancel error); `completed`/`failed`: it was over, its outcome stands."""

    call_id: str
    status: CancelState


def outcome_response(outcome: Outcome) -> JSONResponse:
    status, body = status_and_body(outcome)
    return JSONResponse(body, status_code=status)


class WorkerState:
    """The engine once loaded, or why it could not be; the job queue over it."""

    def __init__(self, max_pending_jobs: int = 64) -> None:
        self.engine: ServingEngine | None = None
        self.load_error: WorkerFailure | None = None
        self.jobs = JobQueue(self.run, max_pending=max_pending_jobs)

    def run(self, request: WorkerRequest, budget: RequestBudget | None = None) -> Outcome:
        return run_request(self.engine, request, self.load_error, budget)


async def cancel_on_disconnect(http_request: Request, budget: RequestBudget) -> None:
    """Cancel `budget` when the HTTP client goes away. The body has been read, so the next ASGI message is
    `http.disconnect`: the server sends it when the connection closes (or once the response is sent)."""
    while True:
        message = await http_request.receive()
        if message["type"] == "http.disconnect":
            budget.cancel("client disconnected")
            return


async def run_until_disconnect(state: WorkerState, request: WorkerRequest, http_request: Request) -> Outcome:
    """Run a sync request in a thread; a client that disconnects (or a cancelled handler) stops it at the
    next denoising step, so the engine is free for the next request instead of finishing an unwanted image."""
    budget = RequestBudget(request.timeout_seconds)
    work = asyncio.ensure_future(asyncio.to_thread(state.run, request, budget))
    watcher = asyncio.create_task(cancel_on_disconnect(http_request, budget))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        # The server cancelled this handler: the thread cannot be killed, so tell the engine to stop.
        budget.cancel("request handler cancelled")
        raise
    finally:
        watcher.cancel()


def record_job_when_done(
    future: "Future[Outcome]",
    tracer: trace.Tracer,
    request: WorkerRequest,
    submitted: otel_context.Context,
    arrived_ns: int,
) -> None:
    """Record a job's spans, under the context of its submit, when it ends (on the thread that ends it)."""

    def record(done: "Future[Outcome]") -> None:
        outcome = (
            request_canceled("job canceled", started=False).to_error(request.request_id)
            if done.cancelled()
            else done.result()
        )
        record_request(
            tracer,
            outcome,
            arrived_ns=arrived_ns,
            ended_ns=time.time_ns(),
            request_id=request.request_id,
            context=submitted,
        )

    future.add_done_callback(record)


def create_app(
    settings: WorkerSettings,
    load_engine: Callable[[], ServingEngine],
    tracer_provider: trace.TracerProvider | None = None,
) -> FastAPI:
    """Build the app; the engine is loaded in a thread at start-up, not at import.

    Spans go to `tracer_provider` (the global one if None, which `main` configures): an incoming W3C
    `traceparent` continues the caller's trace; each request's worker spans are children of its server span."""
    state = WorkerState(settings.max_pending_jobs)
    tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            state.engine = await asyncio.to_thread(load_engine)
            log.info("worker ready: base model %s on %s", state.engine.base_model, state.engine.device)
        except WorkerFailure as failure:
            state.load_error = failure
            log.error("model load failed: %s %s", failure.message, failure.details)
        yield
        state.jobs.shutdown()

    app = FastAPI(title="VixenBliss GPU worker (local)", lifespan=lifespan)
    # No span per health probe, nor per ASGI receive/send (the disconnect watcher reads one per request).
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, excluded_urls="/healthz", exclude_spans=["receive", "send"]
    )
    api_key = settings.api_key.get_secret_value() if settings.api_key else None

    def require_key(authorization: Annotated[str | None, Header()] = None) -> None:
        if api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    Authorized = Annotated[None, Depends(require_key)]

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(exc.errors()).model_dump(mode="json"), status_code=422)

    @app.post("/generate", responses={422: {"model": WorkerError}, 424: {"model": WorkerError}})
    async def generate(request: WorkerRequest, http_request: Request, _: Authorized) -> JSONResponse:
        arrived_ns = time.time_ns()
        outcome = await run_until_disconnect(state, request, http_request)
        # Under the server span, which is current here.
        record_request(tracer, outcome, arrived_ns=arrived_ns, ended_ns=time.time_ns(), request_id=request.request_id)
        return outcome_response(outcome)

    @app.post("/jobs", status_code=202)
    async def submit(request: WorkerRequest, _: Authorized) -> JobSubmitted:
        arrived_ns = time.time_ns()
        try:
            call_id = state.jobs.submit(request)
        except QueueFullError as full:
            # Not a contract error: the request is fine, the queue is not (the gateway retries a 429 later).
            raise HTTPException(status_code=429, detail=str(full), headers={"Retry-After": "5"}) from None
        future = state.jobs.future(call_id)
        if future is not None:
            # The job ends on another thread, after this server span: its spans go under it explicitly.
            record_job_when_done(future, tracer, request, otel_context.get_current(), arrived_ns)
        return JobSubmitted(call_id=call_id)

    @app.get("/jobs/{call_id}")
    async def poll(call_id: str, _: Authorized, wait: Annotated[float, Query(ge=0, le=60)] = 0.0) -> JSONResponse:
        """202 while pending or running, else the outcome. `wait` (extension): hold the answer up to that many
        seconds for the job to end, as Modal's FunctionCall.get(timeout=...) does."""
        future = state.jobs.future(call_id)
        if future is not None and wait > 0 and not future.done():
            await asyncio.wait({asyncio.wrap_future(future)}, timeout=wait)
        polled = state.jobs.poll(call_id)
        if polled is None:
            raise HTTPException(status_code=404, detail="unknown or expired call_id")
        status, outcome = polled
        if outcome is None:
            return JSONResponse(JobStatus(call_id=call_id, status=status).model_dump(), status_code=202)
        return outcome_response(outcome)

    @app.delete("/jobs/{call_id}", responses={200: {"model": JobCancel}, 202: {"model": JobCancel}})
    async def cancel(call_id: str, _: Authorized) -> JSONResponse:
        found = state.jobs.cancel(call_id)
        if found is None:
            raise HTTPException(status_code=404, detail="unknown or expired call_id")
        body = JobCancel(call_id=call_id, status=found).model_dump()
        return JSONResponse(body, status_code=202 if found == "canceling" else 200)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        engine = state.engine
        if engine is None:
            reason = state.load_error.message if state.load_error else "loading"
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        if engine.poisoned:
            return JSONResponse({"status": "retired", "reason": engine.poisoned}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "base_model": engine.base_model,
                "device": str(engine.device),
                "requests_served": engine.requests_served,
            }
        )

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpu.server", description="Serve the worker contract locally.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--model-dir", type=Path, default=None, help="overrides MODEL_DIR")
    args = parser.parse_args(argv)

    import uvicorn
    from diffusers.utils import logging as diffusers_logging

    from gpu.bootstrap import build_engine
    from gpu.log_setup import setup_worker_logging
    from gpu.warmup import warmed

    # The services' redacting handler, with WORKER_API_KEY among its secrets; httpx kept above INFO (URLs).
    setup_worker_logging()
    # diffusers warns on every LoRA without text-encoder keys; the engine checks attachment itself.
    diffusers_logging.set_verbosity_error()
    configure_tracing()  # the global tracer provider, exporter from OTEL_* (none when unset)
    overrides: dict[str, object] = {"MODEL_DIR": args.model_dir} if args.model_dir else {}
    settings = LocalWorkerSettings(**overrides)  # type: ignore[arg-type]
    if settings.engine == "echo":
        from gpu.echo_engine import EchoEngine

        log.warning("WORKER_ENGINE=echo: answering every request with a flat PNG (platform benchmark only)")
        app = create_app(settings, EchoEngine)
    else:
        app = create_app(settings, lambda: warmed(build_engine(settings), settings))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
