"""The worker on Modal: SDXL + per-request LoRA on a GPU, memory snapshots, proxy-auth web endpoints.

Deploy: `modal deploy gpu/modal_app.py` (see deploy/modal/README.md for the Volume with the weights).
Defining the app makes no network call, so this module imports anywhere; the logic lives in plain
Python (gpu.engine, gpu.handler) and is tested on CPU with the tiny model; the web endpoints are plain
FastAPI apps (gpu.modal_endpoints) that this module hands Modal's spawn and FunctionCall lookup.
"""

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import modal
from annotated_types import Le

from contracts.worker import WorkerRequest
from gpu import modal_deploy_settings

log = logging.getLogger("gpu.modal_app")

# Read without failing the import; `modal deploy` refuses to run with a problem (an empty LORA_ALLOWED_HOSTS, a bad
# container count), naming it.
DEPLOY = modal_deploy_settings.read(os.environ)
modal_deploy_settings.refuse_a_broken_deploy(DEPLOY)
APP_NAME = DEPLOY.app_name
GPU = DEPLOY.gpu
# torch's CUDA 12.8 build (the index pins it): PyPI's torch 2.13 wheel is built for CUDA 13, which needs a newer
# host driver than Modal's GPU hosts are documented to run (deploy/modal/README.md § GPU and CUDA).
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
# Memory of the GPU container, MiB (request, limit): the pipeline is loaded on the CPU in fp16 (~7 GB) and
# snapshotted from there, so the snapshot needs that much host memory and some room.
WORKER_MEMORY_MIB = (16_384, 32_768)
MODELS_PATH = "/models"
LORA_CACHE_PATH = "/lora-cache"
COMPILE_CACHE_PATH = "/compile-cache"

app = modal.App(APP_NAME)

# Standard OTEL_* variables copied from the deploying shell into the GPU image (none are secrets).
FORWARDED_OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
)

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install("torch==2.13.0", index_url=TORCH_CUDA_INDEX)
    .pip_install(
        "diffusers==0.42.1",
        "transformers==5.23.0",
        "peft==0.21.2",
        "safetensors==0.8.0",
        "accelerate==1.15.0",
        "pillow>=10",
        "numpy>=1.26",
        "httpx>=0.27,<1",
        "pydantic>=2.10,<3",
        "pydantic-settings>=2.6,<3",
        "fastapi[standard]>=0.115",
        # Tracing (gpu/telemetry.py): the worker's spans, exported over OTLP/HTTP when OTEL_* asks.
        "opentelemetry-api==1.45.2",
        "opentelemetry-sdk==1.45.2",
        "opentelemetry-exporter-otlp-proto-http==1.45.2",
    )
    .env(
        {
            "MODEL_DIR": f"{MODELS_PATH}/sdxl-base-1.0",
            "LORA_CACHE_DIR": LORA_CACHE_PATH,
            "WORKER_MODE": "production",
            # Named, never probed: the load runs before the snapshot, on a CPU, and CUDA must not be touched then;
            # after restore the engine moves to it, or every request answers MODEL_LOAD_FAILED.
            "WORKER_DEVICE": "cuda",
            "WORKER_DTYPE": "float16",
            # MODAL_WORKER_COMPILE (off unless asked: see modal_deploy_settings); compiled code kept on a Volume, and
            # the warm-up sizes generated once after restore, before the first input.
            "WORKER_COMPILE": DEPLOY.worker_compile,
            "WORKER_COMPILE_CACHE_DIR": COMPILE_CACHE_PATH,
            "WORKER_WARMUP_SIZES": DEPLOY.warmup_sizes,
            # The R2 endpoint host(s), taken from the deploying shell: e.g. <account>.r2.cloudflarestorage.com
            "LORA_ALLOWED_HOSTS": DEPLOY.lora_allowed_hosts,
            "HF_HUB_OFFLINE": "1",
            # The deploying shell's tracing settings, where set (OTLP headers with a token belong in a modal.Secret).
            **{name: value for name in FORWARDED_OTEL_VARIABLES if (value := os.environ.get(name))},
        }
    )
    # services.common.logging alone (standard library only): the worker's logs use the services' redaction.
    .add_local_python_source("contracts", "gpu", "services.common.logging")
)

# The submit/result/cancel endpoints validate, enqueue and read results: a small image (no torch), so they
# start in a moment. They need modal (the container has it) and the contract's models.
web_image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install("fastapi[standard]>=0.115", "pydantic>=2.10,<3")
    .add_local_python_source("contracts", "gpu")
)


def contract_max_timeout_seconds() -> float:
    """The largest `timeout_seconds` the worker contract accepts (its `le` bound)."""
    for constraint in WorkerRequest.model_fields["timeout_seconds"].metadata:
        if isinstance(constraint, Le):
            return float(constraint.le)  # type: ignore[arg-type]
    raise RuntimeError("contracts.worker.WorkerRequest.timeout_seconds has no upper bound")


# A request may ask for up to the contract's bound; the engine stops at the next denoising step after it and
# then decodes, encodes and restores the weights: the grace covers that tail. Modal's own limit is 24 h.
# Past this Modal stops the input and `result` answers the contract's TIMEOUT.
TIMEOUT_GRACE_SECONDS = 300
WORKER_TIMEOUT_SECONDS = int(contract_max_timeout_seconds()) + TIMEOUT_GRACE_SECONDS
# Loading SDXL from the Volume onto the CPU before the memory snapshot (without `startup_timeout`, Modal
# would allow the whole WORKER_TIMEOUT_SECONDS for it).
WORKER_STARTUP_TIMEOUT_SECONDS = 600

# Base weights (put there once, see deploy/modal/README.md) and the shared LoRA disk cache.
weights_volume = modal.Volume.from_name("vixenbliss-sdxl-weights", create_if_missing=True)
lora_cache_volume = modal.Volume.from_name("vixenbliss-lora-cache", create_if_missing=True)
compile_cache_volume = modal.Volume.from_name("vixenbliss-compile-cache", create_if_missing=True)


class WorkerRuntime:
    """The container's life, in plain Python: load on CPU, move to the GPU, serve one request at a time.

    `reload_weights` refreshes the weights Volume (in a container: `weights_volume.reload`): a load that failed
    before the snapshot is frozen into it, so after restore the Volume is reloaded and the load tried again.
    """

    def __init__(self, reload_weights: Callable[[], object] = lambda: None) -> None:
        from opentelemetry import trace

        from gpu.telemetry import TRACER_NAME

        self.engine: Any = None
        self.load_error: Any = None
        self.settings: Any = None
        self._reload_weights = reload_weights
        # The engine's own thread (`start_engine_thread`): Modal's cancel signal never lands in it.
        self.pool: ThreadPoolExecutor | None = None
        # The global provider's tracer (`start_tracing` configures it in the container); tests put their own here.
        self.tracer: Any = trace.get_tracer(TRACER_NAME)

    def load_on_cpu(self) -> None:
        from diffusers.utils import logging as diffusers_logging

        from gpu.bootstrap import build_engine
        from gpu.errors import WorkerFailure
        from gpu.log_setup import setup_worker_logging
        from gpu.settings import WorkerSettings

        diffusers_logging.set_verbosity_error()
        setup_worker_logging()  # the services' redaction, with WORKER_API_KEY among its secrets
        self.settings = WorkerSettings()
        try:
            # Loaded on the CPU: this runs before the memory snapshot, where no GPU is attached (and CUDA must not
            # be probed: build_engine does not when given the device).
            self.engine = build_engine(self.settings, device="cpu")
        except WorkerFailure as failure:
            self.load_error = failure

    def move_to_gpu(self) -> None:
        """After restore: a load that failed is tried again from the reloaded Volume; then the engine goes to the
        device settings name (WORKER_DEVICE: `cuda` in the image). No GPU where one is named is MODEL_LOAD_FAILED
        for every request, logged, never a silent CPU worker."""
        from gpu.compiled import compile_unet, should_compile
        from gpu.errors import WorkerFailure
        from gpu.pipeline_loader import resolve_device

        if self.engine is None:
            self._load_again()
        if self.engine is None:
            return
        try:
            device = resolve_device(self.settings.device)
        except WorkerFailure as failure:
            log.error(
                "no GPU after restore (WORKER_DEVICE=%s): %s; every request answers MODEL_LOAD_FAILED",
                self.settings.device,
                failure.message,
            )
            self.engine, self.load_error = None, failure
            return
        self.engine.to(device)
        if should_compile(self.settings.compile, device):
            compile_unet(self.engine.pipeline)  # after the move: the first request compiles, on the GPU

    def _load_again(self) -> None:
        from gpu.bootstrap import build_engine
        from gpu.errors import WorkerFailure

        log.warning(
            "the model did not load before the snapshot (%s); reloading the weights Volume and trying again",
            getattr(self.load_error, "message", self.load_error),
        )
        try:
            self._reload_weights()
            self.engine, self.load_error = build_engine(self.settings, device="cpu"), None
        except WorkerFailure as failure:
            self.load_error = failure
            log.error("the model did not load after restore either: %s", failure.message)
        except Exception as error:  # the Volume's reload: the first failure stands
            log.error("reloading the weights Volume failed: %s: %s", type(error).__name__, error)

    def warm_up(self, commit: Callable[[], object] = lambda: None) -> None:
        """After the move to the GPU, before the first input: WORKER_WARMUP_SIZES generated once (compiled code
        loaded from the Volume or compiled and saved there; a compile that fails falls back to eager)."""
        from gpu.warmup import warm_up

        if self.engine is not None:
            warm_up(self.engine, self.settings, commit)

    def start_tracing(self) -> None:
        """After the snapshot is restored: the exporter's thread must not be started before it."""
        from gpu.telemetry import configure_tracing

        configure_tracing()

    def start_engine_thread(self) -> None:
        """After the snapshot is restored (no thread is started before it): one thread, one request at a time."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdxl-engine")

    def generate(self, payload: Any, trace_headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """Run the request on the engine's thread. An `InputCancellation` (Modal's cancel: a BaseException raised
        by a signal handler in this, the main, thread) cancels the request's budget, waits for the engine to stop
        at its next step and restore the base weights, and is raised again: the container stays fit to serve.
        The request's spans continue the caller's trace (`trace_headers`: its `traceparent`, `tracestate`)."""
        from opentelemetry import propagate

        from gpu.budget import RequestBudget
        from gpu.cancellable import run_cancellable
        from gpu.handler import outcome_for_payload, status_and_body
        from gpu.telemetry import record_request

        if self.pool is None:
            raise RuntimeError("the engine thread is not started: call start_engine_thread first")
        arrived_ns = time.time_ns()
        budget = RequestBudget()  # the input's budget: it starts now, when the input reached this container
        outcome = run_cancellable(
            self.pool, lambda: outcome_for_payload(self.engine, payload, self.load_error, budget), budget
        )
        request_id = outcome.request_id or (payload.get("request_id") if isinstance(payload, dict) else None)
        record_request(
            self.tracer,
            outcome,
            arrived_ns=arrived_ns,
            ended_ns=time.time_ns(),
            request_id=request_id,
            context=propagate.extract(trace_headers or {}),
        )
        return status_and_body(outcome)


@app.cls(
    gpu=GPU,
    image=image,
    volumes={MODELS_PATH: weights_volume, LORA_CACHE_PATH: lora_cache_volume, COMPILE_CACHE_PATH: compile_cache_volume},
    enable_memory_snapshot=True,
    scaledown_window=300,
    min_containers=DEPLOY.min_containers,
    max_containers=DEPLOY.max_containers,
    memory=WORKER_MEMORY_MIB,
    timeout=WORKER_TIMEOUT_SECONDS,
    startup_timeout=WORKER_STARTUP_TIMEOUT_SECONDS,
)
class SdxlLoraWorker:
    """One input per container at a time (no @modal.concurrent): one pipeline, one LoRA slot."""

    @modal.enter(snap=True)
    def load(self) -> None:
        # In a container the Volume is reloaded before a second try; a local call (a test) has nothing to reload.
        self.runtime = WorkerRuntime(reload_weights=(lambda: None) if modal.is_local() else weights_volume.reload)
        self.runtime.load_on_cpu()

    @modal.enter(snap=False)
    def to_gpu(self) -> None:
        if not modal.is_local():  # in a container; a test calling this locally leaves the global provider alone
            self.runtime.start_tracing()
        self.runtime.start_engine_thread()
        self.runtime.move_to_gpu()
        # A compile cache this container wrote is committed for the next one (a local call has no Volume).
        self.runtime.warm_up(commit=(lambda: None) if modal.is_local() else compile_cache_volume.commit)

    @modal.method()
    def generate(self, payload: dict[str, Any], trace_headers: dict[str, str] | None = None) -> dict[str, Any]:
        """For `.remote` / `.spawn`: the contract's body; the status travels in `http_status`. `trace_headers`:
        the caller's `traceparent` (and `tracestate`), continued by this request's spans."""
        status, body = self.runtime.generate(payload, trace_headers)
        return {**body, "http_status": status}

    @modal.asgi_app(requires_proxy_auth=True, label="sdxl-lora-generate")
    def generate_sync(self) -> Any:
        """Sync mode: the contract's body in, the success or error body out with its status."""
        from gpu.modal_endpoints import create_generate_app

        return create_generate_app(self.runtime.generate)


def spawn_generation(payload: dict[str, Any], trace_headers: dict[str, str]) -> str:
    """Queue one (validated) request on the GPU class, in the caller's trace; its FunctionCall id."""
    call: Any = SdxlLoraWorker().generate.spawn(payload, trace_headers or None)
    return str(call.object_id)


def lookup_call(call_id: str) -> Any:
    """The FunctionCall of an id (lazy: an unknown id raises in `get`/`cancel`)."""
    return modal.FunctionCall.from_id(call_id)


@app.function(image=web_image, timeout=60)
@modal.asgi_app(requires_proxy_auth=True, label="sdxl-lora-submit")
def submit() -> Any:
    """Async mode: `POST /` validates (422 INVALID_REQUEST at once), queues, answers 202 `{call_id}`."""
    from gpu.modal_endpoints import create_submit_app

    return create_submit_app(spawn_generation)


@app.function(image=web_image, timeout=60)
@modal.asgi_app(requires_proxy_auth=True, label="sdxl-lora-result")
def result() -> Any:
    """Async mode: `GET /?call_id=…` (or `/{call_id}`): 202 while pending, then the body with its status."""
    from gpu.modal_endpoints import create_result_app

    return create_result_app(lookup_call)


@app.function(image=web_image, timeout=60)
@modal.asgi_app(requires_proxy_auth=True, label="sdxl-lora-cancel")
def cancel() -> Any:
    """Async mode: `DELETE /?call_id=…` (or `/{call_id}`) cancels the call; its container serves on."""
    from gpu.modal_endpoints import create_cancel_app

    return create_cancel_app(lookup_call)
