"""uv.lock against pyproject.toml, the exports against uv.lock, and what installs them: offline, with the locked uv.
A lock that misses a dependency pyproject.toml declares, or an export that differs from the lock, fails here, naming
`make lock`."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from scripts import lock

ROOT = Path(__file__).resolve().parents[3]


def uv() -> str:
    try:
        return lock.uv_binary()
    except lock.LockError as error:
        pytest.skip(str(error))


def test_the_lock_satisfies_pyproject_and_every_export_is_the_locks() -> None:
    lock.check(uv())


def test_a_dependency_added_to_pyproject_without_relocking_is_refused(tmp_path: Path) -> None:
    """What a merge that adds a test dependency and forgets `make lock` looks like: the check names `make lock`."""
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    pyproject.write_text(
        text.replace('    "pytest>=8",\n', '    "pytest>=8",\n    "yamllint>=1.35",\n'), encoding="utf-8"
    )
    done = subprocess.run(
        [uv(), "lock", "--check", "--offline", "--directory", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    # And the unchanged copy passes, so the refusal above is the added dependency's.
    shutil.copy(ROOT / "pyproject.toml", pyproject)
    done = subprocess.run(
        [uv(), "lock", "--check", "--offline", "--directory", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_an_export_edited_by_hand_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in (
        "uv.lock",
        "pyproject.toml",
        "README.md",
        *(e.path for e in lock.EXPORTS),
        "requirements/local-wheels.sha256",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    services = tmp_path / "requirements" / "services.txt"
    services.write_text(services.read_text(encoding="utf-8").replace("fastapi==", "fastapi==0.0.1\n# was "), "utf-8")
    monkeypatch.setattr(lock, "ROOT", tmp_path)
    monkeypatch.setattr(lock, "LOCK", tmp_path / "uv.lock")
    monkeypatch.setattr(lock, "LOCAL_WHEELS", tmp_path / "requirements" / "local-wheels.sha256")
    assert lock.stale_exports(uv()) == ["requirements/services.txt"]


def requirement_hashes(path: Path) -> dict[str, set[str]]:
    """{name==version: its --hash values} of a hashed requirements file."""
    entries: dict[str, set[str]] = {}
    current = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        found = re.match(r"^([A-Za-z0-9][\w.+-]*==[^\s;\\]+)", line)
        if found:
            current = found.group(1)
            entries[current] = set()
        for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            entries[current].add(digest)
    return entries


@pytest.mark.parametrize("export", lock.EXPORTS, ids=lambda e: e.path)
def test_every_requirement_of_every_export_is_pinned_and_hashed(export: lock.Export) -> None:
    entries = requirement_hashes(ROOT / export.path)
    assert entries
    assert not [name for name, digests in entries.items() if not digests], "pip --require-hashes refuses these"


def test_torch_is_the_cpu_build_at_the_gpu_extras_pin_hashed_as_the_local_wheel() -> None:
    """The +cpu wheel, never the CUDA build from PyPI (no nvidia-* or triton in any export); the digest the exports
    carry is the one recorded for the wheel, and the wheel in /opt/wheels (where there is one) has it."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    (pin,) = [d for d in extras["gpu"] if d.startswith("torch==")]
    recorded = lock.read_digests(lock.LOCAL_WHEELS.read_text(encoding="utf-8"))
    (wheel,) = [name for name in recorded if name.startswith("torch-")]
    for path in ("requirements/dev.txt", "requirements/worker-cpu.txt"):
        entries = requirement_hashes(ROOT / path)
        assert entries[f"{pin}+cpu"] == {recorded[wheel]}, path
    for export in lock.EXPORTS:
        names = {entry.split("==")[0] for entry in requirement_hashes(ROOT / export.path)}
        assert not {n for n in names if n.startswith("nvidia-") or n in {"triton", "pytorch-triton"}}, export.path
    assert "torch" not in {e.split("==")[0] for e in requirement_hashes(ROOT / "requirements/modal-worker.txt")}
    local = Path("/opt/wheels") / wheel
    if local.is_file():
        assert lock.file_sha256(local) == recorded[wheel]


def test_the_services_export_has_no_torch_and_the_dev_export_holds_every_extra() -> None:
    services = {e.split("==")[0] for e in requirement_hashes(ROOT / "requirements/services.txt")}
    assert "torch" not in services and "fastapi" in services
    locked = tomllib.loads(lock.LOCK.read_text(encoding="utf-8"))
    (project,) = [p for p in locked["package"] if p["name"] == "vixenbliss"]
    assert set(project["optional-dependencies"]) == set(lock.DEV_EXTRAS)
    dev = {e.split("==")[0] for e in requirement_hashes(ROOT / "requirements/dev.txt")}
    for extra in lock.DEV_EXTRAS:
        assert {d["name"] for d in project["optional-dependencies"][extra]} <= dev, extra


def test_pin_local_wheels_adds_the_hash_only_to_the_bare_requirement() -> None:
    exported = (
        "torch==2.13.0+cpu ; sys_platform == 'linux'\n    # via peft\n"
        "torchvision==0.1 \\\n    --hash=sha256:" + "1" * 64 + "\n"
    )
    wheels = {"torch==2.13.0+cpu": [Path("/w/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")]}
    pinned = lock.pin_local_wheels(exported, wheels, {wheels["torch==2.13.0+cpu"][0].name: "a" * 64})
    assert pinned.splitlines()[:2] == [
        "torch==2.13.0+cpu ; sys_platform == 'linux' \\",
        "    --hash=sha256:" + "a" * 64,
    ]
    assert pinned.endswith(exported.split("# via peft\n")[1])
    with pytest.raises(lock.LockError, match="make lock"):
        lock.pin_local_wheels(exported, wheels, {})


def test_make_install_checks_the_lock_then_syncs_the_dev_export_with_hashes() -> None:
    """The Makefile's install recipe: the locked tools first, the check, then a hash-checked sync of the export; the
    stamp covers pyproject.toml, the lock and the exports it installs."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(
        r"^LOCKED := pyproject\.toml uv\.lock requirements/tools\.txt requirements/dev\.txt$", makefile, re.M
    )
    assert "STAMP := $(VENV)/.installed-$(shell cat $(LOCKED) | sha256sum" in makefile
    recipe = makefile.split("$(STAMP): $(LOCKED) | $(BIN)/uv\n")[1].split("\n\n")[0]
    steps = [line.strip() for line in recipe.splitlines()]
    assert steps[0] == "$(BIN)/python -m scripts.lock check"
    assert steps[1].startswith("$(BIN)/uv pip sync") and "--require-hashes" in steps[1]
    assert steps[1].endswith("requirements/dev.txt")
    assert "--require-hashes --no-deps -r requirements/tools.txt" in makefile
    assert re.search(r"^lock: \| \$\(BIN\)/uv\n\t\$\(BIN\)/python -m scripts\.lock write", makefile, re.M)


def test_write_hands_every_argument_after_it_to_uv_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make lock LOCK_ARGS="--upgrade-package fastapi"` reaches `uv lock` whole; `check` takes no arguments."""
    seen: list[list[str]] = []
    monkeypatch.setattr(lock, "uv_binary", lambda: "uv")
    monkeypatch.setattr(lock, "write", lambda uv, args: seen.append(list(args)))
    assert lock.main(["write", "--upgrade-package", "fastapi"]) == 0
    assert lock.main(["write"]) == 0
    assert seen == [["--upgrade-package", "fastapi"], []]
    with pytest.raises(SystemExit):
        lock.main(["check", "--upgrade"])
