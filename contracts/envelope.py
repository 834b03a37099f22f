"""The CloudEvent 1.0 attributes this platform uses, as a typed model (the wire format is the SDK's)."""

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

DATA_CONTENT_TYPE: Literal["application/json"] = "application/json"
# Structured mode of the CloudEvents RabbitMQ binding: the whole event is the JSON body.
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"


class EventEnvelope(BaseModel):
    """One event: CloudEvent attributes, the `correlationid` extension, and the payload as JSON data."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=128, description="unique per event; also the AMQP message_id")
    source: str = Field(min_length=1, description="the producing service, e.g. /vixenbliss/content")
    type: str = Field(min_length=1, description="the event type, e.g. generation.requested")
    subject: str | None = Field(default=None, description="the aggregate id (generation, avatar, LoRA)")
    time: AwareDatetime
    correlationid: str | None = Field(
        default=None, description="extension: the generation id, or the request that caused the event"
    )
    datacontenttype: Literal["application/json"] = DATA_CONTENT_TYPE
    data: dict[str, Any] = Field(description="the payload model of `type`, as JSON")
