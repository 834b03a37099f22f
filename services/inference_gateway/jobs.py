"""The durable job table: each generation.requested recorded once, claimed by one runner under a lease.

Every write is one transaction, and a result event is staged in the outbox in the transaction that makes its
job final, so a job is final exactly when its result is on its way. What each method does on a crash:
- `accept` commits before the broker message is acked: a crash in between redelivers the request, which finds
  its job (no second run); a job already final re-announces its result (a new outbox row, same payload).
- `claim` takes queued jobs and running ones whose lease expired (their runner stopped): the latter count as
  recovered, and carry the worker call their last attempt made (async), to be polled again, not resubmitted.
- `start_attempt`, `record_call` and `finish` apply only while this runner holds the lease (LeaseLostError
  otherwise): a runner that lost its job to another never publishes for it.
- `JobEvents` (the use case's publisher and call recorder) makes those three writes, each retried through a
  database outage (`retry_transient`); a crash before one commits leaves the job as the write before it did.
On PostgreSQL several runners share the table (FOR UPDATE SKIP LOCKED); SQLite serves one gateway process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.events import (
    EVENT_PAYLOADS,
    EventPayload,
    EventType,
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
    GenerationStarted,
    event_type_of,
)
from contracts.topology import SERVICE_INFERENCE_GATEWAY, event_source
from services.common.messaging.events import new_event
from services.common.messaging.outbox import add_to_outbox
from services.common.observability import telemetry
from services.common.persistence.db import TRANSIENT_DB_ERRORS, insert_unless_present, read_session
from services.common.persistence.retention import prune_sent_outbox
from services.inference_gateway.models import FINAL_STATES, Job, JobState, outbox_table
from services.inference_gateway.ports import WorkerCall
from services.inference_gateway.retries import transient_retry_delay

log = logging.getLogger(__name__)

T = TypeVar("T")
ResultEvent = GenerationCompleted | GenerationFailed


class LeaseLostError(RuntimeError):
    """The job is no longer this runner's (canceled, taken over after the lease expired, or gone)."""


class AcceptOutcome(StrEnum):
    """What recording a generation.requested did."""

    QUEUED = "queued"
    # The job exists and is not final: it runs (or will) once; this request changes nothing.
    ALREADY_PENDING = "already_pending"
    # The job is final with a result: the result was staged again.
    REANNOUNCED = "reannounced"
    # A cancel came first (or the job was canceled): not run.
    CANCELED = "canceled"


class CancelOutcome(StrEnum):
    """What recording a generation.canceled did."""

    # The job was queued: it will not run.
    DROPPED = "dropped"
    # The job is running: its runner stops it (cancel_requested).
    STOPPING = "stopping"
    # No job yet: a canceled one is recorded, and the request, if it comes, is not run.
    RECORDED_FIRST = "recorded_first"
    # Already final (or canceled before): nothing to do.
    ALREADY_FINAL = "already_final"


@dataclass(frozen=True)
class ClaimedJob:
    """A job a runner now holds: what to run and where a previous runner left it."""

    request: GenerationRequested
    traceparent: str | None
    attempts: int
    attempt_started_at: datetime | None
    call: WorkerCall | None
    # Taken over from a runner that stopped holding it, and how many times that happened (this one included).
    recovered: bool
    recoveries: int

    @property
    def generation_id(self) -> str:
        """The job's key."""
        return self.request.generation_id


@dataclass(frozen=True)
class LeaseStatus:
    """What a lease renewal found for one job."""

    held: bool
    cancel_requested: bool


def _now() -> datetime:
    return datetime.now(UTC)


class JobStore:
    """The gateway's jobs in its database, seen by one runner (`owner`, unique per process)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        owner: str,
        lease_seconds: float,
        clock: Callable[[], datetime] = _now,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self.owner = owner
        self._lease = timedelta(seconds=lease_seconds)
        self._clock = clock
        # Called after a commit that staged outbox rows (wakes the relay).
        self._on_commit = on_commit

    async def accept(self, request: GenerationRequested, traceparent: str | None) -> AcceptOutcome:
        """Record a generation.requested as a queued job, unless its job exists (see AcceptOutcome)."""
        now = self._clock()
        values = {
            "generation_id": request.generation_id,
            "state": JobState.QUEUED.value,
            "request": request.model_dump(mode="json"),
            "traceparent": traceparent,
            "deadline": request.deadline,
            "attempts": 0,
            "recoveries": 0,
            "cancel_requested": False,
            "created_at": now,
            "updated_at": now,
        }
        async with self._sessions() as session, session.begin():
            if await insert_unless_present(session, Job.__table__, values):
                return AcceptOutcome.QUEUED
            job = await session.get(Job, request.generation_id)
            if job is None or job.state in (JobState.QUEUED, JobState.RUNNING):
                return AcceptOutcome.ALREADY_PENDING
            if job.state == JobState.CANCELED or job.result is None or job.result_type is None:
                return AcceptOutcome.CANCELED
            payload = EVENT_PAYLOADS[EventType(job.result_type)].model_validate(job.result)
            if not isinstance(payload, GenerationCompleted | GenerationFailed):
                raise ValueError(f"job {job.generation_id} holds a {job.result_type} as its result")
            await self._stage(session, payload, traceparent)
        self._on_commit()
        return AcceptOutcome.REANNOUNCED

    async def cancel(self, generation_id: str) -> CancelOutcome:
        """Record a generation.canceled (see CancelOutcome)."""
        now = self._clock()
        values = {
            "generation_id": generation_id,
            "state": JobState.CANCELED.value,
            "attempts": 0,
            "recoveries": 0,
            "cancel_requested": True,
            "created_at": now,
            "updated_at": now,
            "finished_at": now,
        }
        async with self._sessions() as session, session.begin():
            if await insert_unless_present(session, Job.__table__, values):
                return CancelOutcome.RECORDED_FIRST
            job = await session.get(Job, generation_id, with_for_update=True)
            if job is None or job.state in FINAL_STATES:
                return CancelOutcome.ALREADY_FINAL
            if job.state == JobState.QUEUED:
                job.state, job.finished_at = JobState.CANCELED.value, now
                outcome = CancelOutcome.DROPPED
            else:
                outcome = CancelOutcome.STOPPING
            job.cancel_requested, job.updated_at = True, now
        return outcome

    async def claim(self, limit: int) -> list[ClaimedJob]:
        """Take up to `limit` jobs, oldest first: queued ones, and running ones whose lease expired."""
        if limit <= 0:
            return []
        now = self._clock()
        claimable = or_(
            Job.state == JobState.QUEUED.value,
            and_(Job.state == JobState.RUNNING.value, Job.lease_until < now),
        )
        query = select(Job).where(claimable).order_by(Job.created_at).limit(limit)
        claimed: list[ClaimedJob] = []
        async with self._sessions() as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            for job in (await session.execute(query)).scalars():
                recovered = job.state == JobState.RUNNING
                if recovered:
                    job.recoveries += 1
                job.state = JobState.RUNNING.value
                job.lease_owner, job.lease_until, job.updated_at = self.owner, now + self._lease, now
                claimed.append(_claimed(job, recovered))
        return claimed

    async def renew(self, generation_ids: Sequence[str]) -> dict[str, LeaseStatus]:
        """Extend this runner's leases; per job whether it is still held and whether a cancel asks it to stop."""
        if not generation_ids:
            return {}
        now = self._clock()
        held = and_(
            Job.generation_id.in_(list(generation_ids)),
            Job.lease_owner == self.owner,
            Job.state == JobState.RUNNING.value,
        )
        async with self._sessions() as session, session.begin():
            # Still ours even when the lease ran out meanwhile (nobody took it over): renewing keeps it.
            await session.execute(update(Job).where(held).values(lease_until=now + self._lease))
            rows = (await session.execute(select(Job.generation_id, Job.cancel_requested).where(held))).all()
        found = {row.generation_id: LeaseStatus(True, bool(row.cancel_requested)) for row in rows}
        return {gid: found.get(gid, LeaseStatus(False, False)) for gid in generation_ids}

    async def release(self, generation_ids: Sequence[str]) -> None:
        """Give jobs up at shutdown: their leases end now, so a runner (this gateway restarted, or another)
        takes them over at once and resumes them."""
        if not generation_ids:
            return
        now = self._clock()
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Job)
                .where(Job.generation_id.in_(list(generation_ids)), Job.lease_owner == self.owner)
                .values(lease_until=now, updated_at=now)
            )

    async def start_attempt(self, started: GenerationStarted, traceparent: str | None) -> None:
        """Record an attempt (its number and start; no worker call yet) and stage generation.started."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            await self._update_held(
                session,
                started.generation_id,
                attempts=started.attempt,
                attempt_started_at=now,
                call_id=None,
                call_endpoint=None,
            )
            await self._stage(session, started, traceparent)
        self._on_commit()

    async def record_call(self, generation_id: str, call: WorkerCall) -> None:
        """Remember the worker call of the current attempt, so that a runner taking the job over polls it."""
        async with self._sessions() as session, session.begin():
            await self._update_held(session, generation_id, call_id=call.call_id, call_endpoint=call.endpoint)

    async def finish(self, result: ResultEvent, traceparent: str | None) -> None:
        """Make the job final with its result, and stage the result event, in one transaction."""
        now = self._clock()
        state = JobState.COMPLETED if isinstance(result, GenerationCompleted) else JobState.FAILED
        async with self._sessions() as session, session.begin():
            await self._update_held(
                session,
                result.generation_id,
                state=state.value,
                result_type=event_type_of(result).value,
                result=result.model_dump(mode="json"),
                finished_at=now,
                lease_owner=None,
                lease_until=None,
            )
            await self._stage(session, result, traceparent)
        self._on_commit()

    async def close_canceled(self, generation_id: str) -> bool:
        """Make a job this runner held final as canceled, when a cancel asked it to stop; True when it did."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(Job)
                .where(
                    Job.generation_id == generation_id,
                    Job.lease_owner == self.owner,
                    Job.state == JobState.RUNNING.value,
                    Job.cancel_requested.is_(True),
                )
                .values(
                    state=JobState.CANCELED.value, finished_at=now, updated_at=now, lease_owner=None, lease_until=None
                )
            )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def sweep(self, older_than: timedelta, *, batch: int = 1000) -> int:
        """Delete final jobs finished longer ago than `older_than`, and outbox rows sent as long ago."""
        cutoff = self._clock() - older_than
        async with self._sessions() as session, session.begin():
            old = (
                select(Job.generation_id)
                .where(Job.state.in_([s.value for s in FINAL_STATES]), Job.finished_at < cutoff)
                .limit(batch)
            )
            ids = list((await session.execute(old)).scalars())
            if ids:
                await session.execute(delete(Job).where(Job.generation_id.in_(ids)))
            await prune_sent_outbox(session, outbox_table, cutoff, batch)
        return len(ids)

    async def count_open(self) -> int:
        """Jobs queued or running, in every runner (the backlog the gateway's replicas share)."""
        query = (
            select(func.count()).select_from(Job).where(Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
        )
        async with read_session(self._sessions) as session:
            return int((await session.execute(query)).scalar_one())

    async def job(self, generation_id: str) -> Job | None:
        """One job as stored (for health reports and tests)."""
        async with self._sessions() as session:
            return await session.get(Job, generation_id)

    async def _update_held(self, session: AsyncSession, generation_id: str, **values: Any) -> None:
        statement = (
            update(Job)
            .where(
                Job.generation_id == generation_id,
                Job.lease_owner == self.owner,
                Job.state == JobState.RUNNING.value,
                Job.cancel_requested.is_(False),
            )
            .values(updated_at=self._clock(), **values)
        )
        result = await session.execute(statement)
        if getattr(result, "rowcount", 0) != 1:
            raise LeaseLostError(f"job {generation_id} is no longer held by this runner")

    async def _stage(
        self, session: AsyncSession, payload: GenerationStarted | ResultEvent, traceparent: str | None
    ) -> None:
        generation_id = payload.generation_id
        envelope = new_event(
            payload,
            source=event_source(SERVICE_INFERENCE_GATEWAY),
            subject=generation_id,
            correlation_id=generation_id,
        )
        await add_to_outbox(session, outbox_table, envelope, traceparent=traceparent)


async def retry_transient(what: str, operation: Callable[[], Awaitable[T]], *, max_delay: float = 10.0) -> T:
    """Run a database operation until it succeeds, waiting out transient errors with backoff (a result already
    made must not be lost to a database restart); LeaseLostError and anything else go through at once."""
    failures = 0
    while True:
        try:
            return await operation()
        except TRANSIENT_DB_ERRORS as error:
            failures += 1
            delay = transient_retry_delay(failures, max_delay)
            log.warning("%s failed (%s); retrying in %.1fs", what, type(error).__name__, delay)
            await asyncio.sleep(delay)


class JobEvents:
    """The use case's event and call ports over the job table: generation.started and the result are staged in
    the outbox with the job's change, and retried through database outages. Each raises LeaseLostError once the
    job is no longer this runner's (the generation stops there, publishing nothing)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    async def publish(self, payload: EventPayload, *, generation_id: str, traceparent: str | None) -> None:
        """Stage an event with the job's change: an attempt's start, or its final result. Its trace context is
        the job's span (the runner's), else the one the request came with."""
        traceparent = telemetry.current_trace_headers().get(telemetry.TRACEPARENT) or traceparent
        if isinstance(payload, GenerationStarted):
            started = payload
            # Crash before the commit: nothing of this attempt is recorded (no generation.started staged); the runner
            # taking the job over goes on from the last recorded attempt.
            await retry_transient(
                f"job {generation_id}: recording attempt {started.attempt}",
                lambda: self._store.start_attempt(started, traceparent),
            )
        elif isinstance(payload, GenerationCompleted | GenerationFailed):
            result = payload
            # Crash before the commit: the job is not final and is taken over; after it, the result is in the outbox.
            await retry_transient(
                f"job {generation_id}: recording its result", lambda: self._store.finish(result, traceparent)
            )
        else:
            raise TypeError(f"the gateway publishes no {type(payload).__name__}")

    async def record_call(self, generation_id: str, call: WorkerCall) -> None:
        """Keep the worker call of the current attempt. Crash before the commit: the runner taking the job over finds
        no call to poll and runs it again (retries.may_rerun_after_recovery), while the unrecorded worker job runs
        out on its own deadline."""
        await retry_transient(
            f"job {generation_id}: recording worker call", lambda: self._store.record_call(generation_id, call)
        )


def _claimed(job: Job, recovered: bool) -> ClaimedJob:
    if job.request is None:
        raise ValueError(f"job {job.generation_id} is claimable but has no request")
    call = WorkerCall(job.call_id, job.call_endpoint or "primary") if job.call_id else None
    return ClaimedJob(
        request=GenerationRequested.model_validate(job.request),
        traceparent=job.traceparent,
        attempts=job.attempts,
        attempt_started_at=job.attempt_started_at,
        call=call,
        recovered=recovered,
        recoveries=job.recoveries,
    )
