"""Event handlers for the gateway's queues: a generation.requested becomes a job, a generation.canceled cancels one.

Both return (and the message is acked) as soon as the job table has the change: no message waits on a GPU.
"""

from __future__ import annotations

import logging

from contracts.events import GenerationCanceled, GenerationRequested
from contracts.object_keys import UnderivableKeyError, canonical_generation_id, lora_key_problem
from services.common.messaging.consumer import EventHandler, ForgedEventError, PermanentError, ReceivedEvent
from services.inference_gateway import metrics as m
from services.inference_gateway.jobs import AcceptOutcome, JobStore
from services.inference_gateway.runner import JobRunner

log = logging.getLogger(__name__)


def forged_request_field(request: GenerationRequested) -> str | None:
    """Why a generation.requested names something content never would, or None: content issues canonical UUIDs
    (the image key is derived from it) and names a ready LoRA by the content address of its sha256, so a request
    pointing at any other object (an upload, an image, another file) is forged."""
    try:
        canonical_generation_id(request.generation_id)
    except UnderivableKeyError as error:
        return str(error)
    if request.lora is None:
        return None
    return lora_key_problem(request.lora.object_key, request.lora.sha256)


def generation_requested_handler(store: JobStore, runner: JobRunner, metrics: m.Metrics) -> EventHandler:
    """Records the request as a job (once: a duplicate or a redelivery finds it) and wakes the runner."""

    async def handle(event: ReceivedEvent) -> None:
        if not isinstance(event.payload, GenerationRequested):
            # Only generation.requested is bound to this queue: anything else is a routing mistake.
            raise PermanentError(f"unexpected {event.envelope.type} on the generation-requested queue")
        forged = forged_request_field(event.payload)
        if forged is not None:
            raise ForgedEventError(forged)
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
        try:
            canceled = canonical_generation_id(event.payload.generation_id)
        except UnderivableKeyError as error:
            raise ForgedEventError(str(error)) from None
        outcome = await runner.cancel(canceled)
        log.info("generation %s canceled (%s): %s", event.payload.generation_id, event.payload.reason, outcome.value)

    return handle
