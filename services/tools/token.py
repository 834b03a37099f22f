"""`python -m services.tools.token mint --sub OWNER [--ttl S] [--admin]`: print a development token."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from services.common.auth.claims import DEFAULT_MAX_TOKEN_LIFETIME_SECONDS
from services.common.auth.settings import DEFAULT_ROLES_CLAIM
from services.common.auth.tokens import mint_token
from services.tools.dev_secret import DEV_SECRET_FILENAME, read_dev_secret

# Relative on purpose: run from the project root, the CLI signs with the secret `make up` gave the stack.
RUN_DIR = Path(".run")
NO_SECRET = f"no signing secret: set AUTH_JWT_SECRET, or run `make up` first so {RUN_DIR / DEV_SECRET_FILENAME} exists"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.tools.token", description="VixenBliss auth tools")
    commands = parser.add_subparsers(dest="command", required=True)
    mint = commands.add_parser(
        "mint", help=f"print an HS256 token signed with AUTH_JWT_SECRET, else {RUN_DIR / DEV_SECRET_FILENAME}"
    )
    mint.add_argument("--sub", required=True, help="the owner id the token speaks for")
    mint.add_argument(
        "--ttl",
        type=int,
        default=3600,
        help="seconds until it expires (default 3600; at most AUTH_MAX_TOKEN_LIFETIME_SECONDS, default 86400)",
    )
    mint.add_argument("--admin", action="store_true", help="grant the admin role")
    args = parser.parse_args(argv)

    secret = _env("AUTH_JWT_SECRET") or read_dev_secret(RUN_DIR)
    if secret is None:
        print(NO_SECRET, file=sys.stderr)
        return 2
    try:
        max_lifetime = int(_env("AUTH_MAX_TOKEN_LIFETIME_SECONDS") or DEFAULT_MAX_TOKEN_LIFETIME_SECONDS)
        token = mint_token(
            secret,
            args.sub,
            ttl_seconds=args.ttl,
            admin=args.admin,
            audience=_env("AUTH_AUDIENCE"),
            issuer=_env("AUTH_ISSUER"),
            roles_claim=_env("AUTH_ROLES_CLAIM") or DEFAULT_ROLES_CLAIM,
            max_lifetime_seconds=max_lifetime,
        )
    except ValueError as error:
        print(f"cannot mint a token: {error}", file=sys.stderr)
        return 2
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
