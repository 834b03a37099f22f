"""The consumers' delivery settings (retry stages, size limit) and how failures are written into headers."""

from __future__ import annotations

import pytest

from contracts.topology import GATEWAY_GENERATION_REQUESTED
from services.common.app.runtime import broker_topology
from services.common.app.settings import BrokerDeliverySettings
from services.common.messaging.broker import queue_arguments, retry_queue_arguments
from services.common.messaging.consumer import describe_error
from tests.support.settings_env import settings_env


def test_defaults_are_the_contract_s(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env(monkeypatch, BrokerDeliverySettings, {})
    settings = BrokerDeliverySettings()
    assert settings.broker_retry_delays_seconds == (1.0, 5.0, 15.0, 60.0, 120.0)
    assert settings.broker_max_message_bytes == 256 * 1024


def test_delays_are_read_comma_separated_and_shape_the_topology(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env(
        monkeypatch,
        BrokerDeliverySettings,
        {"BROKER_RETRY_DELAYS_SECONDS": "0.5, 2,2,30", "BROKER_MAX_MESSAGE_BYTES": "65536"},
    )
    spec = broker_topology("t-x").queue(GATEWAY_GENERATION_REQUESTED)  # read from the environment
    assert spec.retry_delays == (0.5, 2.0, 2.0, 30.0)
    assert spec.max_message_bytes == 65536
    assert spec.name == "t-x.inference-gateway.generation-requested"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5,1", "must not shrink"),
        ("0,1", "over 0"),
        ("", "1 to 20"),
        (",".join(["1"] * 21), "1 to 20"),
        ("1,soon", "float"),
    ],
)
def test_bad_delays_stop_the_service(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    settings_env(monkeypatch, BrokerDeliverySettings, {"BROKER_RETRY_DELAYS_SECONDS": value})
    with pytest.raises(ValueError, match=message):
        BrokerDeliverySettings()


def test_retry_stages_dead_letter_back_to_their_queue_at_least_once() -> None:
    topo = broker_topology("t-y", BrokerDeliverySettings(broker_retry_delays_seconds=(0.25, 4.0)))
    spec = topo.queue(GATEWAY_GENERATION_REQUESTED)
    first = retry_queue_arguments(spec, spec.retry_stages[0])
    assert first == {
        "x-queue-type": "quorum",
        "x-message-ttl": 250,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": spec.name,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    # The consumer queue itself is unchanged: its delivery limit is the backstop for a consumer that crashes.
    assert queue_arguments(spec, topo)["x-delivery-limit"] == 5


def test_a_failure_is_described_on_one_short_line_without_secrets() -> None:
    error = ConnectionError(
        "connect to postgresql://svc:hunter2-pass@db/x failed\n"
        "while fetching https://r2.example/k?X-Amz-Signature=abcdef&X-Amz-Credential=key " + "y" * 500
    )
    text = describe_error(error)
    assert text.startswith("ConnectionError: connect to postgresql://svc:")
    assert "hunter2-pass" not in text and "abcdef" not in text
    assert "\n" not in text and len(text) <= 300
    assert describe_error(TimeoutError()) == "TimeoutError"
