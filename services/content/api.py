"""Content HTTP routes (thin: parse, call the use cases, shape the answer); every route needs the owner's token,
except the event stream, which also takes a signed link."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from contracts.worker import Timings
from services.common.auth import CurrentPrincipal, authenticate
from services.common.auth.dependencies import bearer_scheme
from services.common.http.errors import UnauthorizedError, error_responses
from services.common.http.pagination import DEFAULT_PAGE_SIZE, PageCursor, PageLimit
from services.content.admission import AdmissionLimits
from services.content.cancel import OwnerCancel
from services.content.changes import ChangeHub
from services.content.decisions import StatusStep, seconds_between
from services.content.held_stream import HeldStreamingResponse
from services.content.models import GenerationStatus
from services.content.projection import IdentityProjection
from services.content.reads import GenerationReads, GenerationView
from services.content.schemas import (
    AvatarOut,
    AvatarPage,
    AvatarStatusOut,
    GenerateRequest,
    GenerationErrorOut,
    GenerationEventOut,
    GenerationOut,
    GenerationPage,
    GenerationParamsOut,
    GenerationTimingsOut,
    ImageOut,
    LimitsOut,
    NumberRange,
)
from services.content.signed_links import LinkSigner
from services.content.streams import GenerationWatching, StreamLimitError
from services.content.submit import Submissions
from services.content.watching import (
    generation_events,
    last_event_step,
    preferred_wait,
    stream_lifetime,
    wait_until_terminal,
)

PREFIX = "/api/v1/content"
EVENTS_LINK_PURPOSE = "generation-events"
router = APIRouter(prefix=PREFIX, tags=["content"], responses=error_responses(401, 422))

PreferHeader = Annotated[
    str | None,
    Header(
        max_length=200,
        description="`wait=N` (N ≤ 60): hold the answer until the generation is final or N seconds passed",
    ),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="a retried submit with the same key and body returns the same generation (kept 24 h)",
    ),
]


@dataclass(frozen=True)
class ContentApi:
    """What the routes use, built once by the lifespan (app.state.content)."""

    submissions: Submissions
    reads: GenerationReads
    owner_cancel: OwnerCancel
    projection: IdentityProjection
    hub: ChangeHub
    watching: GenerationWatching
    links: LinkSigner
    limits: AdmissionLimits
    max_wait_seconds: float
    stream_link_ttl_seconds: int


# Async, though it awaits nothing: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request
# (a fifth of content's CPU under a flood of refused streams, by py-spy).
async def get_api(request: Request) -> ContentApi:
    """The use cases and settings the lifespan built."""
    return cast(ContentApi, request.app.state.content)


Api = Annotated[ContentApi, Depends(get_api)]


def generation_out(view: GenerationView, events_url: str | None = None) -> GenerationOut:
    """The API view of a generation."""
    generation = view.generation
    lora: dict[str, Any] = generation.lora or {}
    return GenerationOut(
        id=generation.id,
        status=GenerationStatus(generation.status),
        avatar_id=generation.avatar_id,
        params=GenerationParamsOut(**generation.params, lora_scale=lora.get("scale")),
        seed=generation.seed,
        created_at=generation.created_at,
        started_at=generation.started_at,
        finished_at=generation.finished_at,
        updated_at=generation.updated_at,
        attempts=generation.attempts,
        timings=GenerationTimingsOut(
            queue_wait_seconds=seconds_between(generation.created_at, generation.started_at),
            worker_seconds=generation.generation_time_seconds,
            total_seconds=seconds_between(generation.created_at, generation.finished_at),
        ),
        worker_timings=Timings.model_validate(generation.timings) if generation.timings else None,
        image=_image_out(generation.image, view.image_url),
        error=_error_out(generation.status, generation.error),
        events_url=events_url,
    )


def _image_out(image: dict[str, Any] | None, url: str | None) -> ImageOut | None:
    if image is None or url is None:
        return None
    return ImageOut(
        url=url,
        width=image["width"],
        height=image["height"],
        sha256=image["sha256"],
        size_bytes=image["size_bytes"],
        content_type=image["content_type"],
    )


def _error_out(status: str, error: dict[str, Any] | None) -> GenerationErrorOut | None:
    if error is None or status != GenerationStatus.FAILED.value:
        return None
    return GenerationErrorOut(error_code=error["error_code"], message=error["error"], retryable=error["retryable"])


def _events_url(api: ContentApi, generation_id: uuid.UUID) -> str:
    link = api.links.sign(EVENTS_LINK_PURPOSE, str(generation_id), api.stream_link_ttl_seconds)
    return f"{PREFIX}/{generation_id}/events?{link.query()}"


async def _answer(
    api: ContentApi,
    generation_id: uuid.UUID,
    owner_id: str,
    prefer: str | None,
    response: Response,
    view: GenerationView | None = None,
) -> GenerationOut:
    """The generation (`view`, else read now), after waiting as `Prefer: wait=N` asks; the preference applied is
    said in the answer, and past the caps on open waits the answer comes at once, without it."""
    wait = preferred_wait(prefer, api.max_wait_seconds)
    if wait is not None:
        response.headers["Vary"] = "Prefer"
        waited = await _waited(api, generation_id, owner_id, wait)
        if waited is not None:
            view = waited
            response.headers["Preference-Applied"] = f"wait={wait}"
    if view is None:
        view = await api.reads.get(owner_id, generation_id)
    return generation_out(view, _events_url(api, generation_id))


async def _waited(api: ContentApi, generation_id: uuid.UUID, owner_id: str, seconds: int) -> GenerationView | None:
    """The owner's generation once final or after `seconds`, through the read every waiter of it shares; None when
    a cap on open waits leaves this one out (the caller answers at once: a wait is a preference, not a right)."""
    watching, key = api.watching, str(generation_id)
    try:
        hold = watching.waits.hold(generation=key, owner=owner_id)
    except StreamLimitError:
        return None
    try:
        return await wait_until_terminal(watching.reads, key, watching.reader(key, owner_id, hold), seconds)
    finally:
        hold.release()


# Where the generation a submit answers can be followed (OpenAPI links: a client or a fuzzer chains the calls).
_GENERATION_LINKS = {
    name: {"operationId": operation_id, "parameters": {"generation_id": "$response.body#/id"}}
    for name, operation_id in (("get", "content.get"), ("cancel", "content.cancel"), ("events", "content.events"))
}


@router.post(
    "/generate",
    operation_id="content.generate",
    status_code=202,
    responses={
        202: {
            "description": "the generation, queued (or as it stands after `Prefer: wait`)",
            "links": _GENERATION_LINKS,
        },
        **error_responses(
            404,
            409,
            429,
            described={
                404: "the avatar is unknown, someone else's, or deleted (details.fields names avatar_id)",
                409: "the avatar has no ready LoRA yet",
            },
        ),
    },
)
async def generate(
    body: GenerateRequest,
    principal: CurrentPrincipal,
    api: Api,
    response: Response,
    prefer: PreferHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> GenerationOut:
    """Queue a generation of the caller's avatar (emits generation.requested); 202 with the generation.

    With `Idempotency-Key`, a retry with the same key and body answers the earlier generation
    (`Idempotent-Replayed: true`); with `Prefer: wait=N`, the answer waits for the image up to N seconds."""
    submitted = await api.submissions.submit(principal.subject, body, idempotency_key)
    response.headers["Location"] = f"{PREFIX}/{submitted.view.generation.id}"
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    generation_id = submitted.view.generation.id
    return await _answer(api, generation_id, principal.subject, prefer, response, submitted.view)


@router.get("/limits", operation_id="content.limits")
async def limits(principal: CurrentPrincipal, api: Api) -> LimitsOut:
    """This deployment's bounds on a submit (sizes, steps, the cost budget) and the per-owner limits."""
    del principal  # any authenticated caller may read them
    limits = api.limits
    return LimitsOut(
        min_side=limits.min_side,
        max_side=limits.max_side,
        max_steps=limits.max_steps,
        max_pixel_steps=limits.max_pixel_steps,
        cfg_range=NumberRange(min=0.0, max=30.0),
        lora_scale_range=NumberRange(min=0.0, max=2.0),
        max_prompt_length=2000,
        max_in_flight=limits.max_in_flight,
        submit_rate_per_minute=limits.rate_per_minute,
        submit_burst=limits.burst,
        max_wait_seconds=api.max_wait_seconds,
    )


@router.get("", operation_id="content.list")
async def list_generations(
    principal: CurrentPrincipal,
    api: Api,
    avatar_id: Annotated[uuid.UUID | None, Query(description="only this avatar's")] = None,
    status: Annotated[GenerationStatus | None, Query(description="only generations in this status")] = None,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    cursor: PageCursor = None,
) -> GenerationPage:
    """The caller's generations, newest first; pass `next_cursor` back as `cursor` for the next page."""
    page = await api.reads.list(principal.subject, limit=limit, cursor=cursor, avatar_id=avatar_id, status=status)
    return GenerationPage(items=[generation_out(view) for view in page.items], next_cursor=page.next_cursor)


@router.get("/avatars", operation_id="content.avatars.list")
async def list_avatars(
    principal: CurrentPrincipal, api: Api, limit: PageLimit = DEFAULT_PAGE_SIZE, cursor: PageCursor = None
) -> AvatarPage:
    """The caller's avatars that content knows from identity's events (deleted ones left out), newest first, each
    with whether it can generate now; pass `next_cursor` back as `cursor` for the next page."""
    page = await api.projection.list_avatars(principal.subject, limit=limit, cursor=cursor)
    items = [
        AvatarOut(
            id=status.avatar.id,
            name=status.avatar.name,
            active_lora_id=status.avatar.active_lora_id,
            ready=status.ready,
            created_at=status.avatar.created_at,
        )
        for status in page.items
    ]
    return AvatarPage(items=items, next_cursor=page.next_cursor)


# `/avatars/{avatar_id}` read the same in a document as `/{generation_id}/cancel` (a template either side of one
# literal): the documented path has a segment of its own, and the old one is still served, left out of the document.
@router.get("/avatars/{avatar_id}/status", responses=error_responses(404), operation_id="content.avatars.get")
@router.get("/avatars/{avatar_id}", responses=error_responses(404), include_in_schema=False)
async def avatar_status(avatar_id: uuid.UUID, principal: CurrentPrincipal, api: Api) -> AvatarStatusOut:
    """Whether content has seen the caller's avatar (identity's events) and can generate for it."""
    status = await api.projection.avatar_status(principal.subject, avatar_id)
    return AvatarStatusOut(
        id=status.avatar.id,
        active_lora_id=status.avatar.active_lora_id,
        ready=status.ready,
        deleted=status.avatar.deleted,
    )


@router.get("/{generation_id:uuid}", responses=error_responses(404), operation_id="content.get")
async def get_generation(
    generation_id: uuid.UUID, principal: CurrentPrincipal, api: Api, response: Response, prefer: PreferHeader = None
) -> GenerationOut:
    """A generation's status, parameters, timings, and its image (a fresh URL) or error; `Prefer: wait=N` waits
    for it to finish."""
    return await _answer(api, generation_id, principal.subject, prefer, response)


@router.post(
    "/{generation_id:uuid}/cancel",
    operation_id="content.cancel",
    responses=error_responses(404, 409, described={409: "the generation has already finished"}),
)
async def cancel_generation(generation_id: uuid.UUID, principal: CurrentPrincipal, api: Api) -> GenerationOut:
    """End an unfinished generation as `canceled` at once (emits generation.canceled); a result that still comes
    is discarded and its image deleted."""
    return generation_out(await api.owner_cancel.cancel(principal.subject, generation_id))


def _event_data(view: GenerationView, reached: StatusStep) -> str:
    event = GenerationEventOut(status=reached.status, at=reached.at, generation=generation_out(view))
    return event.model_dump_json()


# The stream is documented as OpenAPI 3.1 documents any body, by what it is: text. (A JSON-object schema here, one
# event's, made openapi-python-client generate `from_dict(response.text)`; the events' form is in the description.)
EVENT_STREAM_DESCRIPTION = (
    "Server-Sent Events, UTF-8 text: first `retry: 2000`, then one event for each status the generation reaches "
    "after `Last-Event-ID`, in order: `event: status`, `id:` 1 (queued), 2 (running) or 3 (final: completed, failed "
    "or canceled), and one `data:` line, a JSON object "
    '`{"status": GenerationStatus, "at": date-time, "generation": GenerationOut}` (the status reached, when, and '
    "the generation as it stands). "
    "A comment line (`: keep-alive`) comes every few seconds while nothing changes. The stream ends after the final "
    "status, or after a few minutes (reconnect with `Last-Event-ID`)."
)


@router.get(
    "/{generation_id:uuid}/events",
    operation_id="content.events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": EVENT_STREAM_DESCRIPTION,
        },
        **error_responses(
            404,
            429,
            described={
                429: "too many open streams on this replica, on this generation or of its owner "
                "(details.reason_code says which; Retry-After)"
            },
        ),
    },
)
async def generation_event_stream(
    generation_id: uuid.UUID,
    request: Request,
    api: Api,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    expires: Annotated[int | None, Query(ge=0, description="from the generation's `events_url`")] = None,
    signature: Annotated[
        str | None, Query(max_length=100, pattern=r"^[A-Za-z0-9_-]+$", description="from `events_url`")
    ] = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=20, description="resume after this event")
    ] = None,
) -> StreamingResponse:
    """The generation's status changes as Server-Sent Events until it is final (a comment every few seconds
    keeps the connection open; after a few minutes the stream ends and the client resumes with Last-Event-ID).
    Authenticated by a bearer token, or by the signed `events_url` for EventSource. Each replica caps the open
    streams per generation, per owner and in all (429 with Retry-After past them)."""
    owner_id: str | None = None
    if signature is not None or expires is not None:
        refusal = api.links.refusal(EVENTS_LINK_PURPOSE, str(generation_id), expires or 0, signature or "")
        if refusal is not None:
            challenge = f'Bearer error="invalid_token", error_description="{refusal}"'
            raise UnauthorizedError(f"not authenticated: {refusal}", headers={"WWW-Authenticate": challenge})
    else:
        owner_id = (await authenticate(request, credentials)).subject

    watching, key = api.watching, str(generation_id)
    # Counted before any read: in all, and for the generation (a signed link is the right to it) or for the owner
    # (a token); the other part once the first read says whose generation it is (404 first for a stranger's).
    hold = watching.streams.hold(generation=key if owner_id is None else None, owner=owner_id)

    stream = generation_events(
        watching.reads,
        key,
        watching.reader(key, owner_id, hold),
        watching.event_data(_event_data),
        after_step=last_event_step(last_event_id),
        heartbeat_seconds=watching.heartbeat_seconds,
        max_seconds=stream_lifetime(watching.max_stream_seconds),
    )
    try:
        first = await anext(stream)  # the first read: a 404 or a 429 now, before the stream starts
    except BaseException:
        hold.release()
        raise
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return HeldStreamingResponse(first, stream, release=hold.release, media_type="text/event-stream", headers=headers)
