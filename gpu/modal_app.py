"""The worker on Modal: SDXL + per-request LoRA on a GPU, memory snapshots, proxy-auth web endpoints.

Deploy: `modal deploy gpu/modal_app.py` (see deploy/modal/README.md for the Volume with the weights).
Defining the app makes no network call, so this module imports anywhere; the logic lives in plain
Python (gpu.engine, gpu.handler) and is tested on CPU with the tiny model.
"""

import os
from typing import Any

import modal

APP_NAME = os.environ.get("MODAL_APP_NAME", "vixenbliss-sdxl-lora")
GPU = os.environ.get("MODAL_GPU", "H100")
MODELS_PATH = "/models"
LORA_CACHE_PATH = "/lora-cache"

app = modal.App(APP_NAME)

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(
        "torch==2.13.0",
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
    )
    .env(
        {
            "MODEL_DIR": f"{MODELS_PATH}/sdxl-base-1.0",
            "LORA_CACHE_DIR": LORA_CACHE_PATH,
            "WORKER_MODE": "production",
            # Explicit: the load runs before the snapshot, on a CPU, where "auto" would pick fp32.
            "WORKER_DTYPE": "float16",
            # The R2 endpoint host(s), taken from the deploying shell: e.g. <account>.r2.cloudflarestorage.com
            "LORA_ALLOWED_HOSTS": os.environ.get("LORA_ALLOWED_HOSTS", ""),
            "HF_HUB_OFFLINE": "1",
        }
    )
    .add_local_python_source("contracts", "gpu")
)

# The submit/poll endpoints only enqueue and read results: a small image, so they start in a moment.
web_image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install("fastapi[standard]>=0.115")
    .add_local_python_source("gpu")
)

# Base weights (put there once, see deploy/modal/README.md) and the shared LoRA disk cache.
weights_volume = modal.Volume.from_name("vixenbliss-sdxl-weights", create_if_missing=True)
lora_cache_volume = modal.Volume.from_name("vixenbliss-lora-cache", create_if_missing=True)


class WorkerRuntime:
    """The container's life, in plain Python: load on CPU, move to the GPU, serve one request at a time."""

    def __init__(self) -> None:
        self.engine: Any = None
        self.load_error: Any = None

    def load_on_cpu(self) -> None:
        from diffusers.utils import logging as diffusers_logging

        from gpu.bootstrap import build_engine
        from gpu.errors import WorkerFailure
        from gpu.settings import WorkerSettings

        diffusers_logging.set_verbosity_error()
        try:
            # Loaded on the CPU: this runs before the memory snapshot, where no GPU is attached.
            self.engine = build_engine(WorkerSettings(), device="cpu")
        except WorkerFailure as failure:
            self.load_error = failure

    def move_to_gpu(self) -> None:
        import torch

        if self.engine is not None and torch.cuda.is_available():
            self.engine.to("cuda")

    def generate(self, payload: Any) -> tuple[int, dict[str, Any]]:
        from gpu.handler import handle_payload

        return handle_payload(self.engine, payload, self.load_error)


@app.cls(
    gpu=GPU,
    image=image,
    volumes={MODELS_PATH: weights_volume, LORA_CACHE_PATH: lora_cache_volume},
    enable_memory_snapshot=True,
    scaledown_window=300,
    min_containers=int(os.environ.get("MODAL_MIN_CONTAINERS", "0")),
    max_containers=int(os.environ.get("MODAL_MAX_CONTAINERS", "10")),
    timeout=600,
)
class SdxlLoraWorker:
    """One input per container at a time (no @modal.concurrent): one pipeline, one LoRA slot."""

    @modal.enter(snap=True)
    def load(self) -> None:
        self.runtime = WorkerRuntime()
        self.runtime.load_on_cpu()

    @modal.enter(snap=False)
    def to_gpu(self) -> None:
        self.runtime.move_to_gpu()

    @modal.method()
    def generate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """For `.remote` / `.spawn`: the contract's body; the status travels in `http_status`."""
        status, body = self.runtime.generate(payload)
        return {**body, "http_status": status}

    @modal.fastapi_endpoint(method="POST", requires_proxy_auth=True, label="sdxl-lora-generate")
    def generate_sync(self, payload: dict[str, Any]) -> Any:
        from fastapi.responses import JSONResponse

        status, body = self.runtime.generate(payload)
        return JSONResponse(body, status_code=status)


@app.function(image=web_image, timeout=60)
@modal.fastapi_endpoint(method="POST", requires_proxy_auth=True, label="sdxl-lora-submit")
def submit(payload: dict[str, Any]) -> Any:
    """Async mode: queue the job and answer with its call id at once."""
    from fastapi.responses import JSONResponse

    call = SdxlLoraWorker().generate.spawn(payload)
    return JSONResponse({"call_id": call.object_id}, status_code=202)


@app.function(image=web_image, timeout=60)
@modal.fastapi_endpoint(method="GET", requires_proxy_auth=True, label="sdxl-lora-result")
def result(call_id: str) -> Any:
    """Async mode: 202 while pending, then the contract's success or error body with its status."""
    from fastapi.responses import JSONResponse

    try:
        call = modal.FunctionCall.from_id(call_id)
        body = call.get(timeout=0)
    except TimeoutError:
        return JSONResponse({"call_id": call_id, "status": "pending"}, status_code=202)
    except modal.exception.OutputExpiredError:
        return JSONResponse({"detail": "result expired"}, status_code=410)
    except modal.exception.NotFoundError:
        return JSONResponse({"detail": "unknown call_id"}, status_code=404)
    status = int(body.pop("http_status", 200))
    return JSONResponse(body, status_code=status)
