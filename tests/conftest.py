"""Fixtures shared by all suites: the tiny SDXL on disk, LoRA files for it, a loopback file server."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.file_server import FileServer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight SDXL, built once per run (about a quarter of a second)."""
    from gpu.tiny.model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different LoRAs for the tiny SDXL, and one shaped for SD1.5."""
    from gpu.tiny.lora import write_lora

    folder = tmp_path_factory.mktemp("loras")
    return {
        "a": write_lora(folder / "a.safetensors", seed=1),
        "b": write_lora(folder / "b.safetensors", seed=2),
        "sd15": write_lora(folder / "sd15.safetensors", seed=1, kind="sd15"),
    }


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    server = FileServer().start()
    yield server
    server.stop()
