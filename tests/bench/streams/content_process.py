"""Content as the deployment runs it, `python -m services.content` in a process of its own, for the stream benchmark:
its environment, its readiness, its memory and CPU, its metrics."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.bench.platform.procstats import cpu_seconds, peak_rss_mib
from tests.support.auth import TEST_JWT_SECRET

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


@dataclass(frozen=True)
class ContentProcess:
    """A running content process: its base URL and pid."""

    url: str
    pid: int

    def rss_mib(self) -> float:
        """Resident memory now (VmRSS), MiB."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def peak_rss_mib(self) -> float:
        return peak_rss_mib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def metric(self, name: str) -> float:
        """The sum of a Prometheus sample's series on /metrics (0 when absent: code without that metric)."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ")
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def content_process(
    *, database_url: str, rabbitmq_url: str, prefix: str, log_path: Path, extra_env: Mapping[str, str]
) -> Iterator[ContentProcess]:
    """Content on a free port of 127.0.0.1 until the block ends. Storage is never called (no generation of the
    benchmark completes), so its endpoint is a closed port."""
    port = free_port()
    env = {
        **os.environ,
        "RABBITMQ_URL": rabbitmq_url,
        "VIXEN_TOPOLOGY_PREFIX": prefix,
        "CONTENT_DATABASE_URL": database_url,
        "R2_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "R2_ACCESS_KEY_ID": "bench-access-key",
        "R2_SECRET_ACCESS_KEY": "bench-secret-key-0123456789",
        "R2_BUCKET_NAME": f"vb-{prefix}",
        "R2_REGION": "us-east-1",
        "AUTH_JWT_SECRET": TEST_JWT_SECRET,
        "CONTENT_SUBMIT_RATE_PER_MINUTE": "60000",
        "CONTENT_SUBMIT_BURST": "10000",
        **extra_env,
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.content", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _until_ready(process, url)
            yield ContentProcess(url, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _until_ready(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"content exited with {process.returncode} while starting (see its log)")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # a process offers nothing to wait on but its port: polled until the deadline
    raise TimeoutError(f"content was not ready within {START_TIMEOUT:.0f}s")
