"""Local HTTP app serving the worker contract: POST /generate, POST /jobs, GET and DELETE /jobs/{id}, GET /healthz."""

import argparse
import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import asdict
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
from gpu.engine.errors import request_canceled, validation_error
from gpu.serve.handler import status_and_body
from gpu.serve.job_queue import CancelState, JobQueue, Outcome, QueueFullError
from gpu.serve.lifecycle import WorkerLifecycle, build_sdxl_engine
from gpu.serve.serving import ServingEngine
from gpu.serve.settings import WorkerSettings
from gpu.serve.telemetry import TRACER_NAME, configure_tracing, record_request

log = logging.getLogger("gpu.serve.server")


class LocalWorkerSettings(WorkerSettings):
    """The local server's defaults: loopback http allowed, tiny model built on first use."""

    mode: Literal["local", "production"] = Field(default="local", alias="WORKER_MODE")
    build_tiny_model: bool = Field(default=True, alias="WORKER_BUILD_TINY_MODEL")
    # "echo": the platform benchmark's engine (gpu/engine/echo_engine.py), a PNG at once and no model; never for
    # serving.
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
    """Build the app; the engine is loaded, moved and warmed up at start-up (gpu/serve/lifecycle.py), not at import.

    Every request, sync or a job, runs on the lifecycle's one engine thread. Spans go to `tracer_provider` (the
    global one if None, which `main` configures): an incoming W3C `traceparent` continues the caller's trace; each
    request's worker spans are children of its server span."""
    tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
    worker = WorkerLifecycle(settings, build=lambda _settings, _device: load_engine(), tracer=tracer)
    jobs = JobQueue(worker.outcome, max_pending=settings.max_pending_jobs, executor=worker.thread)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(worker.load)
        await asyncio.to_thread(worker.start_serving)
        if worker.engine is not None:
            log.info("worker ready: base model %s on %s", worker.engine.base_model, worker.engine.device)
        yield
        jobs.shutdown()
        worker.shutdown()

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
        # A client that disconnects stops the request at its next step; its spans go under the server span.
        return outcome_response(await worker.serve(request, http_request.receive))

    @app.post("/jobs", status_code=202)
    async def submit(request: WorkerRequest, _: Authorized) -> JobSubmitted:
        arrived_ns = time.time_ns()
        try:
            call_id = jobs.submit(request)
        except QueueFullError as full:
            # Not a contract error: the request is fine, the queue is not (the gateway retries a 429 later).
            raise HTTPException(status_code=429, detail=str(full), headers={"Retry-After": "5"}) from None
        future = jobs.future(call_id)
        if future is not None:
            # The job ends on another thread, after this server span: its spans go under it explicitly.
            record_job_when_done(future, tracer, request, otel_context.get_current(), arrived_ns)
        return JobSubmitted(call_id=call_id)

    @app.get("/jobs/{call_id}")
    async def poll(call_id: str, _: Authorized, wait: Annotated[float, Query(ge=0, le=60)] = 0.0) -> JSONResponse:
        """202 while pending or running, else the outcome. `wait` (extension): hold the answer up to that many
        seconds for the job to end, as Modal's FunctionCall.get(timeout=...) does."""
        future = jobs.future(call_id)
        if future is not None and wait > 0 and not future.done():
            await asyncio.wait({asyncio.wrap_future(future)}, timeout=wait)
        polled = jobs.poll(call_id)
        if polled is None:
            raise HTTPException(status_code=404, detail="unknown or expired call_id")
        status, outcome = polled
        if outcome is None:
            return JSONResponse(JobStatus(call_id=call_id, status=status).model_dump(), status_code=202)
        return outcome_response(outcome)

    @app.delete("/jobs/{call_id}", responses={200: {"model": JobCancel}, 202: {"model": JobCancel}})
    async def cancel(call_id: str, _: Authorized) -> JSONResponse:
        found = jobs.cancel(call_id)
        if found is None:
            raise HTTPException(status_code=404, detail="unknown or expired call_id")
        body = JobCancel(call_id=call_id, status=found).model_dump()
        return JSONResponse(body, status_code=202 if found == "canceling" else 200)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        engine = worker.engine
        if engine is None:
            reason = worker.load_error.message if worker.load_error else "loading"
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        if engine.poisoned:
            return JSONResponse({"status": "retired", "reason": engine.poisoned}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "base_model": engine.base_model,
                "device": str(engine.device),
                "requests_served": engine.requests_served,
                # With a compiled UNet: the shapes warmed, and the UNet calls of unwarmed shapes that ran eager.
                "compiled_unet": compiled_unet_stats(engine),
            }
        )

    return app


def compiled_unet_stats(engine: ServingEngine) -> dict[str, object] | None:
    """The compile gate's counts (gpu/engine/compile_gate.py) for an engine with a compiled UNet; None otherwise."""
    from gpu.engine.compiled import compile_gate

    pipeline = getattr(engine, "pipeline", None)
    gate = compile_gate(pipeline) if pipeline is not None else None
    return asdict(gate.stats()) if gate is not None else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gpu.serve.server", description="Serve the worker contract locally."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--model-dir", type=Path, default=None, help="overrides MODEL_DIR")
    args = parser.parse_args(argv)

    import uvicorn

    from gpu.serve.log_setup import setup_worker_logging

    # The services' redacting handler, with WORKER_API_KEY among its secrets; httpx kept above INFO (URLs).
    setup_worker_logging()
    configure_tracing()  # the global tracer provider, exporter from OTEL_* (none when unset)
    overrides: dict[str, object] = {"MODEL_DIR": args.model_dir} if args.model_dir else {}
    settings = LocalWorkerSettings(**overrides)  # type: ignore[arg-type]
    if settings.engine == "echo":
        from gpu.engine.echo_engine import EchoEngine

        log.warning("WORKER_ENGINE=echo: answering every request with a flat PNG (platform benchmark only)")
        app = create_app(settings, EchoEngine)
    else:
        app = create_app(settings, lambda: build_sdxl_engine(settings, None))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
