"""What the worker's HTTP apps need of an engine: the SDXL engine, or the platform benchmark's echo engine."""

from typing import Protocol

import torch

from contracts.worker import WorkerError, WorkerRequest, WorkerSuccess
from gpu.engine.budget import RequestBudget


class ServingEngine(Protocol):
    """Serves one request at a time; never raises for a request, answers in the contract's shapes."""

    base_model: str
    requests_served: int
    poisoned: str | None

    @property
    def device(self) -> torch.device: ...

    def to(self, device: torch.device | str) -> None: ...

    def generate(self, request: WorkerRequest, budget: RequestBudget | None = None) -> WorkerSuccess | WorkerError: ...
