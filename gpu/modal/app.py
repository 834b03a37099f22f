"""The worker on Modal: SDXL + per-request LoRA on a GPU, memory snapshots, proxy-auth web endpoints.

Deploy: `modal deploy gpu/modal/app.py` (see deploy/modal/README.md for the Volume with the weights).
Defining the app makes no network call, so this module imports anywhere; the logic lives in plain
Python (gpu.engine.engine, gpu.serve.handler) and is tested on CPU with the tiny model; the web endpoints are plain
FastAPI apps (gpu.modal.endpoints) that this module hands Modal's spawn and FunctionCall lookup.
"""

import logging
import os
from pathlib import Path
from typing import Any

import modal
from annotated_types import Le

from contracts.worker import WorkerRequest
from gpu.modal import deploy_settings as modal_deploy_settings

log = logging.getLogger("gpu.modal.app")

# Read without failing the import; `modal deploy` refuses to run with a problem (an empty LORA_ALLOWED_HOSTS, a bad
# container count), naming it.
DEPLOY = modal_deploy_settings.read(os.environ)
modal_deploy_settings.refuse_a_broken_deploy(DEPLOY)
APP_NAME = DEPLOY.app_name
GPU = DEPLOY.gpu
# torch 2.13.0+cu126 from https://download.pytorch.org/whl/cu126: PyTorch builds 2.12-2.14 for CUDA 12.6, 13.0 and
# 13.2 only (no cu128 wheel since 2.12: `torch==2.13.0` from .../cu128 cannot install). PyPI's 2.13.0 wheel is the
# CUDA 13.0 build (cuda-toolkit==13.0.3), which needs a host driver ≥ 580; 12.6 runs on any driver ≥ 525 and
# covers A100, L40S, H100 and H200 (not B200: that needs cu130). Not reachable from the build machine: checked at
# deploy as deploy/modal/README.md § GPU and CUDA says.
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu126"
# Exported from uv.lock by `make lock`; read by `modal deploy` on the deploying machine, from this checkout.
LOCKED_REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements"
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
    # The CUDA build, by version: its index is not reachable from the machine that locks (docs/deploy.md § Locked
    # dependencies), so neither it nor the nvidia-* wheels it brings are hash-checked.
    .pip_install("torch==2.13.0", index_url=TORCH_CUDA_INDEX)
    # Everything else the `gpu` extra needs, at the lock's versions and hashes (torch already installed above).
    .pip_install_from_requirements(str(LOCKED_REQUIREMENTS / "modal-worker.txt"))
    .env(
        {
            "MODEL_DIR": f"{MODELS_PATH}/sdxl-base-1.0",
            "LORA_CACHE_DIR": LORA_CACHE_PATH,
            "WORKER_MODE": "production",
            # Named, never probed: the load runs before the snapshot, on a CPU, and CUDA must not be touched then;
            # after restore the engine moves to it, or every request answers MODEL_LOAD_FAILED.
            "WORKER_DEVICE": "cuda",
            "WORKER_DTYPE": "float16",
            # MODAL_WORKER_VAE_HALF: `on` for the fp16-fix VAE gpu/modal/weights.py puts there (modal_deploy_settings).
            "WORKER_VAE_HALF": DEPLOY.worker_vae_half,
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
    # logsafe: the logging and redaction the services use too, so the worker hides the same things.
    .add_local_python_source("contracts", "gpu", "logsafe")
)

# The submit/result/cancel endpoints validate, enqueue and read results: a small image (no torch), so they
# start in a moment. They need modal (the container has it) and the contract's models.
web_image = (
    modal.Image.debian_slim(python_version="3.11")
    # The `modal-web` dependency group at the lock's versions and hashes: FastAPI and pydantic (Modal's runtime needs
    # nothing more for an asgi_app; `fastapi[standard]` only adds a CLI and servers it does not use).
    .pip_install_from_requirements(str(LOCKED_REQUIREMENTS / "modal-web.txt"))
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
        """Before the memory snapshot, on a host without a GPU: load on the CPU, accelerator probes held off."""
        from gpu.serve.lifecycle import WorkerLifecycle
        from gpu.serve.log_setup import setup_worker_logging
        from gpu.serve.settings import WorkerSettings

        setup_worker_logging()  # the services' redaction, with WORKER_API_KEY among its secrets
        # In a container the Volume is reloaded before a second try; a local call (a test) has nothing to reload.
        reload = (lambda: None) if modal.is_local() else weights_volume.reload
        self.lifecycle = WorkerLifecycle(WorkerSettings(), reload_weights=reload)
        self.lifecycle.load_before_snapshot()

    @modal.enter(snap=False)
    def to_gpu(self) -> None:
        """After restore, before the first input: tracing, the move to the GPU and the warm-up on the engine thread."""
        if not modal.is_local():  # in a container; a test calling this locally leaves the global provider alone
            from gpu.serve.telemetry import configure_tracing

            configure_tracing()  # its exporter thread must not start before the snapshot
        # A compile cache this container wrote is committed for the next one (a local call has no Volume).
        commit = (lambda: None) if modal.is_local() else compile_cache_volume.commit
        self.lifecycle.start_serving(phase="after restore", reload_failed_load=True, commit=commit)

    @modal.method()
    def generate(self, payload: dict[str, Any], trace_headers: dict[str, str] | None = None) -> dict[str, Any]:
        """For `.remote` / `.spawn`: the contract's body; the status travels in `http_status`. `trace_headers`:
        the caller's `traceparent` (and `tracestate`), continued by this request's spans. Modal's cancel
        (InputCancellation in this thread) stops the engine at its next step before it goes on."""
        from gpu.serve.handler import status_and_body

        status, body = status_and_body(self.lifecycle.run(payload, trace_headers))
        return {**body, "http_status": status}

    @modal.asgi_app(requires_proxy_auth=True, label="sdxl-lora-generate")
    def generate_sync(self) -> Any:
        """Sync mode: the contract's body in, the success or error body out with its status. The caller's
        disconnect, or Modal's cancel of the input (a task cancel), stops the engine at its next step."""
        from gpu.modal.endpoints import create_generate_app

        return create_generate_app(self.lifecycle.answer)


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
    from gpu.modal.endpoints import create_submit_app

    return create_submit_app(spawn_generation)


@app.function(image=web_image, timeout=60)
# A poll is held up to RESULT_MAX_WAIT_SECONDS (the long poll): without input concurrency each held poll would take a
# container's only slot. Each holds one thread of the default executor (`FunctionCall.get` blocks), hence 16.
@modal.concurrent(max_inputs=16)
@modal.asgi_app(requires_proxy_auth=True, label="sdxl-lora-result")
def result() -> Any:
    """Async mode: `GET /?call_id=…` (or `/{call_id}`): 202 while pending, then the body with its status."""
    from gpu.modal.endpoints import create_result_app

    return create_result_app(lookup_call)


@app.function(image=web_image, timeout=60)
@modal.asgi_app(requires_proxy_auth=True, label="sdxl-lora-cancel")
def cancel() -> Any:
    """Async mode: `DELETE /?call_id=…` (or `/{call_id}`) cancels the call; its container serves on."""
    from gpu.modal.endpoints import create_cancel_app

    return create_cancel_app(lookup_call)
