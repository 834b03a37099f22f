"""The tiny model and LoRA tools are offline and deterministic for a seed, through their CLI."""

import hashlib
import subprocess
import sys
from pathlib import Path


def digest_tree(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run(*args: str) -> None:
    completed = subprocess.run([sys.executable, "-m", "gpu.tiny", *args], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_model_and_lora_builds_repeat_byte_for_byte(tmp_path: Path) -> None:
    run("model", "--out", str(tmp_path / "m1"))
    run("model", "--out", str(tmp_path / "m2"))
    assert (tmp_path / "m1" / "model_index.json").is_file()
    assert digest_tree(tmp_path / "m1") == digest_tree(tmp_path / "m2")

    run("lora", "--out", str(tmp_path / "a1.safetensors"), "--seed", "4", "--rank", "2")
    run("lora", "--out", str(tmp_path / "a2.safetensors"), "--seed", "4", "--rank", "2")
    run("lora", "--out", str(tmp_path / "b.safetensors"), "--seed", "5", "--rank", "2")
    a1, a2, b = ((tmp_path / n).read_bytes() for n in ("a1.safetensors", "a2.safetensors", "b.safetensors"))
    assert a1 == a2 and a1 != b


def test_lora_cli_refuses_a_bad_rank(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "gpu.tiny", "lora", "--out", str(tmp_path / "x.safetensors"), "--rank", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2 and "--rank" in completed.stderr
