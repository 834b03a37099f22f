"""What the playground needs on a running stack (`python scripts/stack.py playground --sub you`): a token for the
owner and, unless the owner has one already, an avatar with a ready tiny LoRA, made through the public APIs."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from scripts.stacklib import flow
from scripts.stacklib.config import StackConfig
from scripts.stacklib.demo import finish_lora_writer, start_lora_writer
from scripts.stacklib.runner import StackError, read_state

# A working session's length: long enough not to paste a new token every hour.
TOKEN_TTL_SECONDS = 8 * 3600
AVATAR_NAME = "playground avatar"


@dataclass(frozen=True)
class PlaygroundAccess:
    """The page's address, a token for the owner, and the owner's ready avatar (made now or found)."""

    url: str
    token: str
    avatar_id: str
    created: bool


def running_urls(config: StackConfig) -> dict[str, str]:
    """The URLs `up` recorded; StackError when no stack is recorded in this run folder."""
    state = read_state(config.state_file)
    urls = state.get("urls") if state else None
    if not isinstance(urls, dict) or not {"identity", "content"} <= set(urls):
        raise StackError("find the running stack", f"nothing recorded in {config.state_file}: run `make up` first")
    return {str(name): str(url) for name, url in urls.items()}


def tiny_lora(config: StackConfig) -> bytes:
    """The tiny LoRA the local worker can load (the demo's writer: `python -m gpu.tiny lora`, which loads torch)."""
    path = config.run_dir / "playground-lora.safetensors"
    log = config.run_dir / "playground-lora.log"
    return finish_lora_writer(start_lora_writer(config, path, log), path, log)


def ready_avatar(client: httpx.Client, content: str, auth: dict[str, str]) -> str | None:
    """The owner's newest avatar that can generate now, as content sees it."""
    with flow.step("list the owner's avatars", "content"):
        response = client.get(f"{content}/api/v1/content/avatars", params={"limit": 100}, headers=auth)
        response.raise_for_status()
        return next((str(a["id"]) for a in response.json()["items"] if a.get("ready")), None)


def prepare(config: StackConfig, subject: str) -> PlaygroundAccess:
    """A token for `subject` and a ready avatar of theirs (an existing one, else a new one with the tiny LoRA)."""
    from services.common.auth import mint_token

    urls = running_urls(config)
    token = mint_token(config.auth_secret(), subject, ttl_seconds=TOKEN_TTL_SECONDS)
    auth = {"Authorization": f"Bearer {token}"}
    page = f"{urls['content']}/playground"
    with httpx.Client(timeout=30.0) as client:
        found = ready_avatar(client, urls["content"], auth)
        if found is not None:
            return PlaygroundAccess(page, token, found, created=False)
        lora = tiny_lora(config)
        with flow.step("create an avatar with the tiny LoRA", "identity"):
            avatar_id = flow.create_avatar(client, urls["identity"], auth, name=AVATAR_NAME)
            flow.register_lora(client, urls["identity"], auth, avatar_id, lora)
        with flow.step("wait until content can generate for it", "content"):
            flow.wait_avatar_ready(client, urls["content"], auth, avatar_id)
    return PlaygroundAccess(page, token, avatar_id, created=True)
