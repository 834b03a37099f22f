"""generation.submit from a requesting service: admitted exactly as POST /api/v1/content/generate, answered once
(accepted or rejected) through the outbox, in the transaction that records the command as handled."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import EventEnvelope
from contracts.events import GenerationSubmit
from contracts.topology import CONTENT_GENERATION_SUBMITS
from services.common.auth.principal import subject_problem
from services.common.http.errors import DomainError, FieldError, InvalidRequestError
from services.common.observability.metrics import ServiceMetrics
from services.content import events, replies
from services.content.clock import Clock, utc_now
from services.content.inbox import mark_processed
from services.content.models import inbox_table
from services.content.replies import CommandOrigin
from services.content.schemas import GenerateRequest
from services.content.submit import Submissions

log = logging.getLogger(__name__)

COMMANDS = "vixen_content_generation_commands"


def command_idempotency_key(requester: str, key: str) -> str:
    """Where a command's idempotency key is kept among the owner's keys: under the requester's name, so that it
    never meets the owner's own Idempotency-Keys or another service's."""
    return f"svc:{requester}:{key}"


def admitted_request(command: GenerationSubmit) -> GenerateRequest:
    """The command's owner and request as the API would take them from a token and a body; else the API's 422."""
    problem = subject_problem(command.owner_id)
    if problem is not None:
        reason = f"the owner id {problem}"
        raise InvalidRequestError(f"invalid request: owner_id: {reason}", fields=[FieldError("owner_id", reason)])
    try:
        return GenerateRequest.model_validate(command.request)
    except ValidationError as error:
        raise replies.invalid_request(error) from None


class SubmitCommands:
    """Handles generation.submit: one answer per command event, however often it is delivered."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        submissions: Submissions,
        *,
        on_commit: Callable[[], None] = lambda: None,
        clock: Clock = utc_now,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._submissions = submissions
        # Called after a commit that wrote outbox rows: wakes the relay.
        self._on_commit = on_commit
        self._clock = clock
        self._metrics = metrics

    async def handle(self, envelope: EventEnvelope, command: GenerationSubmit, requester: str) -> None:
        """Admit the command from `requester` (whose source and broker user the consumer checked) and answer it.

        The command's event id goes into the inbox in the transaction of its answer: a redelivery finds it and
        does nothing, so no command makes two generations or two answers. A refusal rolls the admission back
        (nothing written, no token spent) and answers in a transaction of its own; a failure that is no refusal
        (the database is away) raises, and the consumer retries the command later."""
        origin = CommandOrigin(requester, envelope.id, command.correlation_id or envelope.id)
        try:
            outcome = await self._admit(envelope, command, origin)
        except DomainError as refusal:
            outcome = await self._reject(envelope, command, origin, refusal)
        if outcome is None:
            log.info("command %s from %s was handled before: nothing done again", envelope.id, requester)
            return
        self._on_commit()
        self._count(requester, *outcome)

    async def _admit(
        self, envelope: EventEnvelope, command: GenerationSubmit, origin: CommandOrigin
    ) -> tuple[str, str] | None:
        request = admitted_request(command)
        key = command_idempotency_key(origin.requester, command.idempotency_key) if command.idempotency_key else None
        now = self._clock()
        async with self._sessions() as session, session.begin():
            if not await mark_processed(session, inbox_table, envelope.id, CONTENT_GENERATION_SUBMITS):
                return None
            admitted = await self._submissions.admit(session, command.owner_id, request, key, now=now, origin=origin)
            generation = admitted.generation
            answer = replies.accepted(origin, command.owner_id, generation, replayed=admitted.replayed)
            await events.emit_reply(session, answer, str(generation.id))
            if admitted.replayed:
                # A repeat of a generation that already ended learns how it ended.
                await events.emit_finished(session, generation, origin)
        self._submissions.committed(admitted)
        outcome = "replayed" if admitted.replayed else "accepted"
        log.info("command %s from %s %s generation %s", envelope.id, origin.requester, outcome, generation.id)
        return outcome, ""

    async def _reject(
        self, envelope: EventEnvelope, command: GenerationSubmit, origin: CommandOrigin, refusal: DomainError
    ) -> tuple[str, str] | None:
        answer = replies.rejected(origin, command.owner_id, refusal)
        async with self._sessions() as session, session.begin():
            if not await mark_processed(session, inbox_table, envelope.id, CONTENT_GENERATION_SUBMITS):
                return None
            await events.emit_reply(session, answer, envelope.id)
        log.info(
            "command %s from %s rejected: %d %s %s",
            envelope.id,
            origin.requester,
            answer.status,
            answer.error_code,
            answer.details.reason_code or "",
        )
        return "rejected", answer.error_code

    def _count(self, requester: str, outcome: str, error_code: str) -> None:
        if self._metrics is None:
            return
        self._metrics.add(
            COMMANDS,
            1,
            "generation.submit commands answered, by requesting service, outcome and error code",
            requester=requester,
            outcome=outcome,
            error_code=error_code,
        )
