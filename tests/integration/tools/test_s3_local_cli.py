"""`python -m services.tools.s3_local`: prepares its folder and key, becomes `weed` (same PID), serves signed S3
only, and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

import httpx

from services.common.storage.objects import ObjectStorage, StorageConfig
from services.tools.s3_local import CREDENTIALS_FILENAME, LOCAL_REGION, S3Credentials, wait_until_serving


async def test_cli_becomes_weed_serves_signed_requests_only_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.tools.s3_local", "--port", "0", "--run-dir", str(tmp_path),
        "--bucket", "cli-bucket", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        match = re.search(r"on (http://\S+) ", line)
        assert match, line
        endpoint = match.group(1)
        stored = json.loads((tmp_path / CREDENTIALS_FILENAME).read_text())
        assert (tmp_path / CREDENTIALS_FILENAME).stat().st_mode & 0o077 == 0
        assert stored["secret_access_key"] not in line  # where the secret is, never the secret
        credentials = S3Credentials(stored["access_key_id"], stored["secret_access_key"])
        await asyncio.to_thread(wait_until_serving, endpoint, credentials, "cli-bucket")
        # The PID started is weed's own: signals and the stack's records reach the server itself.
        cmdline = (await asyncio.to_thread(Path(f"/proc/{process.pid}/cmdline").read_bytes)).split(b"\0")
        assert Path(cmdline[0].decode()).name == "weed" and cmdline[1] == b"mini"
        store = ObjectStorage(
            StorageConfig(
                endpoint, credentials.access_key_id, credentials.secret_access_key, "cli-bucket", LOCAL_REGION
            )
        )
        await store.put_bytes("hello", b"world")
        assert await store.get_bytes("hello") == b"world"
        await store.close()
        async with httpx.AsyncClient() as client:
            unsigned = await client.get(f"{endpoint}/cli-bucket/hello")
        assert unsigned.status_code == 403, unsigned.text
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
