"""Reading generations: get, keyset-paged lists and their filters, ownership, and image URLs made at read time."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from contracts.object_keys import generation_image_key
from services.common.http.errors import InvalidRequestError, NotFoundError
from services.content.models import GenerationStatus
from services.content.reads import GenerationReads
from tests.support.content.harness import (
    OTHER,
    OWNER,
    URL_TTL,
    Generations,
    Harness,
    _completed,
    _ready_avatar,
    _result,
    _submit,
)

# --- read -------------------------------------------------------------------------------------------------------


async def test_someone_elses_or_an_unknown_generation_is_a_404(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)

    for owner_id, generation_id in ((OTHER, generation.id), (OWNER, uuid.uuid4())):
        with pytest.raises(NotFoundError):
            await generations.reads.get(owner_id, generation_id)
    assert (await generations.reads.get(OWNER, generation.id)).generation.id == generation.id


async def test_get_unchecked_reads_any_generation_but_not_a_missing_one(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h, owner_id=OTHER)
    generation = await _submit(generations.submissions, avatar_id, owner_id=OTHER)

    assert (await generations.reads.get_unchecked(generation.id)).generation.owner_id == OTHER
    with pytest.raises(NotFoundError):
        await generations.reads.get_unchecked(uuid.uuid4())


async def test_a_completed_generation_gets_a_presigned_url_made_at_read_time(
    h: Harness, generations: Generations
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    assert (await generations.reads.get(OWNER, generation.id)).image_url is None

    await generations.results.apply(*_result(_completed(generation.id)))
    view = await generations.reads.get(OWNER, generation.id)

    key = generation_image_key(generation.id)
    assert view.generation.status == "completed"
    assert view.image_url is not None and key in view.image_url
    assert h.images.signed == [(key, URL_TTL)]
    await generations.reads.get(OWNER, generation.id)
    assert h.images.signed == [(key, URL_TTL)] * 2  # a fresh one each time, never stored


async def test_a_public_bucket_url_is_used_instead_of_signing(h: Harness) -> None:
    h.images.public = "https://cdn.example"
    generations = h.generations()
    avatar_id, _ = await _ready_avatar(h)
    generation = await _submit(generations.submissions, avatar_id)
    await generations.results.apply(*_result(_completed(generation.id)))

    view = await generations.reads.get(OWNER, generation.id)

    assert view.image_url == f"https://cdn.example/generations/{generation.id}.png"
    assert h.images.signed == []


# --- list -------------------------------------------------------------------------------------------------------


async def _pages(reads: GenerationReads, owner_id: str, limit: int, **filters: Any) -> list[list[uuid.UUID]]:
    pages: list[list[uuid.UUID]] = []
    cursor: str | None = None
    while True:
        page = await reads.list(
            owner_id,
            limit=limit,
            cursor=cursor,
            avatar_id=filters.get("avatar_id"),
            status=filters.get("status"),
        )
        pages.append([view.generation.id for view in page.items])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor
        assert len(pages) < 20, "the cursor does not advance"


async def test_the_list_pages_through_the_owners_generations_newest_first(h: Harness, generations: Generations) -> None:
    mine, _ = await _ready_avatar(h, owner_id=OWNER)
    theirs, _ = await _ready_avatar(h, owner_id=OTHER)
    created = []
    for _ in range(5):
        h.clock.advance(1)
        created.append((await _submit(generations.submissions, mine)).id)
        await _submit(generations.submissions, theirs, owner_id=OTHER)

    pages = await _pages(generations.reads, OWNER, limit=2)

    assert pages == [created[4:2:-1], created[2:0:-1], created[:1]]


async def test_the_list_ends_without_a_cursor_when_the_last_page_is_full(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    for _ in range(4):
        h.clock.advance(1)
        await _submit(generations.submissions, avatar_id)

    pages = await _pages(generations.reads, OWNER, limit=2)

    assert [len(page) for page in pages] == [2, 2]


async def test_generations_created_at_the_same_instant_are_each_listed_once(
    h: Harness, generations: Generations
) -> None:
    avatar_id, _ = await _ready_avatar(h)
    created = {(await _submit(generations.submissions, avatar_id)).id for _ in range(5)}  # the clock stands still

    pages = await _pages(generations.reads, OWNER, limit=2)

    listed = [generation_id for page in pages for generation_id in page]
    assert sorted(listed) == sorted(created)
    assert listed == sorted(listed, reverse=True)  # ties broken by id, newest (largest) first


async def test_the_list_filters_by_avatar_and_by_status(h: Harness, generations: Generations) -> None:
    first, _ = await _ready_avatar(h)
    second, _ = await _ready_avatar(h)
    a1 = await _submit(generations.submissions, first)
    h.clock.advance(1)
    a2 = await _submit(generations.submissions, first)
    h.clock.advance(1)
    b1 = await _submit(generations.submissions, second)
    await generations.results.apply(*_result(_completed(a1.id)))
    await generations.owner_cancel.cancel(OWNER, b1.id)

    assert await _pages(generations.reads, OWNER, limit=10, avatar_id=first) == [[a2.id, a1.id]]
    assert await _pages(generations.reads, OWNER, limit=10, avatar_id=second) == [[b1.id]]
    assert await _pages(generations.reads, OWNER, limit=10, status=GenerationStatus.QUEUED) == [[a2.id]]
    assert await _pages(generations.reads, OWNER, limit=10, status=GenerationStatus.CANCELED) == [[b1.id]]
    assert await _pages(generations.reads, OWNER, limit=10, avatar_id=second, status=GenerationStatus.QUEUED) == [[]]
    assert await _pages(generations.reads, OTHER, limit=10) == [[]]


@pytest.mark.parametrize("cursor", ["not-a-cursor", "e30", "W10", "eyJ0IjoiMjAyNi0wMS0wMSIsImlkIjoiMSJ9", "!!!", ""])
async def test_a_cursor_this_api_did_not_return_is_a_422_naming_cursor(generations: Generations, cursor: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await generations.reads.list(OWNER, limit=10, cursor=cursor, avatar_id=None, status=None)

    assert [f.field for f in caught.value.fields] == ["cursor"]


async def test_a_tampered_cursor_is_a_422(h: Harness, generations: Generations) -> None:
    avatar_id, _ = await _ready_avatar(h)
    for _ in range(3):
        h.clock.advance(1)
        await _submit(generations.submissions, avatar_id)
    page = await generations.reads.list(OWNER, limit=1, cursor=None, avatar_id=None, status=None)
    assert page.next_cursor is not None

    tampered = page.next_cursor[: len(page.next_cursor) // 2]
    with pytest.raises(InvalidRequestError) as caught:
        await generations.reads.list(OWNER, limit=1, cursor=tampered, avatar_id=None, status=None)

    assert [f.field for f in caught.value.fields] == ["cursor"]
