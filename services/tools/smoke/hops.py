"""The hops of a deployment, each checked on its own: object storage, the broker, the worker, one generation."""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from aio_pika.abc import AbstractRobustConnection
from PIL import Image

from services.common.app.runtime import broker_topology
from services.common.messaging.broker import connect, declarations
from services.common.storage.objects import ObjectStorage, StorageConfig
from services.inference_gateway.worker_client.http import auth_headers
from services.tools.smoke.settings import SmokeSettings

SMOKE_PREFIX = "smoke/"


class HopFailedError(Exception):
    """A hop's check failed; the message says what was seen."""


@dataclass(frozen=True)
class HopResult:
    """One line of the report."""

    hop: str
    passed: bool
    seconds: float
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.hop:<10} {1000 * self.seconds:8.0f} ms  {self.detail}"


async def timed(hop: str, check: Callable[[], Awaitable[str]]) -> HopResult:
    """Run one check; any error is its failure, described by type and message (never a traceback)."""
    started = time.perf_counter()
    try:
        detail = await check()
    except Exception as error:
        reason = str(error) if isinstance(error, HopFailedError) else f"{type(error).__name__}: {error}"
        return HopResult(hop, False, time.perf_counter() - started, reason[:300])
    return HopResult(hop, True, time.perf_counter() - started, detail)


async def storage(settings: SmokeSettings) -> str:
    """The bucket answers and takes a write: an object is put, read back and deleted."""
    store = ObjectStorage(StorageConfig.from_settings(settings))
    key = f"{SMOKE_PREFIX}{secrets.token_hex(8)}"
    payload = secrets.token_bytes(64)
    try:
        await store.put_bytes(key, payload, "application/octet-stream")
        if await store.get_bytes(key) != payload:
            raise HopFailedError(f"{key} read back different bytes")
        await store.delete(key)
    finally:
        await store.close()
    return f"bucket {settings.r2_bucket_name} writable"


async def broker(settings: SmokeSettings) -> str:
    """The broker takes a connection and holds the topology: every exchange and queue exists (checked passively,
    so a missing one is reported, never created)."""
    plan = declarations(broker_topology(settings.topology_prefix))
    exchanges = [name for name, _ in plan.exchanges]
    queues = [name for name, _ in plan.queues]
    connection = await connect(settings.rabbitmq_url.get_secret_value(), name="vixenbliss-smoke")
    try:
        missing = [name for name in exchanges if not await _present(connection, name, exchange=True)]
        missing += [name for name in queues if not await _present(connection, name, exchange=False)]
    finally:
        await connection.close()
    if missing:
        raise HopFailedError("missing: " + ", ".join(missing))
    return f"{len(exchanges) + len(queues)} exchanges and queues present"


async def _present(connection: AbstractRobustConnection, name: str, *, exchange: bool) -> bool:
    """Whether the exchange or queue exists: a passive declare on a channel of its own (a missing one closes it)."""
    channel = await connection.channel()
    try:
        if exchange:
            await channel.get_exchange(name, ensure=True)
        else:
            await channel.get_queue(name, ensure=True)
    except Exception:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()
    return True


async def worker(settings: SmokeSettings) -> str:
    """The worker's endpoint answers with its credentials: an empty request is refused as the contract says
    (422 INVALID_REQUEST), which the submit endpoint does without starting a GPU."""
    url = settings.modal_submit_url or settings.modal_endpoint_url or ""
    key = settings.modal_api_key.get_secret_value() if settings.modal_api_key else None
    token = settings.modal_api_token.get_secret_value() if settings.modal_api_token else None
    async with httpx.AsyncClient(timeout=60.0, follow_redirects=False) as client:
        response = await client.post(url, json={}, headers=auth_headers(key, token))
    code = _error_code(response)
    if response.status_code != 422 or code != "INVALID_REQUEST":
        raise HopFailedError(f"expected 422 INVALID_REQUEST, got {response.status_code} {code or ''}".strip())
    return f"{httpx.URL(url).host} answers the contract"


async def generation(settings: SmokeSettings) -> str:
    """One generation through the public API, its image downloaded and decoded at the size asked for."""
    size = settings.width
    body = {
        "avatar_id": settings.avatar_id,
        "prompt": "smoke test portrait",
        "width": size,
        "height": size,
        "steps": settings.steps,
        "seed": secrets.randbelow(2**31),
    }
    headers = {"Authorization": f"Bearer {settings.bearer()}", "Prefer": f"wait={settings.wait_seconds}"}
    base = settings.content_url.rstrip("/")
    async with httpx.AsyncClient(timeout=settings.wait_seconds + 30.0) as client:
        response = await client.post(f"{base}/api/v1/content/generate", json=body, headers=headers)
        if response.status_code != 202:
            raise HopFailedError(f"submit answered {response.status_code} {_error_code(response) or ''}".strip())
        answer = response.json()
        generation_id, status = answer.get("id"), answer.get("status")
        if status != "completed":
            error = answer.get("error") or {}
            detail = error.get("error_code") or f"still {status} after {settings.wait_seconds} s"
            raise HopFailedError(f"generation {generation_id}: {detail}")
        image_url = (answer.get("image") or {}).get("url")
        if not image_url:
            raise HopFailedError(f"generation {generation_id} completed without an image URL")
        image = await client.get(image_url)
    if image.status_code != 200:
        raise HopFailedError(f"image download answered {image.status_code}")
    with Image.open(io.BytesIO(image.content)) as decoded:
        decoded.load()
        if decoded.size != (size, size):
            raise HopFailedError(f"image is {decoded.size[0]}×{decoded.size[1]}, asked {size}×{size}")
    return f"generation {generation_id} completed, {size}×{size} PNG downloaded"


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return str(body.get("error_code")) if isinstance(body, dict) and body.get("error_code") else None
