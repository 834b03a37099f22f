"""Event handlers for the gateway's queues: a generation.requested becomes a job, a generation.canceled cancels one.

Both return (and the message is acked) as soon as the job table has the change: no message waits on a GPU.
"""

from __future__ import annotations

import logging

from contracts.events import GenerationCanceled, GenerationRequested
from services.common.consumer import EventHandler, PermanentError, ReceivedEvent
from services.inference_gateway import metrics as m
from services.inference_gateway.jobs import AcceptOutcome, JobStore
from services.inference_gateway.runner import JobRunner

log = logging.getLogger(__name__)


def generation_requested_handler(store: JobStore, runner: JobRunner, metrics: m.Metrics) -> EventHandler:
    """Records the request as a job (once: a duplicate or a redelivery finds it) and wakes the runner."""

    async def handle(event: ReceivedEvent) -> None:
        if not isinstance(event.payload, GenerationRequested):
            # Only generation.requested is bound to this queue: anything else is a routing mistake.
            raise PermanentError(f"unexpected {event.envelope.type} on the generation-requested queue")
        generation_id = event.payload.generation_id
        outcome = await store.accept(event.payload, event.traceparent)
        metrics.inc(m.JOBS_RECORDED, outcome=outcome.value)
        if outcome is AcceptOutcome.QUEUED:
            runner.notify()
        elif outcome is AcceptOutcome.REANNOUNCED:
            log.info("generation %s requested again after it finished: its result is announced again", generation_id)
        else:
            log.info("generation %s requested again: %s, not run again", generation_id, outcome.value)

    return handle


def generation_canceled_handler(runner: JobRunner) -> EventHandler:
    """Records the cancel in the job table: a queued job is dropped, a running one is stopped (on the worker too),
    and a request that comes after its cancel is not run."""

    async def handle(event: ReceivedEvent) -> None:
        if not isinstance(event.payload, GenerationCanceled):
            # Only generation.canceled is bound to this queue: anything else is a routing mistake.
            raise PermanentError(f"unexpected {event.envelope.type} on the generation-canceled queue")
        outcome = await runner.cancel(event.payload.generation_id)
        log.info("generation %s canceled (%s): %s", event.payload.generation_id, event.payload.reason, outcome.value)

    return handle
