"""The operator's weights command (gpu/modal_weights.py), run here with stand-ins for the Hub and the Volume (neither
is reachable from tests): what lands in the model folder is what the worker's loader reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from gpu import modal_weights

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
