"""`python -m services.tools.smoke` against the local stack: every hop passes on a working deployment, and a broken one
is named hop by hop (the others still checked), with no secret in the report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from scripts.stacklib import flow
from scripts.stacklib.config import LOCAL_REGION
from scripts.stacklib.runner import LocalStack

pytestmark = pytest.mark.slow
SUBJECT = "smoke-owner"
HOPS = ("storage", "broker", "worker", "generation")


@pytest.fixture(scope="module")
def smoke_env(stack: LocalStack, lora_files: dict[str, Path]) -> dict[str, str]:
    """The deployment's variables, as an operator would set them, and an avatar of SUBJECT with a ready LoRA."""
    urls = stack.urls()
    auth = stack.bearer(SUBJECT)
    with httpx.Client(timeout=60.0) as client:
        avatar_id = flow.create_avatar(client, urls["identity"], auth, name="smoke avatar")
        flow.register_lora(client, urls["identity"], auth, avatar_id, lora_files["a"].read_bytes())
        flow.wait_avatar_ready(client, urls["content"], auth, avatar_id)
    return {
        "PATH": "/usr/bin:/bin",
        "RABBITMQ_URL": stack.config.rabbitmq_url,
        "VIXEN_TOPOLOGY_PREFIX": stack.config.topology_prefix,
        "R2_ENDPOINT_URL": urls["s3"],
        "R2_ACCESS_KEY_ID": stack.config.s3_credentials().access_key_id,
        "R2_SECRET_ACCESS_KEY": stack.config.s3_credentials().secret_access_key,
        "R2_BUCKET_NAME": stack.config.bucket,
        "R2_REGION": LOCAL_REGION,
        "AUTH_JWT_SECRET": stack.config.auth_secret(),
        "SMOKE_SUBJECT": SUBJECT,
        "SMOKE_CONTENT_URL": urls["content"],
        "SMOKE_AVATAR_ID": avatar_id,
        "MODAL_ENDPOINT_URL": f"{urls['worker']}/generate",
    }


def smoke(env: dict[str, str]) -> tuple[int, dict[str, str], str]:
    done = subprocess.run(
        [sys.executable, "-m", "services.tools.smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    lines = {line.split()[1]: line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))}
    return done.returncode, lines, done.stdout + done.stderr


def test_every_hop_of_the_local_stack_passes(smoke_env: dict[str, str]) -> None:
    code, lines, output = smoke(smoke_env)
    assert code == 0, output
    assert list(lines) == list(HOPS) and all(line.startswith("PASS") for line in lines.values()), output
    assert "64×64 PNG downloaded" in lines["generation"]


def test_a_broken_deployment_is_named_hop_by_hop_and_leaks_no_secret(smoke_env: dict[str, str]) -> None:
    broken = {
        **smoke_env,
        "R2_BUCKET_NAME": "no-such-bucket-here",
        "VIXEN_TOPOLOGY_PREFIX": "never-declared",
        "MODAL_ENDPOINT_URL": "http://127.0.0.1:9/generate",  # nothing listens there
    }
    code, lines, output = smoke(broken)
    assert code == 1, output
    assert [hop for hop, line in lines.items() if line.startswith("FAIL")] == ["storage", "broker", "worker"]
    assert "never-declared.vixen.events" in lines["broker"] and "NoSuchBucket" in lines["storage"]
    assert lines["generation"].startswith("PASS")  # the services themselves are fine
    for secret in (smoke_env["AUTH_JWT_SECRET"], smoke_env["R2_SECRET_ACCESS_KEY"]):
        assert secret not in output


def test_incomplete_settings_exit_2_naming_the_variable(smoke_env: dict[str, str]) -> None:
    env = {k: v for k, v in smoke_env.items() if k != "SMOKE_AVATAR_ID"}
    code, lines, output = smoke(env)
    assert code == 2 and "SMOKE_AVATAR_ID" in output and not lines


def test_make_smoke_against_the_local_stack_needs_nothing_set(stack: LocalStack) -> None:
    """`python scripts/stack.py smoke` (what `make smoke` runs) with only the broker's URL, as `make up` had it: the
    stack's URLs, prefix, bucket, S3 key, a token and a ready avatar are read or made from its run folder."""
    env = {"PATH": "/usr/bin:/bin", "RABBITMQ_URL": stack.config.rabbitmq_url}
    done = subprocess.run(
        [sys.executable, "scripts/stack.py", "smoke", "--run-dir", str(stack.config.run_dir)],
        env=env, capture_output=True, text=True, timeout=300, check=False, cwd=stack.config.root,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    passed = [line for line in done.stdout.splitlines() if line.startswith("PASS")]
    assert [line.split()[1] for line in passed] == list(HOPS), output
    assert stack.config.s3_credentials().secret_access_key not in output
