"""Gateway tables (`gateway_*`): one durable job per generation, and the outbox its result events leave by."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.messaging.outbox import make_outbox_table
from services.common.persistence.db import make_metadata
from services.common.persistence.sqltypes import UtcDateTime


class Base(DeclarativeBase):
    """Declarative base of the gateway tables, all named `gateway_*` (a database may be shared), built by
    migrations/."""

    metadata = make_metadata()


class JobState(StrEnum):
    """Where a job stands: queued until a runner claims it, running under a lease; the rest are final."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATES = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELED)


class Job(Base):
    """One generation.requested, kept from its arrival to its result (and a while after, to answer a duplicate).

    A cancel that arrives before its request leaves a canceled job without a request: the request, when it
    comes, finds it and is not run.
    """

    __tablename__ = "gateway_jobs"

    generation_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    # The generation.requested payload (JSON mode) and the trace it came with; None for a cancel-first job.
    request: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    traceparent: Mapped[str | None] = mapped_column(String(128), nullable=True)
    deadline: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # Attempts started so far; the current attempt's start, and its worker call when the worker is async.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    attempt_started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    call_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Which endpoint holds that call: "primary" or "fallback".
    call_endpoint: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Which runner holds the job, until when (renewed while it runs; an expired lease is taken over).
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # Times a runner took over the job from one that stopped holding it (crash, lost lease).
    recoveries: Mapped[int] = mapped_column(Integer, default=0)
    # A cancel seen while the job ran: its runner stops it at the next lease renewal.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The final result event (routing key and payload, JSON mode): a duplicate request re-announces it.
    result_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    __table_args__ = (
        # Runners look for claimable jobs (queued, or running under an expired lease) oldest first.
        Index("ix_gateway_jobs_state_created_at", "state", "created_at"),
        # The retention sweep deletes final jobs by age.
        Index("ix_gateway_jobs_finished_at", "finished_at"),
    )


outbox_table = make_outbox_table(Base.metadata, "gateway_outbox")
