"""The operator's weights command (gpu/modal/weights.py), run here with stand-ins for the Hub and the Volume (neither
is reachable from tests): what lands in the model folder is what the worker's loader reads."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from gpu.modal import weights as modal_weights

BASE_FILES = [
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "text_encoder/model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "tokenizer/vocab.json",
]


class CommittedVolume:
    """Stands in for modal.Volume: counts commits."""

    def __init__(self) -> None:
        self.commits = 0

    def commit(self) -> None:
        self.commits += 1


def fake_hub(downloads: list[tuple[str, list[str]]]) -> Any:
    def snapshot_download(repo: str, *, local_dir: Path, allow_patterns: list[str]) -> str:
        downloads.append((repo, allow_patterns))
        names = (
            BASE_FILES if repo == modal_weights.BASE_REPO else ["config.json", "diffusion_pytorch_model.safetensors"]
        )
        for name in names:
            path = Path(local_dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{repo}:{name}", encoding="utf-8")
        return str(local_dir)

    return snapshot_download


def test_the_model_folder_gets_plain_safetensors_names_the_fp16_vae_and_the_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads: list[tuple[str, list[str]]] = []
    volume = CommittedVolume()
    monkeypatch.setattr(modal_weights, "MODELS_PATH", str(tmp_path))
    monkeypatch.setattr(modal_weights, "weights_volume", volume)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_hub(downloads))

    put = modal_weights.put_weights.local  # the function itself, in this process (Modal warns it has no Volume)
    with pytest.warns(UserWarning, match="executing locally"):
        put()
        again = put()

    model = tmp_path / modal_weights.TARGET
    assert (model / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (model / "text_encoder" / "model.safetensors").is_file()
    assert not list(model.rglob("*.fp16.safetensors")) and not list(model.rglob("*.bin"))
    assert (model / "vae" / "diffusion_pytorch_model.safetensors").read_text() == (
        f"{modal_weights.VAE_REPO}:diffusion_pytorch_model.safetensors"
    )
    assert (model / "BASE_MODEL").read_text().strip() == "sdxl-base-1.0"
    assert [repo for repo, _ in downloads] == [modal_weights.BASE_REPO, modal_weights.VAE_REPO]
    assert all("*.bin" not in patterns and "*.ckpt" not in patterns for _, patterns in downloads)
    assert volume.commits == 1 and "already there" in again


# Run in a fresh interpreter (the Secret is chosen when the module is imported): each Secret the function asks for,
# loaded the way Modal loads it (its own loader, the gRPC stub replaced by a recorder): the request the server gets.
SECRET_REQUESTS = """
import asyncio, json, types
from modal_proto import api_pb2
from gpu.modal import weights as modal_weights
sent = []

class RecordingStub:
    async def SecretGetOrCreate(self, request):
        sent.append(request)
        return api_pb2.SecretGetOrCreateResponse(secret_id="st-test")

context = types.SimpleNamespace(environment_name="main", client=types.SimpleNamespace(_stub=RecordingStub()))
for secret in modal_weights.put_weights._spec_.secrets:  # what `modal shell` reads too (pinned modal 1.6.x)
    asyncio.run(secret._load(secret, None, context, None))
print(json.dumps([[request.deployment_name, list(request.required_keys)] for request in sent]))
"""


def secret_requests(env: dict[str, str]) -> list[list[Any]]:
    done = subprocess.run(
        [sys.executable, "-c", SECRET_REQUESTS],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    requests: list[list[Any]] = json.loads(done.stdout)
    return requests


def test_a_named_hugging_face_secret_is_asked_for_with_hf_token_and_none_otherwise() -> None:
    assert secret_requests({"MODAL_HF_SECRET": " hf-gated "}) == [["hf-gated", ["HF_TOKEN"]]]
    assert secret_requests({}) == []
    assert secret_requests({"MODAL_HF_SECRET": "  "}) == []


def test_a_token_in_the_environment_is_used_and_never_shown(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = "hf_not_a_real_token_0123456789"
    downloads: list[tuple[str, list[str]]] = []
    seen_tokens: list[str | None] = []
    hub = fake_hub(downloads)

    def snapshot_download(repo: str, *, local_dir: Path, allow_patterns: list[str]) -> str:
        seen_tokens.append(os.environ.get("HF_TOKEN"))  # huggingface_hub reads it from here itself
        return str(hub(repo, local_dir=local_dir, allow_patterns=allow_patterns))

    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(modal_weights, "MODELS_PATH", str(tmp_path))
    monkeypatch.setattr(modal_weights, "weights_volume", CommittedVolume())
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    caplog.set_level(logging.DEBUG)

    with pytest.warns(UserWarning, match="executing locally"):
        said = modal_weights.put_weights.local()

    assert seen_tokens == [token, token]
    assert "with a Hugging Face token" in said
    shown = said + caplog.text + "".join(capsys.readouterr())
    assert token not in shown
