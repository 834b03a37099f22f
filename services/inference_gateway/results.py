"""A generation's outcome made final: the worker's image checked and stored, and the result event built and published.

A checked image (images.decode_png, off the event loop) is uploaded under the key derived from the generation id, so
a repeat overwrites, never duplicates; a store that answered says with its status whether trying again can help
(retries.retry_rule). The result event never carries a storage error's text (it may name endpoints): the log keeps
it, sanitized.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime

from contracts.errors import GatewayErrorCode
from contracts.events import GenerationCompleted, GenerationFailed, GenerationRequested, ImageRef
from contracts.object_keys import generation_image_key
from contracts.worker import WorkerSuccess
from services.common.storage.objects import StorageRequestError
from services.inference_gateway import metrics as m
from services.inference_gateway.errors import GatewayFailure
from services.inference_gateway.images import PNG_CONTENT_TYPE, CheckedPng, InvalidImageError, decode_png
from services.inference_gateway.ports import ObjectStore, ResultPublisher
from services.inference_gateway.retries import AttemptRecord, is_retried
from services.inference_gateway.sanitize import sanitize_details, sanitize_text

log = logging.getLogger(__name__)


def log_storage_error(what: str, generation_id: str, error: Exception, secrets: Sequence[str]) -> None:
    """Log a storage call's failure with its cause, sanitized (the cause stays out of the result event)."""
    log.warning(
        "generation %s: %s: %s: %s",
        generation_id,
        what,
        type(error).__name__,
        sanitize_text(str(error), list(secrets)),
    )


async def checked_image(request: GenerationRequested, success: WorkerSuccess, attempt: int) -> CheckedPng:
    """The worker's image if it answers this request with a PNG of the requested size; INVALID_WORKER_RESPONSE
    otherwise."""
    if success.request_id is not None and success.request_id != request.generation_id:
        raise GatewayFailure(
            GatewayErrorCode.INVALID_WORKER_RESPONSE, "worker answered for another request", {"attempt": attempt}
        )
    try:
        # Decoding and checking a multi-megabyte PNG takes long enough to stall every other task on the loop.
        return await asyncio.to_thread(decode_png, success.image_base64, request.params.width, request.params.height)
    except InvalidImageError as error:
        raise GatewayFailure(GatewayErrorCode.INVALID_WORKER_RESPONSE, str(error), error.details) from None


class ResultSteps:
    """Stores a generation's image and publishes its terminal event (completed or failed)."""

    def __init__(
        self, storage: ObjectStore, events: ResultPublisher, metrics: m.Metrics, secrets: Sequence[str] = ()
    ) -> None:
        self._storage = storage
        self._events = events
        self._metrics = metrics
        self._secrets = list(secrets)

    async def store(self, generation_id: str, png: CheckedPng) -> None:
        """Upload the image under its derived key; STORAGE_FAILED (with the store's status, if it answered)."""
        try:
            await self._storage.put_bytes(generation_image_key(generation_id), png.data, PNG_CONTENT_TYPE)
        except Exception as error:
            log_storage_error("could not store the image", generation_id, error, self._secrets)
            details: dict[str, object] = {
                "object_key": generation_image_key(generation_id),
                "reason": type(error).__name__,
            }
            if isinstance(error, StorageRequestError):
                # The store answered: its status decides whether trying again can help (retries.retry_rule).
                details["http_status"] = error.status
                if error.code:
                    details["s3_code"] = error.code
            raise GatewayFailure(GatewayErrorCode.STORAGE_FAILED, "could not store the image", details) from None

    async def complete(
        self,
        request: GenerationRequested,
        success: WorkerSuccess,
        png: CheckedPng,
        attempts: int,
        traceparent: str | None,
        started_at: datetime | None,
    ) -> GenerationCompleted:
        """Publish generation.completed for a stored image."""
        completed = GenerationCompleted(
            generation_id=request.generation_id,
            image=ImageRef(
                object_key=generation_image_key(request.generation_id),
                sha256=png.sha256,
                width=png.width,
                height=png.height,
                size_bytes=png.size_bytes,
                content_type=PNG_CONTENT_TYPE,
            ),
            generation_time_seconds=max(success.generation_time_seconds, 0.0),
            model_info=success.model_info,
            timings=success.timings,
            attempts=attempts,
            started_at=started_at,
        )
        await self._events.publish(completed, generation_id=request.generation_id, traceparent=traceparent)
        self._metrics.inc(m.COMPLETED)
        log.info(
            "generation %s completed after %d attempt(s): %s (%d bytes)",
            request.generation_id,
            attempts,
            completed.image.object_key,
            png.size_bytes,
        )
        return completed

    async def fail(
        self,
        request: GenerationRequested,
        failure: GatewayFailure,
        *,
        attempts: int,
        traceparent: str | None,
        records: Sequence[AttemptRecord] = (),
    ) -> GenerationFailed:
        """Publish generation.failed for a final failure, its message and details sanitized."""
        details = dict(failure.details)
        if records:
            # Every attempt's cause, oldest first (the last is this failure's).
            details["causes"] = [r.as_detail() for r in records]
        failed = GenerationFailed(
            generation_id=request.generation_id,
            error_code=failure.code.value,
            error=sanitize_text(failure.message, self._secrets) or failure.code.value,
            details=sanitize_details(details, self._secrets),
            retryable=is_retried(failure),
            attempts=attempts,
        )
        await self._events.publish(failed, generation_id=request.generation_id, traceparent=traceparent)
        self._metrics.inc(m.FAILED, error_code=failed.error_code)
        log.warning(
            "generation %s failed after %d attempt(s): %s %s",
            request.generation_id,
            attempts,
            failed.error_code,
            failed.error,
        )
        return failed
