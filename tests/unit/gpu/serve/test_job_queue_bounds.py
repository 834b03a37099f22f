"""The local worker's job queue stays bounded: unfinished jobs up to `max_pending` (then refused), finished ones
kept for a while and at most `max_jobs` in all."""

from __future__ import annotations

import threading

import pytest

from contracts.worker import ModelInfo, WorkerRequest, WorkerSuccess
from gpu.engine.budget import RequestBudget
from gpu.serve.job_queue import JobQueue, Outcome, QueueFullError


class GatedRun:
    """A stand-in for the engine whose requests finish only when the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def __call__(self, request: WorkerRequest, budget: RequestBudget) -> Outcome:
        self.gate.wait(30)
        info = ModelInfo(base_model="stand-in", lora_applied=False, lora_scale=0.0)
        return WorkerSuccess(
            image_base64="", generation_time_seconds=0.0, model_info=info, request_id=request.request_id
        )


def request(n: int) -> WorkerRequest:
    return WorkerRequest(prompt="a portrait", width=64, height=64, steps=1, request_id=f"gen-{n}")


def test_past_max_pending_a_submit_is_refused_and_taken_again_once_jobs_finish() -> None:
    run = GatedRun()
    queue = JobQueue(run, max_pending=3)
    try:
        ids = [queue.submit(request(n)) for n in range(3)]
        with pytest.raises(QueueFullError, match="3 jobs are waiting or running"):
            queue.submit(request(3))

        run.gate.set()
        for call_id in ids:
            future = queue.future(call_id)
            assert future is not None
            future.result(timeout=30)
        assert queue.submit(request(4)).startswith("fc-")
    finally:
        run.gate.set()
        queue.shutdown()


def test_finished_jobs_beyond_max_jobs_are_forgotten_oldest_first() -> None:
    run = GatedRun()
    run.gate.set()
    queue = JobQueue(run, max_jobs=5, max_pending=100)
    try:
        ids = []
        for n in range(12):
            ids.append(queue.submit(request(n)))
            future = queue.future(ids[-1])
            assert future is not None
            future.result(timeout=30)
        queue.submit(request(99))

        known = [call_id for call_id in ids if queue.poll(call_id) is not None]
        assert len(known) <= 5 and known == ids[-len(known) :]
    finally:
        queue.shutdown()
