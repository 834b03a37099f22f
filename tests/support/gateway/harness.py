"""Run the real inference gateway in-process against real services, feed it requests, collect its results."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
from aio_pika.abc import AbstractRobustConnection

from contracts.events import (
    EventPayload,
    GenerationCanceled,
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
)
from contracts.object_keys import lora_object_key
from contracts.topology import CONTENT_GENERATION_RESULTS, SERVICE_CONTENT, Topology, event_source
from scripts.stacklib.processes import free_port, start_process, stop, wait_until_ready
from services.common.messaging.broker import Publisher
from services.common.messaging.events import from_message, new_event
from services.common.storage.objects import ObjectStorage
from services.inference_gateway.main import create_app
from services.inference_gateway.settings import DEFAULT_DATABASE_URL, GatewaySettings
from tests.support.gateway.fakes import requested

ROOT = Path(__file__).resolve().parents[2]


def gateway_env(
    rabbitmq_url: str, storage: ObjectStorage, topo: Topology, endpoint_url: str, **env: object
) -> dict[str, str]:
    """The variables of a gateway on this run's topology and bucket, with short backoffs (`env` added last)."""
    values: dict[str, object] = {
        "RABBITMQ_URL": rabbitmq_url,
        "R2_ENDPOINT_URL": storage.config.endpoint_url,
        "R2_ACCESS_KEY_ID": storage.config.access_key_id,
        "R2_SECRET_ACCESS_KEY": storage.config.secret_access_key,
        "R2_BUCKET_NAME": storage.bucket,
        "R2_REGION": storage.config.region,
        "MODAL_ENDPOINT_URL": endpoint_url,
        "VIXEN_TOPOLOGY_PREFIX": topo.prefix,
        "GATEWAY_BACKOFF_BASE_SECONDS": 0.05,
        "GATEWAY_BACKOFF_MAX_SECONDS": 0.2,
        "MODAL_TIMEOUT_SECONDS": 60,
        **env,
    }
    return {name: str(value) for name, value in values.items()}


def gateway_settings(
    rabbitmq_url: str, storage: ObjectStorage, topo: Topology, endpoint_url: str, **env: object
) -> GatewaySettings:
    """Settings for a gateway on this run's topology and bucket, with short backoffs."""
    return GatewaySettings(**gateway_env(rabbitmq_url, storage, topo, endpoint_url, **env))  # type: ignore[arg-type]


async def lora_request(storage: ObjectStorage, data: bytes, *, steps: int) -> GenerationRequested:
    """A new generation's request (64×64) for a LoRA file put in the bucket where identity puts a ready one (the
    content address of its sha256, which the request carries)."""
    sha256 = hashlib.sha256(data).hexdigest()
    key = lora_object_key(sha256)
    await storage.put_bytes(key, data)
    request = requested(str(uuid.uuid4()), lora_key=key, steps=steps)
    assert request.lora is not None
    lora = request.lora.model_copy(update={"sha256": sha256})
    return request.model_copy(update={"lora": lora})


@asynccontextmanager
async def gateway_running(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app with its lifespan running; a client for its HTTP routes. Its job database is a SQLite file
    of its own, removed afterwards, unless the settings name one."""
    with tempfile.TemporaryDirectory(prefix="vb-gateway-") as folder:
        if settings.database_url == DEFAULT_DATABASE_URL:
            settings = settings.model_copy(update={"database_url": f"sqlite+aiosqlite:///{folder}/gateway.db"})
        async with _serving(settings) as client:
            yield client


@asynccontextmanager
async def _serving(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client,
    ):
        yield client


async def publish_request(connection: AbstractRobustConnection, topo: Topology, request: GenerationRequested) -> None:
    """Publish generation.requested as content would."""
    await _publish_as_content(connection, topo, request, request.generation_id)


async def publish_cancel(connection: AbstractRobustConnection, topo: Topology, cancel: GenerationCanceled) -> None:
    """Publish generation.canceled as content would."""
    await _publish_as_content(connection, topo, cancel, cancel.generation_id)


async def _publish_as_content(
    connection: AbstractRobustConnection, topo: Topology, payload: EventPayload, generation_id: str
) -> None:
    publisher = await Publisher.open(connection, topo.events_exchange)
    try:
        event = new_event(
            payload, source=event_source(SERVICE_CONTENT), subject=generation_id, correlation_id=generation_id
        )
        await publisher.publish_event(event)
    finally:
        await publisher.close()


async def results_until_terminal(
    connection: AbstractRobustConnection, topo: Topology, generation_id: str, wait: float = 60.0
) -> list[EventPayload]:
    """The result events of one generation, in order, up to and including completed or failed."""
    channel = await connection.channel()
    try:
        queue = await channel.get_queue(topo.queue(CONTENT_GENERATION_RESULTS).name)
        seen: list[EventPayload] = []
        async with asyncio.timeout(wait):
            while True:
                message = await queue.get(fail=False, no_ack=True)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                _, payload = from_message(message)
                if getattr(payload, "generation_id", None) != generation_id:
                    continue
                seen.append(payload)
                if isinstance(payload, GenerationCompleted | GenerationFailed):
                    return seen
    finally:
        await channel.close()


class ResultLog:
    """Every result event on content's results queue, by generation id, read as they come (several generations
    at once: `results_until_terminal` drops the events of other generations)."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology) -> None:
        self._connection = connection
        self._topo = topo
        self.events: dict[str, list[EventPayload]] = {}
        self.arrived: dict[str, list[float]] = {}

    async def until(
        self,
        generation_id: str,
        kind: type[EventPayload] | tuple[type[EventPayload], ...],
        wait: float = 60.0,
        *,
        count: int = 1,
    ) -> EventPayload:
        """Read the queue until `count` events of `kind` (or of one of the kinds) for the generation are in; the
        last of them."""
        channel = await self._connection.channel()
        try:
            queue = await channel.get_queue(self._topo.queue(CONTENT_GENERATION_RESULTS).name)
            async with asyncio.timeout(wait):
                while True:
                    found = [e for e in self.events.get(generation_id, []) if isinstance(e, kind)]
                    if len(found) >= count:
                        return found[count - 1]
                    message = await queue.get(fail=False, no_ack=True)
                    if message is None:
                        await asyncio.sleep(0.02)
                        continue
                    _, payload = from_message(message)
                    key = str(getattr(payload, "generation_id", ""))
                    self.events.setdefault(key, []).append(payload)
                    self.arrived.setdefault(key, []).append(asyncio.get_running_loop().time())
        finally:
            await channel.close()


@contextmanager
def tiny_worker(model_dir: Path, log_dir: Path) -> Iterator[str]:
    """The real worker (`python -m gpu.serve.server`) on a free port with the tiny model; its generate URL."""
    port = free_port()
    env = {**os.environ, "MODEL_DIR": str(model_dir), "WORKER_MODE": "local", "WORKER_DEVICE": "cpu"}
    env.pop("WORKER_API_KEY", None)
    argv = [sys.executable, "-m", "gpu.serve.server", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--model-dir", str(model_dir)]
    process = start_process("worker", argv, env=env, log_path=log_dir / "worker.log", cwd=ROOT, port=port)
    try:
        wait_until_ready(process, host="127.0.0.1", timeout=120.0, health_path="/healthz")
        yield f"http://127.0.0.1:{port}/generate"
    finally:
        stop(process)
