"""The fault suite's stack: the whole local stack with a TCP proxy in front of the broker, content's database, S3
and the worker, and what every scenario checks at its end (tests/fault/test_fault_suite.py).

Every service reaches RabbitMQ through one proxy (the stack's RABBITMQ_URL), content reaches PostgreSQL through
another, every service reaches S3 through a third, and the gateway reaches the worker through a fourth: a fault is a
proxy switched down, stalled or answering 503, or a process killed. The gateway runs in async mode, as on Modal:
a gateway that crashes resumes the worker call it had made instead of running it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import httpx
from aio_pika.abc import AbstractIncomingMessage

from contracts.errors import GatewayErrorCode, WorkerErrorCode
from contracts.topology import Topology, topology
from scripts.stacklib import flow
from scripts.stacklib.config import LOCAL_REGION, StackConfig
from scripts.stacklib.runner import LocalStack
from services.common.messaging.broker import connect
from services.common.persistence.db import create_test_database, drop_test_database
from services.common.storage.objects import ObjectStorage, StorageConfig
from services.tools.dlq import QueueCounts, list_counts
from tests.support.queues import delete_run_topology
from tests.support.stack.tcp_proxy import TcpProxy

TERMINAL = frozenset(flow.TERMINAL)
# The codes a failed generation may carry: the worker contract's and the gateway's (contracts/errors.py).
DOCUMENTED_CODES = frozenset(code.value for code in (*WorkerErrorCode, *GatewayErrorCode))
# Consumer retry stages for the suite: 1 + 3 + 8 + 15 + 30 + 60 s outlive a 30 s outage, and an event that first
# failed as an outage began is handled within ~15 s of its end (the defaults, up to 120 s apart, would make the
# suite wait minutes for the same proof).
RETRY_DELAY_SECONDS = (1.0, 3.0, 8.0, 15.0, 30.0, 60.0)
# The gateway's job lease: a killed gateway's jobs are taken over this long after it died.
LEASE_SECONDS = 6
POLL_SECONDS = 0.3
# A header the duplicator puts on its copies, so that it does not copy them again.
COPY_HEADER = "x-vixen-fault-copy"


@dataclass
class Proxies:
    """One proxy per dependency a fault can hit."""

    broker: TcpProxy
    content_db: TcpProxy
    s3: TcpProxy
    worker: TcpProxy

    def all(self) -> list[TcpProxy]:
        return [self.broker, self.content_db, self.s3, self.worker]


@dataclass
class Row:
    """One scenario's line of the fault table."""

    scenario: str
    submitted: int
    completed: int
    failed: Counter[str]
    lost: int
    duplicated_terminal: int
    duplicated_runs: int
    stuck: int
    seconds: float

    HEADER = (
        "scenario",
        "submitted",
        "completed",
        "failed by code",
        "lost",
        "dup. terminal",
        "dup. worker runs",
        "stuck",
        "settled in",
    )

    def cells(self) -> tuple[str, ...]:
        failed = ", ".join(f"{code}×{n}" for code, n in sorted(self.failed.items())) or "-"
        numbers = (self.submitted, self.completed)
        counts = (self.lost, self.duplicated_terminal, self.duplicated_runs, self.stuck)
        return (
            self.scenario,
            *(str(n) for n in numbers),
            failed,
            *(str(n) for n in counts),
            f"{self.seconds:.1f}s",
        )


def render_table(rows: list[Row]) -> list[str]:
    """The rows as aligned text lines, header first."""
    table = [Row.HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(Row.HEADER))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in table]


@dataclass
class FaultStack:
    """The stack, its proxies, the real broker's URL, one owner with a ready avatar, and the scenarios' rows."""

    stack: LocalStack
    proxies: Proxies
    broker_url: str
    auth: dict[str, str] = field(default_factory=dict)
    avatar_id: str = ""
    rows: list[Row] = field(default_factory=list)
    # Every generation this stack completed, across scenarios (an image in the bucket must be one of them).
    completed_ids: set[str] = field(default_factory=set)

    @property
    def topology(self) -> Topology:
        """The run's names, its retry stages the suite's (so that the drain checks see them)."""
        return topology(self.stack.config.topology_prefix, retry_delays=RETRY_DELAY_SECONDS)

    @property
    def content(self) -> str:
        return self.stack.urls()["content"]


def _with_host_port(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def fault_stack(rabbitmq_url: str, pg_admin_url: str, model_dir: Path, run_dir: Path) -> Iterator[FaultStack]:
    """The stack behind its proxies, on fresh databases and topology names; all removed after."""
    prefix = f"fault-{secrets.token_hex(4)}"
    identity_db, content_db = (asyncio.run(create_test_database(pg_admin_url, prefix="vb_fault_")) for _ in range(2))
    config = StackConfig(
        run_dir=run_dir,
        rabbitmq_url=rabbitmq_url,
        topology_prefix=prefix,
        identity_database_url=identity_db.render_as_string(hide_password=False),
        bucket=f"vb-{prefix}",
        model_dir=model_dir,
    ).with_free_ports()
    broker = urlsplit(rabbitmq_url)
    proxies = Proxies(
        broker=TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672, name="broker"),
        content_db=TcpProxy(content_db.host or "127.0.0.1", content_db.port or 5432, name="content-db"),
        s3=TcpProxy(config.host, config.ports["s3"], name="s3"),
        worker=TcpProxy(config.host, config.ports["worker"], name="worker"),
    )
    local: LocalStack | None = None
    try:
        for proxy in proxies.all():
            proxy.start()
        worker_url = f"http://{proxies.worker.host}:{proxies.worker.port}"
        config = replace(
            config,
            rabbitmq_url=_with_host_port(rabbitmq_url, proxies.broker.host, proxies.broker.port),
            content_database_url=content_db.set(
                host=proxies.content_db.host, port=proxies.content_db.port
            ).render_as_string(hide_password=False),
            extra_env={
                "BROKER_RETRY_DELAYS_SECONDS": ",".join(f"{d:g}" for d in RETRY_DELAY_SECONDS),
                "R2_ENDPOINT_URL": f"http://{proxies.s3.host}:{proxies.s3.port}",
                # Many small batches from one owner: admission control is not what this suite measures.
                "CONTENT_SUBMIT_RATE_PER_MINUTE": "6000",
                "CONTENT_SUBMIT_BURST": "200",
                "CONTENT_MAX_IN_FLIGHT": "200",
            },
            service_env={
                "gateway": {
                    "MODAL_ENDPOINT_URL": f"{worker_url}/generate",
                    "MODAL_MODE": "async",
                    "MODAL_POLL_SECONDS": "0.2",
                    "GATEWAY_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
                }
            },
        )
        local = LocalStack(config)
        local.start()
        yield FaultStack(local, proxies, rabbitmq_url)
    finally:
        if local is not None:
            local.stop()
        for proxy in proxies.all():
            proxy.stop()
        asyncio.run(delete_run_topology(rabbitmq_url, prefix, RETRY_DELAY_SECONDS))
        for url in (identity_db, content_db):
            asyncio.run(drop_test_database(pg_admin_url, url))


def avatar_with_lora(stack: LocalStack, auth: dict[str, str], lora: bytes, name: str = "fault avatar") -> str:
    """A new avatar of the owner with a ready LoRA (uploaded through the stack's presigned URL)."""
    urls = stack.urls()
    with httpx.Client(timeout=30.0) as client:
        avatar_id = flow.create_avatar(client, urls["identity"], auth, name=name)
        flow.register_lora(client, urls["identity"], auth, avatar_id, lora)
        flow.wait_avatar_ready(client, urls["content"], auth, avatar_id)
    return avatar_id


async def submit(client: httpx.AsyncClient, fs: FaultStack, count: int, avatar_id: str | None = None) -> list[str]:
    """`count` small generations (64x64, 2 steps), each accepted (202); their ids."""
    ids = []
    for seed in range(count):
        body = {"avatar_id": avatar_id or fs.avatar_id, "prompt": "a portrait of sks person", "width": 64}
        response = await client.post(
            f"{fs.content}/api/v1/content/generate",
            json={**body, "height": 64, "steps": 2, "seed": seed},
            headers=fs.auth,
        )
        assert response.status_code == 202, response.text
        ids.append(str(response.json()["id"]))
    return ids


def log_text(stack: LocalStack, service: str) -> str:
    return stack.log_path(service).read_text(encoding="utf-8", errors="replace")


def images_made(stack: LocalStack, ids: list[str]) -> Counter[str]:
    """Per generation, how many images the worker made for it (its log says so, once per run that made one)."""
    text = log_text(stack, "worker")
    return Counter({i: text.count(f"request {i}: engine run made an image") for i in ids})


def terminal_transitions(stack: LocalStack, ids: list[str]) -> Counter[str]:
    """Per generation, how many times content moved it to a terminal state (its log says so)."""
    text = log_text(stack, "content")
    return Counter(
        {
            i: len(re.findall(rf"generation {i}: generation\.(?:completed|failed) applied", text))
            + text.count(f"generation {i} failed: no result before its deadline")
            for i in ids
        }
    )


async def wait_for_run(stack: LocalStack, ids: list[str], within: float = 60.0) -> None:
    """Until the worker has started a run for one of `ids` (the batch is under way)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = log_text(stack, "worker")
        if any(f"request {i}: engine run started" in text for i in ids):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no run started within {within:.0f}s\n{stack.tail('worker', 30)}")


async def read_all(client: httpx.AsyncClient, fs: FaultStack, ids: list[str]) -> dict[str, flow.Generation | None]:
    """Each generation as content reports it now (None: content does not know it)."""
    found: dict[str, flow.Generation | None] = {}
    for generation_id in ids:
        response = await client.get(f"{fs.content}/api/v1/content/{generation_id}", headers=fs.auth)
        if response.status_code == 404:
            found[generation_id] = None
        else:
            assert response.status_code == 200, response.text
            body = response.json()
            found[generation_id] = flow.Generation(generation_id, str(body["status"]), body)
    return found


async def settle(
    client: httpx.AsyncClient, fs: FaultStack, ids: list[str], within: float
) -> dict[str, flow.Generation | None]:
    """The generations once all are terminal (or unknown), or as they stand after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            seen = await read_all(client, fs, ids)
        except (httpx.HTTPError, AssertionError):
            seen = {}  # content itself may still be coming back: ask again
        settled = len(seen) == len(ids) and all(g is None or g.status in TERMINAL for g in seen.values())
        if settled or time.monotonic() >= deadline:
            return seen
        await asyncio.sleep(POLL_SECONDS)


async def wait_ready(stack: LocalStack, within: float = 60.0) -> list[str]:
    """Until every service answers its readiness probe; the ones that did not."""
    paths = {"worker": "/healthz", "identity": "/readyz", "content": "/readyz", "gateway": "/readyz"}
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            not_ready = []
            for name, path in paths.items():
                try:
                    response = await client.get(f"{stack.config.url(name)}{path}")
                    if response.status_code != 200:
                        not_ready.append(f"{name}: {response.status_code}")
                except httpx.HTTPError as error:
                    not_ready.append(f"{name}: {type(error).__name__}")
            if not not_ready or time.monotonic() >= deadline:
                return not_ready
            await asyncio.sleep(POLL_SECONDS)


async def queue_counts(fs: FaultStack, within: float) -> list[QueueCounts]:
    """The run's queue counts once no consumer queue or retry stage holds a message (or after `within` s), read
    over a connection of its own straight to the broker (the suite's faults do not touch it)."""
    connection = await connect(fs.broker_url, name="vixenbliss-fault-counts")
    try:
        deadline = time.monotonic() + within
        while True:
            counts = await list_counts(connection, fs.topology)
            if all(not c.ready and not c.retrying for c in counts) or time.monotonic() >= deadline:
                return counts
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await connection.close()


async def stored_images(fs: FaultStack) -> set[str]:
    """The generation ids of every image in the bucket (listed from the local S3 endpoint directly, signed)."""
    config = fs.stack.config
    credentials = config.s3_credentials()
    store = ObjectStorage(
        StorageConfig(
            config.url("s3"), credentials.access_key_id, credentials.secret_access_key, config.bucket, LOCAL_REGION
        )
    )
    try:
        keys = await store.keys("generations/")
    finally:
        await store.close()
    return {match.group(1) for key in keys if (match := re.fullmatch(r"generations/([0-9a-f-]+)\.png", key))}


@asynccontextmanager
async def every_event_twice(fs: FaultStack) -> AsyncIterator[Counter[str]]:
    """While open, every event on the run's exchange is published once more, same id and body (a broker or a
    publisher that delivers twice); yields the copies made by routing key."""
    copies: Counter[str] = Counter()
    connection = await connect(fs.broker_url, name="vixenbliss-fault-duplicator")
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(fs.topology.events_exchange)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")

        async def copy(message: AbstractIncomingMessage) -> None:
            async with message.process():
                headers = dict(message.headers or {})
                if COPY_HEADER in headers:
                    return
                again = aio_pika.Message(
                    body=message.body,
                    headers={**headers, COPY_HEADER: "1"},
                    content_type=message.content_type,
                    message_id=message.message_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                await exchange.publish(again, routing_key=message.routing_key or "")
                copies[message.routing_key or ""] += 1

        tag = await queue.consume(copy)
        yield copies
        await queue.cancel(tag)
    finally:
        await connection.close()


async def conclude(
    client: httpx.AsyncClient, fs: FaultStack, scenario: str, ids: list[str], *, since: float, within: float = 120.0
) -> Row:
    """Wait for the batch to settle, add its row to the table, then check what every scenario must end with:
    every accepted generation terminal (completed, or failed with a documented code), one terminal transition and
    at most one image made each, every completed image stored and the one content describes, no image without its
    generation, every queue and retry stage drained, nothing dead-lettered, every service ready and running."""
    stack = fs.stack
    seen = await settle(client, fs, ids, within)
    made, transitions = images_made(stack, ids), terminal_transitions(stack, ids)
    known = {i: g for i, g in seen.items() if g is not None}
    completed = [i for i, g in known.items() if g.status == "completed"]
    row = Row(
        scenario=scenario,
        submitted=len(ids),
        completed=len(completed),
        failed=Counter(str(g.error_code) for g in known.values() if g.status == "failed"),
        lost=sum(1 for i in ids if seen.get(i, "unread") is None),
        duplicated_terminal=sum(1 for i in ids if transitions[i] > 1),
        duplicated_runs=sum(1 for i in ids if made[i] > 1),
        stuck=sum(1 for i in ids if i not in seen or (i in known and known[i].status not in TERMINAL)),
        seconds=time.monotonic() - since,
    )
    fs.rows.append(row)
    fs.completed_ids.update(completed)
    logs = f"\ncontent log:\n{stack.tail('content', 30)}\ngateway log:\n{stack.tail('gateway', 30)}"
    assert (row.lost, row.stuck) == (0, 0), f"{row}{logs}"
    assert (row.duplicated_terminal, row.duplicated_runs) == (0, 0), f"{row} made={made} terminal={transitions}"
    for generation in known.values():
        if generation.status == "failed":
            assert generation.error_code in DOCUMENTED_CODES, generation.body
    for generation_id in completed:
        generation = known[generation_id]
        assert made[generation_id] == 1, (generation_id, made[generation_id])
        assert generation.image_url is not None, generation.body
        image = await client.get(generation.image_url)
        assert image.status_code == 200, (generation_id, image.status_code)
        assert hashlib.sha256(image.content).hexdigest() == generation.body["image"]["sha256"]
    orphans = await stored_images(fs) - fs.completed_ids
    assert not orphans, f"images without a completed generation: {sorted(orphans)}"
    counts = await queue_counts(fs, within=60.0)
    assert all(not c.ready and not c.retrying for c in counts), counts
    assert all(not c.dead for c in counts), [c for c in counts if c.dead]
    assert await wait_ready(stack) == [], logs
    for name, process in stack.processes.items():
        assert process.exited() is None, f"{name} exited with {process.exited()}:\n{stack.tail(name, 40)}"
    return row
