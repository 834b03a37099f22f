"""The worker's life on every host (the local server, the Modal container): load, move to the serving device, warm
up, serve one request at a time on one thread, cancel, and leave the base weights as they were.

One engine thread serves everything, the warm-up included: CUDA-graph trees are kept per thread, so compiled code
warmed on one thread would be recorded again on another; and a cancel can always stop the engine between steps,
since signals and task cancellations land in the caller's thread, never in the engine's. Nothing here starts a
thread or touches CUDA before `start_serving` (Modal snapshots the process before it). No modal import: the Modal
app (gpu/modal/app.py) and the local server (gpu/serve/server.py) hand in their own pieces.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from opentelemetry import trace
from opentelemetry.context import Context

from contracts.worker import WorkerError, WorkerRequest, WorkerSuccess
from gpu.engine.budget import RequestBudget
from gpu.engine.errors import WorkerFailure
from gpu.serve.accelerator_probes import probes_held_off
from gpu.serve.cancellable import run_cancellable
from gpu.serve.handler import outcome_for_payload, run_request, status_and_body
from gpu.serve.serving import ServingEngine
from gpu.serve.settings import WorkerSettings
from gpu.serve.telemetry import TRACER_NAME, record_request

log = logging.getLogger("gpu.serve.lifecycle")

Outcome = WorkerSuccess | WorkerError
# Builds the engine on a device (None: the one settings name, resolved); raises WorkerFailure when it cannot.
EngineFactory = Callable[[WorkerSettings, "torch.device | str | None"], ServingEngine]
# An ASGI `receive`: after the request's body it yields `http.disconnect` once the client has gone.
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

DISCONNECTED_REASON = "client disconnected"
HANDLER_CANCELED_REASON = "request handler cancelled"


def build_sdxl_engine(settings: WorkerSettings, device: torch.device | str | None) -> ServingEngine:
    """The SDXL engine (imported here: diffusers comes in only when a load begins, under the probe guard)."""
    from diffusers.utils import logging as diffusers_logging

    from gpu.serve.bootstrap import build_engine

    # diffusers warns on every LoRA without text-encoder keys; the engine checks attachment itself.
    diffusers_logging.set_verbosity_error()
    return build_engine(settings, device)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


class WorkerLifecycle:
    """One engine (or why it could not load) and the one thread it serves on.

    `reload_weights` refreshes the weights' source (on Modal, the Volume's `reload`): a load that failed before the
    snapshot is frozen into it, so `start_serving(reload_failed_load=True)` reloads and tries once more. The SDXL
    engine's warm-up (gpu/serve/warmup.py) runs on the engine thread before the first request.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        build: EngineFactory = build_sdxl_engine,
        reload_weights: Callable[[], object] = lambda: None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.engine: ServingEngine | None = None
        self.load_error: WorkerFailure | None = None
        self._build = build
        self._reload_weights = reload_weights
        # Its one thread starts with the first task handed to it (after the snapshot, never before).
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdxl-engine")
        self.tracer = tracer or trace.get_tracer(TRACER_NAME)

    # -- loading -------------------------------------------------------------------------------------------------

    def load(self, device: torch.device | str | None = None) -> None:
        """Build the engine (on `device`, else where settings say); a failure is kept as every request's answer."""
        try:
            self.engine, self.load_error = self._build(self.settings, device), None
        except WorkerFailure as failure:
            self.engine, self.load_error = None, failure
            log.error("model load failed: %s %s", failure.message, failure.details)

    def load_before_snapshot(self) -> None:
        """On the CPU, with every accelerator probe held off (gpu/serve/accelerator_probes.py): what Modal's snap=True
        hook runs, on a host without a GPU, before the process is snapshotted."""
        with probes_held_off() as held:
            self.load("cpu")
        log.info(
            "loaded on the CPU before the snapshot; accelerator probes held off: %d (%s)", held.total, held.summary()
        )

    def _load_again(self) -> None:
        log.warning(
            "the model did not load before the snapshot (%s); reloading the weights and trying again",
            self.load_error.message if self.load_error else "no engine",
        )
        try:
            self._reload_weights()
        except Exception as error:  # the Volume's reload: the first failure stands
            log.error("reloading the weights failed: %s: %s", type(error).__name__, error)
            return
        self.load("cpu")

    # -- serving -------------------------------------------------------------------------------------------------

    def start_serving(
        self, *, phase: str = "at start", reload_failed_load: bool = False, commit: Callable[[], object] = lambda: None
    ) -> None:
        """Move the engine to the device settings name and warm it up on the engine thread (`commit`: save what
        the warm-up wrote, e.g. the compile cache Volume's commit). No GPU where one is named leaves every request
        answering MODEL_LOAD_FAILED, logged: never a silent CPU worker."""
        if self.engine is None and reload_failed_load:
            self._load_again()
        if self.engine is None:
            return
        self.thread.submit(self._move_and_warm_up, phase, commit).result()

    def _move_and_warm_up(self, phase: str, commit: Callable[[], object]) -> None:
        from gpu.engine.pipeline_loader import resolve_device

        engine = self.engine
        assert engine is not None
        try:
            device = resolve_device(self.settings.device)
        except WorkerFailure as failure:
            log.error(
                "no GPU %s (WORKER_DEVICE=%s): %s; every request answers MODEL_LOAD_FAILED",
                phase,
                self.settings.device,
                failure.message,
            )
            self.engine, self.load_error = None, failure
            return
        if engine.device != device:
            engine.to(device)
        self._compile_if_asked(engine, device)
        log.info(
            "%s: %d CUDA device(s) visible; serving on %s (%s)",
            phase,
            torch.cuda.device_count(),
            engine.device,
            _device_name(engine.device),
        )
        from gpu.engine.engine import SdxlLoraEngine
        from gpu.serve.warmup import warm_up

        if isinstance(engine, SdxlLoraEngine):  # the benchmark's echo engine has nothing to warm
            warm_up(engine, self.settings, commit)

    def _compile_if_asked(self, engine: ServingEngine, device: torch.device) -> None:
        pipeline = getattr(engine, "pipeline", None)
        if pipeline is None:
            return
        from gpu.engine.compiled import compile_unet, is_compiled, should_compile

        if should_compile(self.settings.compile, device) and not is_compiled(pipeline):
            compile_unet(pipeline)

    def outcome(self, request: WorkerRequest, budget: RequestBudget | None = None) -> Outcome:
        """The engine's answer on the calling thread (the job queue's tasks run on `thread` already)."""
        return run_request(self.engine, request, self.load_error, budget)

    def run(self, payload: Any, trace_headers: Mapping[str, str] | None = None) -> Outcome:
        """Validate and run one payload on the engine thread, blocking this one. A BaseException landing here
        (Modal's InputCancellation, raised by a signal in the main thread) cancels the budget, waits for the
        engine to stop at its next step and restore the weights, then goes on (gpu/serve/cancellable.py)."""
        from opentelemetry import propagate

        arrived_ns = time.time_ns()
        budget = RequestBudget()  # starts now, when the input reached this container
        outcome = run_cancellable(
            self.thread, lambda: outcome_for_payload(self.engine, payload, self.load_error, budget), budget
        )
        request_id = outcome.request_id or (payload.get("request_id") if isinstance(payload, dict) else None)
        self._record(outcome, arrived_ns, request_id, propagate.extract(dict(trace_headers or {})))
        return outcome

    async def serve(self, request: WorkerRequest, receive: Receive, *, context: Context | None = None) -> Outcome:
        """A sync HTTP request (the local server's and Modal's): run on the engine thread while the client waits.
        The client going away, or this task being cancelled (how Modal cancels an ASGI input), cancels the
        budget; a cancelled task still waits for the engine to stop and restore the weights before it ends, so
        the next request finds the engine free. Spans go under `context` (None: the current one)."""
        arrived_ns = time.time_ns()
        budget = RequestBudget(request.timeout_seconds)
        work: Future[Outcome] = self.thread.submit(self.outcome, request, budget)
        watcher = asyncio.create_task(_cancel_on_disconnect(receive, budget))
        try:
            outcome = await asyncio.shield(asyncio.wrap_future(work))
        except asyncio.CancelledError:
            budget.cancel(HANDLER_CANCELED_REASON)
            if not work.cancel():  # queued behind another request: dropped; running: stops at its next step
                await _wait_out(work)
            raise
        finally:
            watcher.cancel()
        self._record(outcome, arrived_ns, request.request_id, context)
        return outcome

    async def answer(
        self, request: WorkerRequest, receive: Receive, trace_headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any]]:
        """`serve` for Modal's sync endpoint: the caller's trace continued; the contract's status and body."""
        from opentelemetry import propagate

        outcome = await self.serve(request, receive, context=propagate.extract(dict(trace_headers)))
        return status_and_body(outcome)

    def _record(self, outcome: Outcome, arrived_ns: int, request_id: str | None, context: Context | None) -> None:
        record_request(
            self.tracer, outcome, arrived_ns=arrived_ns, ended_ns=time.time_ns(), request_id=request_id, context=context
        )

    def shutdown(self) -> None:
        """No new work; what runs stops at its next step when its budget is canceled by its owner."""
        self.thread.shutdown(wait=False, cancel_futures=True)


async def _cancel_on_disconnect(receive: Receive, budget: RequestBudget) -> None:
    """Cancel `budget` when the client goes away: the body has been read, so the next ASGI message is
    `http.disconnect` (sent when the connection closes, or once the response is sent)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            budget.cancel(DISCONNECTED_REASON)
            return


async def _wait_out(work: Future[Outcome]) -> None:
    """Wait for the engine to finish `work`, through further cancellations (none may skip the wait)."""
    waiting = asyncio.wrap_future(work)
    while not waiting.done():
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            continue
        except Exception:
            return
