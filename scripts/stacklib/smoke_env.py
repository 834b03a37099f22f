"""The smoke test's variables for the stack `make up` started (`make smoke` with no SMOKE_CONTENT_URL set): its
URLs, its topology prefix, its S3 key, a token and a ready avatar of the smoke test's own owner. Nothing to set."""

from __future__ import annotations

from collections.abc import Mapping

from scripts.stacklib.config import LOCAL_REGION, StackConfig
from scripts.stacklib.playground import prepare, running_urls
from scripts.stacklib.runner import read_state

SMOKE_SUBJECT = "smoke-test"


def local_smoke_env(config: StackConfig, env: Mapping[str, str]) -> dict[str, str]:
    """`env` with every variable the smoke test reads set for the running local stack (StackError when none runs)."""
    urls = running_urls(config)
    state = read_state(config.state_file) or {}
    access = prepare(config, SMOKE_SUBJECT)
    credentials = config.s3_credentials()
    return {
        **env,
        "RABBITMQ_URL": config.rabbitmq_url,
        "VIXEN_TOPOLOGY_PREFIX": str(state.get("topology_prefix", "")),
        "R2_ENDPOINT_URL": urls["s3"],
        "R2_ACCESS_KEY_ID": credentials.access_key_id,
        "R2_SECRET_ACCESS_KEY": credentials.secret_access_key,
        "R2_BUCKET_NAME": str(state.get("bucket", config.bucket)),
        "R2_REGION": LOCAL_REGION,
        "SMOKE_CONTENT_URL": urls["content"],
        "SMOKE_AVATAR_ID": access.avatar_id,
        "SMOKE_TOKEN": access.token,
        "MODAL_ENDPOINT_URL": f"{urls['worker']}/generate",
    }
