"""A generation canceled while the worker runs it stops there: the worker makes no image for it and is free for the
next one (the gateway cancels its worker call; the worker stops at the next denoising step)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from scripts.stacklib.runner import LocalStack
from tests.support.stack.fault_stack import avatar_with_lora, images_made, wait_for_run

pytestmark = pytest.mark.slow

# Minutes of denoising on this CPU at full length: only a worker that stops can be free again within the test.
LONG = {"width": 512, "height": 512, "steps": 100}


async def test_a_generation_canceled_mid_run_makes_no_image_and_frees_the_worker(
    stack: LocalStack, lora_files: dict[str, Path]
) -> None:
    content = stack.urls()["content"]
    auth = stack.bearer(f"cancel-{uuid.uuid4()}")
    avatar_id = avatar_with_lora(stack, auth, lora_files["a"].read_bytes())
    body = {"avatar_id": avatar_id, "prompt": "a portrait of sks person", "seed": 3}
    async with httpx.AsyncClient(base_url=content, headers=auth, timeout=90.0) as client:
        long_id = (await client.post("/api/v1/content/generate", json={**body, **LONG})).json()["id"]
        await wait_for_run(stack, [long_id])

        canceled = await client.post(f"/api/v1/content/{long_id}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"

        small = {**body, "width": 64, "height": 64, "steps": 2}
        next_id = (await client.post("/api/v1/content/generate", json=small)).json()["id"]
        done = await client.get(f"/api/v1/content/{next_id}", headers={"Prefer": "wait=60"})
        assert done.json()["status"] == "completed", done.text

    # The worker serves one request at a time: the next one's image means the canceled run has ended, one way or
    # the other, and its log line would be there had it made its image.
    assert images_made(stack, [long_id, next_id]) == {long_id: 0, next_id: 1}
    final = await asyncio.to_thread(httpx.get, f"{content}/api/v1/content/{long_id}", headers=auth)
    assert final.json()["status"] == "canceled" and final.json().get("image") is None
