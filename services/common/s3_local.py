"""A local S3 endpoint (moto's server) for the demo and tests: `python -m services.common.s3_local`.

moto serves presigned PUT/GET but checks neither signatures nor expiry, and it needs region us-east-1
and bucket names of 3+ characters. Nothing here is for production: R2 is.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000
LOCAL_REGION = "us-east-1"


class LocalS3Server:
    """moto's threaded S3 server on host:port (port 0 picks a free one)."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        # Imported here: moto is a dev/test extra, never needed by a service at runtime.
        from moto.server import ThreadedMotoServer

        self._server: Any = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self.host = host
        self.port = port

    def start(self) -> LocalS3Server:
        """Start serving; returns once the socket is bound."""
        self._server.start()
        self.host, self.port = self._server.get_host_and_port()
        return self

    @property
    def endpoint_url(self) -> str:
        """The endpoint URL to give boto3 (R2_ENDPOINT_URL)."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m services.common.s3_local", description=__doc__)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)

    from services.common.logging import setup_logging

    # moto's access log prints each request line, presigned query included: send it through redaction.
    setup_logging("INFO")
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        server = LocalS3Server(args.host, args.port).start()
    except OSError as error:
        print(f"local S3 endpoint could not bind {args.host}:{args.port}: {error}", flush=True)
        return 1
    print(f"local S3 endpoint ready on {server.endpoint_url} (region {LOCAL_REGION})", flush=True)
    stop.wait()
    server.stop()
    print("local S3 endpoint stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
