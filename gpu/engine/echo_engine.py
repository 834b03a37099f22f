"""The echo engine, for the platform benchmark only (`WORKER_ENGINE=echo`, tests/bench/platform): it answers each
request at once with a valid PNG of the requested size and no model, so that what is measured is the services
around the worker. Never for serving: it ignores the prompt and the LoRA."""

import base64
import io
import time

import torch
from PIL import Image

from contracts.worker import ModelInfo, Timings, WorkerError, WorkerRequest, WorkerSuccess
from gpu.engine.budget import RequestBudget

ECHO_BASE_MODEL = "echo"


class EchoEngine:
    """A flat image of the requested size, its colour from the seed; the contract's timings, all but total zero."""

    base_model = ECHO_BASE_MODEL
    poisoned: str | None = None

    def __init__(self) -> None:
        self.requests_served = 0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> None:
        """Nothing to move: the echo engine has no weights."""

    def generate(self, request: WorkerRequest, budget: RequestBudget | None = None) -> WorkerSuccess | WorkerError:
        started = time.perf_counter()
        seed = request.seed
        colour = (seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF)
        buffer = io.BytesIO()
        Image.new("RGB", (request.width, request.height), colour).save(buffer, format="PNG", compress_level=1)
        elapsed = time.perf_counter() - started
        self.requests_served += 1
        return WorkerSuccess(
            image_base64=base64.b64encode(buffer.getvalue()).decode("ascii"),
            generation_time_seconds=elapsed,
            model_info=ModelInfo(base_model=ECHO_BASE_MODEL, lora_applied=False, lora_scale=0.0),
            request_id=request.request_id,
            lora_sha256=request.lora_sha256,
            seed=seed,
            timings=Timings(total_ms=elapsed * 1000.0),
        )
