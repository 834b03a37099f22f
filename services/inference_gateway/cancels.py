"""The gateway process's cancel state: recently canceled generation ids, and the runs of each generation here.

The job table is where a cancel lives for every replica and across restarts (jobs.JobStore.cancel, seen by the
runner at its next renewal). This memory stays beside it for two reasons the table cannot serve: a cancel must stop
a run in this process at once (its asyncio task, and with it the worker call), not a lease renewal later; and the
use case also runs without the job table (GenerationService.handle called directly, as the unit tests and the
benchmarks do), where a cancel that came before its request must still keep the request from running. It also tells
a run cancelled by a cancel (nothing published) from one cancelled by a shutdown (the job is resumed elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from services.inference_gateway.ports import CANCELED_MEMORY


class CancelMemory:
    """The last `size` canceled generation ids (oldest forgotten first) and the tasks running each generation."""

    def __init__(self, size: int = CANCELED_MEMORY) -> None:
        self._size = size
        self._canceled: OrderedDict[str, None] = OrderedDict()
        # The runs of each generation here (the runner runs one per generation; a direct caller of handle may
        # start two).
        self._running: dict[str, set[asyncio.Task[Any]]] = {}

    def cancel(self, generation_id: str) -> int:
        """Remember the cancel and cancel the generation's runs here; how many were stopped by it."""
        self._canceled[generation_id] = None
        self._canceled.move_to_end(generation_id)
        while len(self._canceled) > self._size:
            self._canceled.popitem(last=False)
        return sum(task.cancel() for task in self._running.get(generation_id, ()))

    def was_canceled(self, generation_id: str) -> bool:
        """Whether a cancel for this generation is still remembered."""
        return generation_id in self._canceled

    def is_running(self, generation_id: str) -> bool:
        """Whether a run of this generation is under way here."""
        return bool(self._running.get(generation_id))

    @contextlib.contextmanager
    def running(self, generation_id: str, task: asyncio.Task[Any]) -> Iterator[None]:
        """Count `task` as a run of the generation while the block lasts (a cancel reaching it cancels it)."""
        runs = self._running.setdefault(generation_id, set())
        runs.add(task)
        try:
            yield
        finally:
            runs.discard(task)
            if not runs:
                self._running.pop(generation_id, None)
