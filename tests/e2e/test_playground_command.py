"""`scripts/stack.py playground` (`make playground`) on a running stack: a token for the owner and an avatar of theirs
that can generate, made once and found the next time; without a running stack, a clear refusal."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from scripts.stacklib.config import ROOT
from scripts.stacklib.runner import LocalStack

pytestmark = pytest.mark.slow


def playground_command(run_dir: Path, subject: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "scripts/stack.py", "playground", "--run-dir", str(run_dir), "--sub", subject]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def printed(output: str, label: str) -> str:
    found = re.search(rf"^{label}\s+(\S+)", output, re.MULTILINE)
    assert found, output
    return found.group(1)


def test_it_prints_a_token_with_a_ready_avatar_made_once(stack: LocalStack) -> None:
    subject = f"playground-{uuid.uuid4()}"
    first = playground_command(stack.config.run_dir, subject)
    assert first.returncode == 0, first.stderr
    token, avatar_id = printed(first.stdout, "token"), printed(first.stdout, "avatar")
    assert printed(first.stdout, "playground") == f"{stack.urls()['content']}/playground"
    assert "made now" in first.stdout

    listed = httpx.get(
        f"{stack.urls()['content']}/api/v1/content/avatars", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert [(a["id"], a["ready"]) for a in listed.json()["items"]] == [(avatar_id, True)]

    again = playground_command(stack.config.run_dir, subject)
    assert again.returncode == 0, again.stderr
    assert printed(again.stdout, "avatar") == avatar_id and "already there" in again.stdout


def test_without_a_running_stack_it_says_to_start_one(tmp_path: Path) -> None:
    refused = playground_command(tmp_path, "nobody")
    assert refused.returncode == 1
    assert "run `make up` first" in refused.stderr and "token" not in refused.stdout
