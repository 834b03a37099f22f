"""Event types and the payload models carried in the `data` of each CloudEvent."""

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from contracts.errors import GatewayErrorCode, WorkerErrorCode
from contracts.worker import MAX_SEED, ModelInfo, Sha256Hex, Timings

Id = Annotated[str, Field(min_length=1, max_length=128)]
ObjectKey = Annotated[str, Field(min_length=1, max_length=1024, description="object key in the bucket")]

# Codes that may appear in generation.failed: the worker's and the gateway's.
KNOWN_ERROR_CODES: tuple[str, ...] = tuple(c.value for c in WorkerErrorCode) + tuple(c.value for c in GatewayErrorCode)


class EventType(StrEnum):
    """The CloudEvent `type` of every event; also its routing key on the events exchange."""

    AVATAR_CREATED = "avatar.created"
    AVATAR_UPDATED = "avatar.updated"
    AVATAR_DELETED = "avatar.deleted"
    LORA_READY = "lora.ready"
    LORA_RETIRED = "lora.retired"
    GENERATION_REQUESTED = "generation.requested"
    GENERATION_STARTED = "generation.started"
    GENERATION_COMPLETED = "generation.completed"
    GENERATION_FAILED = "generation.failed"
    GENERATION_CANCELED = "generation.canceled"
    GENERATION_SUBMIT = "generation.submit"
    GENERATION_ACCEPTED = "generation.accepted"
    GENERATION_REJECTED = "generation.rejected"
    GENERATION_FINISHED = "generation.finished"


class EventPayload(BaseModel):
    """Base of every payload: versioned, and tolerant of fields added by newer producers."""

    # Consumers ignore unknown fields so that a producer can add fields without a lockstep deploy.
    model_config = ConfigDict(extra="ignore")

    schema_version: int = Field(default=1, ge=1)


class AvatarEvent(EventPayload):
    """What identity says about an avatar."""

    avatar_id: Id
    owner_id: Id
    name: str = Field(min_length=1, max_length=200)
    active_lora_model_id: Id | None = None


class AvatarCreated(AvatarEvent):
    """An avatar was created."""


class AvatarUpdated(AvatarEvent):
    """An avatar changed (name or active LoRA)."""


class AvatarDeleted(AvatarEvent):
    """An avatar was deleted; generations for it are refused from now on."""


class LoraEvent(EventPayload):
    """What identity says about a LoRA model file."""

    lora_model_id: Id
    avatar_id: Id
    owner_id: Id
    object_key: ObjectKey
    sha256: Sha256Hex
    size_bytes: int = Field(ge=1)
    base_model: str = Field(min_length=1, max_length=200)
    default_scale: float = Field(default=1.0, ge=0.0, le=2.0)
    trigger_words: list[str] = Field(default_factory=list)


class LoraReady(LoraEvent):
    """A LoRA file was uploaded and validated: it may be used for generations."""


class LoraRetired(LoraEvent):
    """A LoRA must no longer be used."""


class LoraRef(BaseModel):
    """The LoRA a generation uses: an object key, never a URL (the gateway signs one per call)."""

    model_config = ConfigDict(extra="ignore")

    lora_model_id: Id
    object_key: ObjectKey
    sha256: Sha256Hex
    scale: float = Field(default=1.0, ge=0.0, le=2.0)


class GenerationParams(BaseModel):
    """The image parameters of a generation (the worker contract's, minus the LoRA)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str = Field(default="", max_length=2000)
    width: int = Field(default=1024, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=1024, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=28, ge=1, le=100)
    cfg: float = Field(default=5.5, ge=0.0, le=30.0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


class GenerationRequested(EventPayload):
    """Content asks for an image."""

    generation_id: Id
    owner_id: Id
    avatar_id: Id
    lora: LoraRef | None = Field(default=None, description="null: generate without a LoRA")
    params: GenerationParams
    requested_at: AwareDatetime
    deadline: AwareDatetime


class GenerationStarted(EventPayload):
    """The gateway started an attempt on the worker."""

    generation_id: Id
    attempt: int = Field(ge=1)
    worker_mode: Literal["sync", "async"]


class ImageRef(BaseModel):
    """A stored output image."""

    model_config = ConfigDict(extra="ignore")

    object_key: ObjectKey
    sha256: Sha256Hex
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    size_bytes: int = Field(ge=1)
    content_type: str = "image/png"


class GenerationCompleted(EventPayload):
    """The image is stored."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    generation_id: Id
    image: ImageRef
    generation_time_seconds: float = Field(ge=0.0)
    model_info: ModelInfo
    timings: Timings | None = None
    attempts: int = Field(default=1, ge=1)
    started_at: AwareDatetime | None = Field(
        default=None, description="when the attempt that made the image started (the result may overtake its start)"
    )


class GenerationFailed(EventPayload):
    """The generation ended without an image."""

    generation_id: Id
    error_code: str = Field(
        json_schema_extra={"enum": list(KNOWN_ERROR_CODES)},
        description="a WorkerErrorCode or GatewayErrorCode value",
    )
    error: str = Field(max_length=2000)
    details: dict[str, object] = Field(default_factory=dict, description="sanitized: no URLs, no secrets")
    retryable: bool = False
    attempts: int = Field(default=1, ge=1)

    @field_validator("error_code")
    @classmethod
    def _known_code(cls, value: str) -> str:
        if value not in KNOWN_ERROR_CODES:
            raise ValueError(f"unknown error_code {value!r}; expected one of {', '.join(KNOWN_ERROR_CODES)}")
        return value


class GenerationCanceled(EventPayload):
    """The owner canceled an unfinished generation: its result, if one still comes, is discarded."""

    generation_id: Id
    owner_id: Id
    avatar_id: Id
    canceled_at: AwareDatetime
    reason: str = Field(default="canceled by its owner", max_length=500)


# A requesting service's name: its CloudEvent `source` is /vixenbliss/<name>, its reply queue <name>.generation-replies.
ServiceName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9-]*$")]
# The Idempotency-Key of the HTTP route, shorter: content keeps it under the requester's name.
CommandIdempotencyKey = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


# Published by a service named in VIXEN_SUBMIT_SERVICES with its own broker user (the AMQP user_id set) and `source`
# /vixenbliss/<service>; content takes it from `content.generation-submits` as it takes POST /api/v1/content/generate
# and answers on generation.accepted.<service> or generation.rejected.<service>, then generation.finished.<service>
# (docs/content.md § Generations by event). The summaries below are one line: the AsyncAPI document shows them.
class GenerationSubmit(EventPayload):
    """A requesting service asks for a generation as its owner would by POST /api/v1/content/generate."""

    owner_id: Id = Field(description="the owner the generation is for, as the `sub` of the owner's token would say")
    request: dict[str, Any] = Field(
        description="the body of POST /api/v1/content/generate (GenerateRequest in docs/openapi/content.json), "
        "validated exactly as the API validates it: unknown fields, strings for numbers and control characters are "
        "refused"
    )
    idempotency_key: CommandIdempotencyKey | None = Field(
        default=None,
        description="a repeat with the same key and request answers the earlier generation (kept as long as an "
        "Idempotency-Key); a redelivery of the same event id never makes a second one, key or not",
    )
    correlation_id: Id | None = Field(
        default=None, description="echoed in every reply (data and correlationid); absent: the command's event id"
    )


class GenerationReply(EventPayload):
    """Base of what content answers a requesting service: whose command it answers."""

    requester: ServiceName = Field(description="the service the reply is for (its routing key ends with it)")
    command_id: Id = Field(description="the id of the generation.submit event answered")
    correlation_id: Id = Field(description="the command's correlation_id, else its event id")
    owner_id: Id


class GenerationAccepted(GenerationReply):
    """Content queued the command's generation; routing key generation.accepted.<requester>."""

    generation_id: Id
    replayed: bool = Field(default=False, description="true: an earlier command with this key made the generation")


class RefusedField(BaseModel):
    """One refused input: its dotted path and why (as in the API's error body)."""

    model_config = ConfigDict(extra="ignore")

    field: str
    reason: str


class RefusalDetails(BaseModel):
    """The `details` of the API's error body."""

    model_config = ConfigDict(extra="ignore")

    fields: list[RefusedField] = Field(default_factory=list)
    reason_code: str | None = None


# The refusals the API answers with a 4xx, in its error shape (`status` says which); nothing of the command was
# recorded and no rate token was spent.
class GenerationRejected(GenerationReply):
    """Content refused the command as the API would (same error shape); routing key generation.rejected.<requester>."""

    status: int = Field(ge=400, le=499, description="the status POST /api/v1/content/generate would answer")
    error: str = Field(max_length=2000)
    error_code: str = Field(description="INVALID_REQUEST, NOT_FOUND, CONFLICT or RATE_LIMITED, as the API's")
    details: RefusalDetails = Field(default_factory=RefusalDetails)
    retry_after_seconds: int | None = Field(default=None, ge=1, description="for a 429: when to try again")


# Completed (with its image), failed (with its error; TIMEOUT when no result came before the deadline) or canceled
# by its owner.
class GenerationFinished(GenerationReply):
    """The command's generation reached its final status; routing key generation.finished.<requester>."""

    generation_id: Id
    status: Literal["completed", "failed", "canceled"]
    image: ImageRef | None = Field(default=None, description="when completed: the stored image (object key, sha256)")
    # When failed, as generation.failed says it (TIMEOUT when content's deadline passed first).
    error_code: str | None = Field(default=None, description="when failed: a WorkerErrorCode or GatewayErrorCode")
    error: str | None = Field(default=None, max_length=2000, description="when failed: what went wrong")
    retryable: bool | None = Field(default=None, description="when failed: whether the same request may succeed")
    finished_at: AwareDatetime


EVENT_PAYLOADS: dict[EventType, type[EventPayload]] = {
    EventType.AVATAR_CREATED: AvatarCreated,
    EventType.AVATAR_UPDATED: AvatarUpdated,
    EventType.AVATAR_DELETED: AvatarDeleted,
    EventType.LORA_READY: LoraReady,
    EventType.LORA_RETIRED: LoraRetired,
    EventType.GENERATION_REQUESTED: GenerationRequested,
    EventType.GENERATION_STARTED: GenerationStarted,
    EventType.GENERATION_COMPLETED: GenerationCompleted,
    EventType.GENERATION_FAILED: GenerationFailed,
    EventType.GENERATION_CANCELED: GenerationCanceled,
    EventType.GENERATION_SUBMIT: GenerationSubmit,
    EventType.GENERATION_ACCEPTED: GenerationAccepted,
    EventType.GENERATION_REJECTED: GenerationRejected,
    EventType.GENERATION_FINISHED: GenerationFinished,
}

# Each payload class belongs to exactly one type, so a payload says which event it is.
EVENT_TYPES: dict[type[EventPayload], EventType] = {model: kind for kind, model in EVENT_PAYLOADS.items()}


def event_type_of(payload: EventPayload) -> EventType:
    """The event type a payload instance is sent as."""
    try:
        return EVENT_TYPES[type(payload)]
    except KeyError:
        raise TypeError(f"{type(payload).__name__} is not an event payload model") from None
