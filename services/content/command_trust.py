"""Who may request a generation by event (pure): a service named in VIXEN_SUBMIT_SERVICES, publishing under its own
`source` with its own broker user."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.envelope import EventEnvelope
from contracts.events import EventType
from contracts.topology import event_source, source_service


@dataclass(frozen=True)
class CommandTrust:
    """The consumer's source check for generation.submit (a services.common.messaging.consumer.SourceCheck).

    RabbitMQ refuses a message whose user_id property is not the publishing connection's user, so a user_id that
    arrives names the broker user that published it: with `require_user_id`, it must be `user_prefix` + the service
    its `source` names (`vixenbliss-scheduler` for /vixenbliss/scheduler), and a command without one is refused.
    """

    services: frozenset[str]
    user_prefix: str = "vixenbliss-"
    require_user_id: bool = True

    def __call__(self, envelope: EventEnvelope, user_id: str | None) -> str | None:
        """Why the command cannot be trusted, or None."""
        if envelope.type != EventType.GENERATION_SUBMIT.value:
            return f"{envelope.type[:80]} is not a command content takes"
        service = source_service(envelope.source)
        if service is None or service not in self.services:
            trusted = ", ".join(event_source(name) for name in sorted(self.services)) or "none (VIXEN_SUBMIT_SERVICES)"
            return f"generation.submit from {envelope.source[:120]}; the trusted sources are {trusted}"
        if not self.require_user_id:
            return None
        expected = self.user_prefix + service
        if user_id is None:
            return f"generation.submit from {envelope.source} without a user_id; its broker user {expected} must set it"
        if user_id != expected:
            return f"generation.submit from {envelope.source} published by broker user {user_id[:120]}, not {expected}"
        return None

    def requester(self, envelope: EventEnvelope) -> str:
        """The requesting service of a command this check let through."""
        service = source_service(envelope.source)
        if service is None or service not in self.services:
            raise ValueError(f"{envelope.source[:120]} is not a trusted requesting service")
        return service
