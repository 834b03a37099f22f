"""Real downloads over loopback HTTP: status codes, caps while streaming, timeouts, redirects."""

import socket
import time

import pytest

from contracts.errors import WorkerErrorCode
from gpu.engine.errors import WorkerFailure
from gpu.engine.lora.download import DownloadPolicy, download
from tests.support.file_server import FileServer, Route

LOCAL = DownloadPolicy(mode="local", max_bytes=1024 * 1024, total_timeout_seconds=5.0)


def failure_of(url: str, policy: DownloadPolicy = LOCAL) -> WorkerFailure:
    with pytest.raises(WorkerFailure) as caught:
        download(url, policy)
    assert caught.value.code == WorkerErrorCode.LORA_DOWNLOAD_FAILED
    return caught.value


def test_downloads_the_bytes(file_server: FileServer) -> None:
    url = file_server.add("/k", b"x" * 5000)
    assert download(url + "?X-Amz-Signature=abc", LOCAL) == b"x" * 5000


@pytest.mark.parametrize(("status", "reason"), [(403, "expired"), (404, "not found"), (500, "unexpected")])
def test_http_errors_are_download_failures_without_the_signature(
    file_server: FileServer, status: int, reason: str
) -> None:
    url = file_server.add("/k", Route(body=b"<Error/>", status=status))
    failure = failure_of(url + "?X-Amz-Signature=topsecret")
    assert failure.details["status"] == status and reason in failure.message
    assert "topsecret" not in repr(failure.details) + failure.message


def test_unreachable_host_is_a_download_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    failure = failure_of(f"http://127.0.0.1:{port}/k")  # nothing listens there now
    assert "unreachable" in failure.message


def test_declared_size_over_the_cap_is_refused_before_the_body(file_server: FileServer) -> None:
    url = file_server.add("/big", Route(body=b"x" * (2 * 1024 * 1024)))
    failure = failure_of(url)
    assert failure.details["bytes"] == 2 * 1024 * 1024


def test_undeclared_size_is_cut_off_while_streaming(file_server: FileServer) -> None:
    total = 8 * 1024 * 1024
    route = Route(body=b"x" * total, declared_length=-1, chunk_bytes=64 * 1024, chunk_delay_seconds=0.001)
    url = file_server.add("/stream", route)
    failure = failure_of(url)
    assert failure.details["received_bytes"] > LOCAL.max_bytes
    time.sleep(0.2)
    # The client hung up soon after the cap: far from all of the body was sent.
    assert file_server.bytes_sent["/stream"] < total // 2


def test_a_lying_small_content_length_is_still_capped(file_server: FileServer) -> None:
    route = Route(body=b"x" * (3 * 1024 * 1024), declared_length=-1, chunk_bytes=256 * 1024)
    failure = failure_of(file_server.add("/liar", route))
    assert failure.details["max_bytes"] == LOCAL.max_bytes


def test_a_slow_server_hits_the_total_timeout(file_server: FileServer) -> None:
    route = Route(body=b"x" * 100, chunk_bytes=1, chunk_delay_seconds=0.05)
    policy = DownloadPolicy(mode="local", total_timeout_seconds=0.5)
    started = time.monotonic()
    failure = failure_of(file_server.add("/slow", route), policy)
    assert "timed out" in failure.message
    assert time.monotonic() - started < 3


def test_redirect_on_the_same_host_is_followed(file_server: FileServer) -> None:
    file_server.add("/real", b"payload")
    url = file_server.add("/moved", Route(status=302, headers={"Location": "/real"}))
    assert download(url, LOCAL) == b"payload"


def test_redirect_to_another_host_is_refused(file_server: FileServer) -> None:
    other = f"http://localhost:{file_server.port}/real"  # loopback, but another host name
    file_server.add("/real", b"payload")
    url = file_server.add("/moved", Route(status=302, headers={"Location": other}))
    failure = failure_of(url)
    assert failure.details["redirect_host"] == "localhost"
    assert file_server.requests["/real"] == 0


def test_production_mode_refuses_plain_http_without_connecting(file_server: FileServer) -> None:
    url = file_server.add("/k", b"payload")
    production = DownloadPolicy(mode="production", allowed_hosts=("127.0.0.1",))
    assert "https" in failure_of(url, production).message
    assert file_server.requests["/k"] == 0
