"""The demo: one image of a new avatar with a tiny LoRA, through the public APIs of a running stack."""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from scripts.stacklib import flow
from scripts.stacklib.config import StackConfig
from scripts.stacklib.runner import LocalStack, Say, StackError


@dataclass
class DemoResult:
    """What the demo made and how long each part took."""

    generation_id: str
    image_path: Path
    width: int
    height: int
    generation_time_seconds: float | None
    worker_timings: dict[str, Any] | None
    phases: dict[str, float] = field(default_factory=dict)


def start_lora_writer(config: StackConfig, path: Path, log: Path, seed: int = 1) -> subprocess.Popen[bytes]:
    """Write the tiny LoRA in the background (it loads torch: a few seconds), e.g. while the stack starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:
        return subprocess.Popen(  # noqa: S603 - fixed module, a path we chose
            [config.python, "-m", "gpu.tiny", "lora", "--out", str(path), "--seed", str(seed)],
            cwd=config.root,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def finish_lora_writer(writer: subprocess.Popen[bytes], path: Path, log: Path) -> bytes:
    """Wait for the background LoRA writer; its file's bytes."""
    with flow.step("write a tiny LoRA (python -m gpu.tiny lora)"):
        status = writer.wait(timeout=300)
        if status != 0 or not path.is_file():
            raise RuntimeError(f"exited with status {status}: {log.read_text(errors='replace')[-400:]}")
        return path.read_bytes()


def run_flow(
    stack: LocalStack,
    lora_bytes: bytes,
    out_dir: Path,
    *,
    width: int,
    height: int,
    steps: int,
    timeout: float,
    say: Say,
) -> DemoResult:
    """Avatar → LoRA → generate → wait → download, each step named in a failure."""
    urls = stack.urls()
    identity, content = urls["identity"], urls["content"]
    phases: dict[str, float] = {}
    tail = stack.tail
    owner = f"demo-{uuid.uuid4()}"
    auth = stack.bearer(owner)
    with httpx.Client(timeout=30.0) as client:
        began = time.monotonic()
        with flow.step("create an avatar (identity POST /api/v1/avatars)", "identity", tail):
            avatar_id = flow.create_avatar(client, identity, auth)
        say(f"avatar {avatar_id} created for owner {owner} (a development token signed with .run/auth-dev-secret)")
        with flow.step("register, upload, verify and complete the LoRA (identity)", "identity", tail):
            lora = flow.register_lora(client, identity, auth, avatar_id, lora_bytes)
        say(f"LoRA {lora.lora_id} verified and ready ({len(lora_bytes)} bytes, stored as {lora.object_key})")
        with flow.step("wait until content knows the avatar (GET /api/v1/content/avatars/{id})", "content", tail):
            flow.wait_avatar_ready(client, content, auth, avatar_id)
        phases["avatar_and_lora_s"] = time.monotonic() - began

        began = time.monotonic()
        with flow.step("request a generation (content POST /api/v1/content/generate)", "content", tail):
            accepted = flow.request_generation(
                client, content, auth, avatar_id, width=width, height=height, steps=steps
            )
        generation_id = str(accepted["id"])
        say(f"generation {generation_id} queued ({width}x{height}, {steps} steps, seed {accepted.get('seed')})")
        with flow.step("wait for the generation (content GET /api/v1/content/{id})", "gateway", tail):
            generation = flow.wait_generation(client, content, auth, generation_id, timeout)
        phases["generation_s"] = time.monotonic() - began
        if generation.status != "completed":
            error = generation.body.get("error") or {}
            raise StackError(
                "generation",
                f"{generation_id} {generation.status}: {error.get('error_code')}: {error.get('message')}",
                tail("gateway") + "\n" + tail("worker"),
            )
        with flow.step("download the image (content's image URL)", "s3", tail):
            url = generation.image_url
            if url is None:
                raise ValueError("content shows the generation completed but gives no image URL")
            path = out_dir / f"{generation_id}.png"
            flow.download(client, url, path)
    return DemoResult(
        generation_id=generation_id,
        image_path=path,
        width=width,
        height=height,
        generation_time_seconds=(generation.body.get("timings") or {}).get("worker_seconds"),
        worker_timings=generation.body.get("worker_timings"),
        phases=phases,
    )
