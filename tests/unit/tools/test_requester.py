"""The example requester's command line: the command it builds holds only what was given (content fills in the
API's defaults), names are checked before anything is sent, and the user_id is the URL's own user."""

from __future__ import annotations

import pytest

from services.tools.requester import broker_user, command_of, parser


def test_the_command_holds_the_given_request_fields_only() -> None:
    given = ["--owner", "o1", "--avatar", "a1", "--prompt", "p", "--steps", "4", "--cfg", "3.5", "--key", "k-1"]
    args = parser().parse_args(["submit", "--service", "scheduler", *given])
    command = command_of(args)
    assert command.owner_id == "o1" and command.idempotency_key == "k-1" and command.correlation_id is None
    assert command.request == {"avatar_id": "a1", "prompt": "p", "steps": 4, "cfg": 3.5}


@pytest.mark.parametrize("name", ["content", "Scheduler", "a.b"])
def test_a_service_name_that_cannot_be_one_is_refused_before_anything_is_sent(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["follow", "--service", name])
    assert "--service" in capsys.readouterr().err


def test_the_user_id_is_the_urls_user_percent_decoded() -> None:
    assert broker_user("amqp://vixenbliss-scheduler:pw@host:5672/%2F") == "vixenbliss-scheduler"
    assert broker_user("amqp://a%40b:pw@host/") == "a@b"
