"""Who may send generation.submit: a service of VIXEN_SUBMIT_SERVICES under its own source and broker user."""

from __future__ import annotations

import pytest

from contracts.envelope import EventEnvelope
from contracts.events import GenerationCanceled, GenerationSubmit
from services.common.messaging.events import new_event
from services.content.command_trust import CommandTrust

TRUST = CommandTrust(frozenset({"scheduler", "moderation"}), user_prefix="vixenbliss-")


def sent_by(source: str) -> EventEnvelope:
    return new_event(GenerationSubmit(owner_id="o1", request={}), source=source, subject=None)


def test_a_named_service_publishing_with_its_own_broker_user_is_trusted() -> None:
    assert TRUST(sent_by("/vixenbliss/scheduler"), "vixenbliss-scheduler") is None
    assert TRUST.requester(sent_by("/vixenbliss/scheduler")) == "scheduler"


@pytest.mark.parametrize(
    ("source", "user_id", "said"),
    [
        ("/vixenbliss/campaigns", "vixenbliss-campaigns", "the trusted sources are /vixenbliss/moderation"),
        ("/vixenbliss/content", "vixenbliss-content", "the trusted sources are"),
        ("/elsewhere/scheduler", "vixenbliss-scheduler", "the trusted sources are"),
        # A trusted service's source, sent by another service's broker user: the broker vouches for the user.
        ("/vixenbliss/scheduler", "vixenbliss-moderation", "published by broker user vixenbliss-moderation"),
        ("/vixenbliss/scheduler", "guest", "published by broker user guest"),
        ("/vixenbliss/scheduler", None, "without a user_id"),
    ],
)
def test_anyone_else_is_refused_with_the_reason(source: str, user_id: str | None, said: str) -> None:
    refusal = TRUST(sent_by(source), user_id)
    assert refusal is not None and said in refusal


def test_without_the_user_id_check_the_source_alone_decides() -> None:
    loose = CommandTrust(frozenset({"scheduler"}), require_user_id=False)
    assert loose(sent_by("/vixenbliss/scheduler"), None) is None
    assert loose(sent_by("/vixenbliss/moderation"), None) is not None


def test_no_other_event_type_is_trusted_on_the_commands_queue() -> None:
    other = new_event(
        GenerationCanceled(generation_id="g", owner_id="o1", avatar_id="a", canceled_at="2026-01-01T00:00:00Z"),
        source="/vixenbliss/scheduler",
        subject=None,
    )
    assert TRUST(other, "vixenbliss-scheduler") is not None


def test_nobody_is_trusted_when_no_service_is_named() -> None:
    refusal = CommandTrust(frozenset())(sent_by("/vixenbliss/scheduler"), "vixenbliss-scheduler")
    assert refusal is not None and "VIXEN_SUBMIT_SERVICES" in refusal
