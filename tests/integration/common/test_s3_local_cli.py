"""`python -m services.common.s3_local`: starts, says when ready, serves S3, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

from services.common.s3_local import LOCAL_REGION
from services.common.storage import ObjectStorage, StorageConfig


async def test_cli_serves_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.common.s3_local", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        match = re.search(r"ready on (http://\S+)", line)
        assert match, line
        store = ObjectStorage(StorageConfig(match.group(1), "k", "s", "cli-bucket", region=LOCAL_REGION))
        await store.ensure_bucket()
        await store.put_bytes("hello", b"world")
        assert await store.get_bytes("hello") == b"world"
        await store.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
