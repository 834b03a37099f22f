"""The dev secret file and `python -m services.tools.token mint`, run as a developer would run them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt

from services.common.auth import TokenVerifier
from services.tools.dev_secret import ensure_dev_secret
from tests.support.auth_tokens import HS_SECRET

ROOT = Path(__file__).resolve().parents[4]
NO_SECRET_LINE = "no signing secret: set AUTH_JWT_SECRET, or run `make up` first so .run/auth-dev-secret exists"
HEAVY_MODULES = ("sqlalchemy", "aio_pika", "aiormq", "boto3", "botocore", "asyncpg", "aiosqlite")


def mint(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # An explicit environment: nothing from the developer's shell (an AUTH_JWT_SECRET, say) leaks in.
    clean = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "services.tools.token", "mint", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ensure_dev_secret_creates_a_private_256_bit_secret_once(tmp_path: Path) -> None:
    run_dir = tmp_path / ".run"

    secret = ensure_dev_secret(run_dir)

    path = run_dir / "auth-dev-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) >= 43  # token_urlsafe(32): 32 random bytes
    assert ensure_dev_secret(run_dir) == secret
    assert sorted(p.name for p in run_dir.iterdir()) == ["auth-dev-secret"]


def test_ensure_dev_secret_keeps_an_existing_secret(tmp_path: Path) -> None:
    (tmp_path / "auth-dev-secret").write_text(HS_SECRET + "\n")

    assert ensure_dev_secret(tmp_path) == HS_SECRET


def test_launchers_racing_agree_on_one_secret(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        secrets = set(pool.map(lambda _: ensure_dev_secret(tmp_path / ".run"), range(16)))

    assert len(secrets) == 1


async def test_mint_signs_with_the_dev_secret_of_the_current_directory(tmp_path: Path) -> None:
    secret = ensure_dev_secret(tmp_path / ".run")

    result = mint(tmp_path, "--sub", "owner-1")

    assert result.returncode == 0, result.stderr
    principal = await TokenVerifier(hs256_secret=secret).verify(result.stdout.strip())
    assert (principal.subject, principal.is_admin) == ("owner-1", False)
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
    assert not imported & set(HEAVY_MODULES), "the CLI must not need the database or broker libraries"


async def test_mint_prefers_auth_jwt_secret_and_applies_audience_issuer_ttl_admin(tmp_path: Path) -> None:
    ensure_dev_secret(tmp_path / ".run")  # present, but the environment's secret wins
    env = {"AUTH_JWT_SECRET": HS_SECRET, "AUTH_AUDIENCE": "vixen-api", "AUTH_ISSUER": "vixen-dev"}

    result = mint(tmp_path, "--sub", "boss", "--ttl", "120", "--admin", env=env)

    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    verifier = TokenVerifier(hs256_secret=HS_SECRET, audience="vixen-api", issuer="vixen-dev")
    assert (await verifier.verify(token)).is_admin
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["exp"] - payload["iat"] == 120


def test_mint_without_any_secret_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    result = mint(tmp_path, "--sub", "owner-1")

    assert result.returncode == 2
    assert result.stdout == ""
    assert NO_SECRET_LINE in result.stderr.splitlines()


def test_mint_refuses_a_subject_the_services_would_refuse(tmp_path: Path) -> None:
    result = mint(tmp_path, "--sub", "x" * 129, env={"AUTH_JWT_SECRET": HS_SECRET})

    assert result.returncode == 2
    assert "cannot mint a token: the subject is longer than 128 characters" in result.stderr


def test_mint_refuses_a_ttl_beyond_the_maximum_token_lifetime(tmp_path: Path) -> None:
    env = {"AUTH_JWT_SECRET": HS_SECRET}

    refused = mint(tmp_path, "--sub", "owner-1", "--ttl", "86401", env=env)
    shorter = mint(tmp_path, "--sub", "owner-1", "--ttl", "600", env={**env, "AUTH_MAX_TOKEN_LIFETIME_SECONDS": "300"})

    assert refused.returncode == 2 and shorter.returncode == 2
    assert "cannot mint a token: the ttl is longer than the maximum token lifetime (86400 s)" in refused.stderr
    assert "(300 s)" in shorter.stderr
