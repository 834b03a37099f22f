"""The per-owner limits hold across real processes: two `python -m services.content` on one PostgreSQL database,
concurrent submits split between them (test_limits.py shows the same with two apps in one process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
from sqlalchemy.engine import URL

from contracts.topology import Topology
from scripts.stacklib.processes import ManagedProcess, free_port, start_process, stop, wait_until_ready
from services.common.messaging.broker import Publisher
from services.common.storage.objects import ObjectStorage
from tests.support.auth import bearer, new_owner
from tests.support.content.client import GATEWAY, completed, publish, ready_avatar, until
from tests.support.stack.service_fixtures import database_url, service_env

REPO = Path(__file__).resolve().parents[3]
GENERATE = "/api/v1/content/generate"
HOST = "127.0.0.1"


@contextlib.contextmanager
def content_processes(env: dict[str, str], log_dir: Path, count: int = 2) -> Iterator[list[str]]:
    """`count` content processes with the same settings; their base URLs."""
    processes: list[ManagedProcess] = []
    try:
        for index in range(count):
            port = free_port()
            argv = [sys.executable, "-m", "services.content", "--host", HOST, "--port", str(port)]
            process = start_process(
                f"content-{index}", argv, env=env, log_path=log_dir / f"content-{index}.log", cwd=REPO, port=port
            )
            processes.append(process)
        for process in processes:
            wait_until_ready(process, host=HOST, timeout=60.0, health_path="/healthz")
        yield [f"http://{HOST}:{process.port}" for process in processes]
    finally:
        for process in processes:
            stop(process)


async def test_the_in_flight_cap_and_the_submit_rate_hold_across_two_content_processes(
    rabbitmq_url: str,
    storage: ObjectStorage,
    topo: Topology,
    pg_url: URL,
    publisher: Publisher,
    tmp_path: Path,
) -> None:
    settings = {
        **{name: str(value) for name, value in service_env(rabbitmq_url, storage, topo).items() if value is not None},
        "CONTENT_DATABASE_URL": database_url(pg_url),
        "CONTENT_MAX_IN_FLIGHT": "3",
        "CONTENT_SUBMIT_BURST": "4",
        "CONTENT_SUBMIT_RATE_PER_MINUTE": "1",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
    }
    owner = new_owner()
    auth = bearer(owner)
    body_fields = {"prompt": "a portrait", "width": 512, "height": 512, "steps": 4}
    with content_processes(settings, tmp_path) as urls:
        async with httpx.AsyncClient(timeout=30.0) as client:
            async with httpx.AsyncClient(base_url=urls[0], timeout=30.0) as first:
                avatar_id, _ = await ready_avatar(first, publisher, owner, auth)
            body = {"avatar_id": avatar_id, **body_fields}

            async def submit_everywhere(count: int) -> list[httpx.Response]:
                return list(
                    await asyncio.gather(
                        *(client.post(f"{urls[i % 2]}{GENERATE}", json=body, headers=auth) for i in range(count))
                    )
                )

            # The cap: 3 in flight, whichever process takes the submit.
            responses = await submit_everywhere(12)
            accepted = [r.json()["id"] for r in responses if r.status_code == 202]
            refused = [r.json()["details"]["reason_code"] for r in responses if r.status_code == 429]
            assert (len(accepted), refused) == (3, ["TOO_MANY_IN_FLIGHT"] * 9), [r.text for r in responses]

            # All three finish; the bucket (4 at once, then 1 a minute) has one token left for both processes.
            for generation_id in accepted:
                await publish(publisher, completed(generation_id), GATEWAY)
            for generation_id in accepted:
                path = f"{urls[1]}/api/v1/content/{generation_id}"
                await until(client, path, lambda answer: answer["status"] == "completed", auth)
            responses = await submit_everywhere(6)
            assert sorted(r.status_code for r in responses) == [202] + [429] * 5, [r.text for r in responses]
            assert {r.json()["details"]["reason_code"] for r in responses if r.status_code == 429} == {
                "SUBMIT_RATE_LIMITED"
            }
