"""The real tiny worker as a subprocess, shared by the gateway's integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway.harness import tiny_worker


@pytest.fixture(scope="session")
def worker_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m gpu.serve.server` with the tiny model on a free port (about 5 s to start); its generate URL."""
    with tiny_worker(tiny_model_dir, tmp_path_factory.mktemp("worker")) as url:
        yield url
