"""Reading generations: one by id, the owner's keyset-paged lists, and image URLs made at read time."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.http.errors import NotFoundError
from services.common.http.pagination import Cursor, Page, page_of
from services.common.persistence.db import read_session
from services.content import decisions, repository
from services.content.models import Generation, GenerationStatus


class ImageStore(Protocol):
    """What content needs from object storage: image URLs, and deleting an image nobody may see (ObjectStorage)."""

    def public_url(self, key: str) -> str | None: ...

    async def presign_get(self, key: str, ttl_seconds: int) -> str: ...

    async def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class GenerationView:
    """A generation with the download URL of its image (made now, never stored)."""

    generation: Generation
    image_url: str | None


class GenerationReads:
    """Generations as their owners see them; a URL for the image of a completed one, valid for
    CONTENT_IMAGE_URL_TTL_SECONDS."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], images: ImageStore, image_url_ttl_seconds: int
    ) -> None:
        self._sessions = sessions
        self._images = images
        self._image_url_ttl_seconds = image_url_ttl_seconds

    async def get(self, owner_id: str, generation_id: uuid.UUID) -> GenerationView:
        """The owner's generation and, once completed, a URL for its image; 404 for anyone else's."""
        async with read_session(self._sessions) as session:
            generation = await repository.get_generation(session, generation_id)
        if generation is None or generation.owner_id != owner_id:
            raise NotFoundError("unknown generation")
        return await self.view(generation)

    async def get_unchecked(self, generation_id: uuid.UUID) -> GenerationView:
        """A generation by id alone, for a caller that proved its right another way (a signed stream link)."""
        async with read_session(self._sessions) as session:
            generation = await repository.get_generation(session, generation_id)
        if generation is None:
            raise NotFoundError("unknown generation")
        return await self.view(generation)

    async def list(
        self,
        owner_id: str,
        *,
        limit: int,
        cursor: str | None,
        avatar_id: uuid.UUID | None,
        status: GenerationStatus | None,
    ) -> Page[GenerationView]:
        """The owner's generations, newest first, one keyset page at a time."""
        after = Cursor.decode(cursor) if cursor is not None else None
        async with self._sessions() as session:
            rows = await repository.list_generations(
                session,
                owner_id,
                limit=limit + 1,
                after=after,
                avatar_id=str(avatar_id) if avatar_id is not None else None,
                statuses=(status.value,) if status is not None else (),
            )
        page = page_of(rows, limit)
        return Page([await self.view(row) for row in page.items], page.next_cursor)

    async def view(self, generation: Generation) -> GenerationView:
        """The generation as it stands, with its image URL made now."""
        return GenerationView(generation, await self._image_url(generation))

    async def _image_url(self, generation: Generation) -> str | None:
        if not generation.image or GenerationStatus(generation.status) is not GenerationStatus.COMPLETED:
            return None
        key = decisions.image_key(generation)
        return self._images.public_url(key) or await self._images.presign_get(key, self._image_url_ttl_seconds)
