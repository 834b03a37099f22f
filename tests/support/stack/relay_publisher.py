"""A publisher for an outbox relay that records what it was handed and sends nothing (which rows a relay picks is
what the tests that use it check; the real broker is exercised elsewhere)."""

from __future__ import annotations

import aio_pika


class RecordingRelayPublisher:
    """Records (message id, routing key) of each publish."""

    def __init__(self) -> None:
        self.published: list[tuple[str | None, str]] = []

    async def publish_confirmed(self, message: aio_pika.Message, routing_key: str) -> None:
        self.published.append((message.message_id, routing_key))

    @property
    def message_ids(self) -> list[str | None]:
        return [message_id for message_id, _ in self.published]
