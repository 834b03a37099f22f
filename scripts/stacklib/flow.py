"""The public-API path of one generation: avatar → LoRA upload → content generate → poll → download."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from scripts.stacklib.runner import StackError

TERMINAL = ("completed", "failed", "canceled")
# The base model of the tiny random SDXL the local worker serves (gpu.tiny.model.TINY_BASE_MODEL).
TINY_BASE_MODEL = "tiny-sdxl-random"
# An Authorization header: {"Authorization": "Bearer <jwt>"}.
Headers = dict[str, str]


@dataclass(frozen=True)
class Lora:
    """A LoRA registered with identity."""

    lora_id: str
    avatar_id: str
    object_key: str
    sha256: str | None = None


@dataclass
class Generation:
    """A finished generation as content reports it."""

    id: str
    status: str
    body: dict[str, Any] = field(repr=False)

    @property
    def image_url(self) -> str | None:
        """The URL of the PNG (completed only)."""
        image = self.body.get("image")
        return str(image["url"]) if isinstance(image, dict) and image.get("url") else None

    @property
    def error_code(self) -> str | None:
        """The error code (failed only)."""
        error = self.body.get("error")
        return str(error["error_code"]) if isinstance(error, dict) and error.get("error_code") else None


@contextmanager
def step(name: str, service: str | None = None, tail: Callable[[str], str] | None = None) -> Iterator[None]:
    """Run a step; any failure becomes a StackError naming the step, with the service's log tail."""
    try:
        yield
    except StackError:
        raise
    except Exception as error:
        detail = tail(service) if tail and service else ""
        raise StackError(name, _describe(error), detail) from None


def _describe(error: Exception) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        response = error.response
        request = response.request
        return f"{request.method} {request.url.path} answered {response.status_code}: {response.text[:300]}"
    if isinstance(error, httpx.HTTPError):
        return f"{type(error).__name__}: {error}"
    return str(error) or type(error).__name__


def _ok(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    if response.status_code not in statuses:
        response.raise_for_status()
        raise httpx.HTTPStatusError(
            f"unexpected status {response.status_code}", request=response.request, response=response
        )
    body = response.json()
    if not isinstance(body, dict):
        raise ValueError(f"{response.request.url.path} answered a JSON {type(body).__name__}, not an object")
    return body


def create_avatar(client: httpx.Client, identity: str, auth: Headers, name: str = "demo avatar") -> str:
    """POST /api/v1/avatars as the token's owner → the avatar id."""
    body = _ok(client.post(f"{identity}/api/v1/avatars", json={"name": name}, headers=auth), 201)
    return str(body["id"])


def register_lora(
    client: httpx.Client,
    identity: str,
    auth: Headers,
    avatar_id: str,
    data: bytes,
    scale: float = 0.8,
    base_model: str = TINY_BASE_MODEL,
) -> Lora:
    """Register a LoRA version, PUT its bytes to the presigned URL, and complete it (verified, immutable)."""
    registered = _ok(
        client.post(
            f"{identity}/api/v1/avatars/{avatar_id}/loras",
            json={"default_scale": scale, "trigger_words": ["sks"], "size_bytes": len(data), "base_model": base_model},
            headers=auth,
        ),
        201,
    )
    upload = client.put(str(registered["upload_url"]), content=data)
    if upload.status_code not in (200, 204):
        raise ValueError(f"PUT to the presigned upload URL answered {upload.status_code}")
    completed = _ok(client.post(f"{identity}/api/v1/loras/{registered['lora_id']}/complete", headers=auth), 200)
    if completed.get("status") != "ready":
        raise ValueError(f"LoRA is {completed.get('status')!r} after complete, not 'ready'")
    return Lora(
        lora_id=str(registered["lora_id"]),
        avatar_id=avatar_id,
        object_key=str(completed["object_key"]),
        sha256=str(completed.get("sha256")),
    )


def wait_avatar_ready(
    client: httpx.Client, content: str, auth: dict[str, str], avatar_id: str, timeout: float = 30.0
) -> None:
    """Poll content until identity's events made the avatar ready there."""
    deadline = time.monotonic() + timeout
    last = "not known yet"
    while time.monotonic() < deadline:
        response = client.get(f"{content}/api/v1/content/avatars/{avatar_id}", headers=auth)
        if response.status_code == 200:
            if response.json().get("ready") is True:
                return
            last = "known but not ready"
        elif response.status_code != 404:
            _ok(response, 200)
        time.sleep(0.2)
    raise TimeoutError(f"content did not see avatar {avatar_id} become ready within {timeout:.0f}s ({last})")


def request_generation(
    client: httpx.Client,
    content: str,
    auth: dict[str, str],
    avatar_id: str,
    *,
    prompt: str = "a portrait of sks person, studio light",
    width: int = 64,
    height: int = 64,
    steps: int = 3,
    seed: int = 42,
) -> dict[str, Any]:
    """POST /api/v1/content/generate; the 202 body, the queued generation (HTTPStatusError on a refusal)."""
    body = {
        "avatar_id": avatar_id,
        "prompt": prompt,
        "negative_prompt": "blurry",
        "width": width,
        "height": height,
        "steps": steps,
        "cfg": 5.0,
        "seed": seed,
        "lora_scale": 0.8,
    }
    return _ok(client.post(f"{content}/api/v1/content/generate", json=body, headers=auth), 202)


def wait_generation(
    client: httpx.Client, content: str, auth: dict[str, str], generation_id: str, timeout: float = 120.0
) -> Generation:
    """Wait for GET /api/v1/content/{id} to be final, with `Prefer: wait` (the server holds each answer until the
    generation finishes or the wait runs out), asking again until `timeout`."""
    deadline = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < deadline:
        wait = max(1, min(30, int(deadline - time.monotonic())))
        headers = {**auth, "Prefer": f"wait={wait}"}
        body = _ok(client.get(f"{content}/api/v1/content/{generation_id}", headers=headers, timeout=wait + 30), 200)
        status = str(body.get("status"))
        if status in TERMINAL:
            return Generation(generation_id, status, body)
    raise TimeoutError(f"generation {generation_id} still {status!r} after {timeout:.0f}s")


def download(client: httpx.Client, url: str, path: Path) -> bytes:
    """GET the image URL into `path`; its bytes."""
    response = client.get(url)
    if response.status_code != 200:
        raise ValueError(f"image download answered {response.status_code}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(response.content)
    return response.content
