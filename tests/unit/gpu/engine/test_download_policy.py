"""Which LoRA URLs the worker agrees to fetch, in local and production mode."""

import pytest

from contracts.errors import WorkerErrorCode
from gpu.engine.errors import WorkerFailure
from gpu.engine.lora.download import DownloadPolicy, check_redirect, check_url, url_identity

PRODUCTION = DownloadPolicy(mode="production", allowed_hosts=("acct.r2.cloudflarestorage.com", ".r2.dev"))
LOCAL = DownloadPolicy(mode="local")


def refused(url: str, policy: DownloadPolicy) -> WorkerFailure:
    with pytest.raises(WorkerFailure) as caught:
        check_url(url, policy)
    assert caught.value.code == WorkerErrorCode.LORA_DOWNLOAD_FAILED
    return caught.value


def test_production_accepts_https_on_allow_listed_hosts() -> None:
    assert check_url("https://acct.r2.cloudflarestorage.com/b/k.safetensors?X-Amz-Signature=s", PRODUCTION)
    assert check_url("https://pub-123.r2.dev/k.safetensors", PRODUCTION) == "pub-123.r2.dev"


@pytest.mark.parametrize(
    "url",
    [
        "http://acct.r2.cloudflarestorage.com/b/k.safetensors",  # plain http
        "https://evil.example.com/k.safetensors",  # off the list
        "https://acct.r2.cloudflarestorage.com.evil.example/k",  # suffix trick
        "https://127.0.0.1/k.safetensors",  # loopback is not special in production
        "file:///etc/passwd",
        "ftp://acct.r2.cloudflarestorage.com/k",
        "https:///no-host",
    ],
)
def test_production_refuses(url: str) -> None:
    refused(url, PRODUCTION)


def test_production_refuses_a_redirect_to_another_host() -> None:
    current = "https://acct.r2.cloudflarestorage.com/b/k"
    with pytest.raises(WorkerFailure) as caught:
        check_redirect("acct.r2.cloudflarestorage.com", current, "https://pub-1.r2.dev/k", PRODUCTION)
    assert caught.value.details["redirect_host"] == "pub-1.r2.dev"
    refused_redirect = "http://acct.r2.cloudflarestorage.com/b/k"  # downgrade to http
    with pytest.raises(WorkerFailure):
        check_redirect("acct.r2.cloudflarestorage.com", current, refused_redirect, PRODUCTION)
    same_host = check_redirect("acct.r2.cloudflarestorage.com", current, "/b/other", PRODUCTION)
    assert same_host == "https://acct.r2.cloudflarestorage.com/b/other"


def test_local_mode_allows_loopback_http_only() -> None:
    assert check_url("http://127.0.0.1:9000/b/k", LOCAL) == "127.0.0.1"
    assert check_url("http://localhost:9000/b/k", LOCAL) == "localhost"
    assert check_url("http://[::1]:9000/b/k", LOCAL) == "::1"
    refused("http://10.0.0.5/k", LOCAL)
    refused("http://example.com/k", LOCAL)


def test_refusal_details_never_carry_the_query() -> None:
    failure = refused("https://evil.example.com/k?X-Amz-Signature=secret", PRODUCTION)
    assert "secret" not in repr(failure.details) and "secret" not in failure.message


def test_url_identity_drops_the_signature() -> None:
    url = "https://h.example/b/k.safetensors?X-Amz-Signature=abc&X-Amz-Expires=60#frag"
    assert url_identity(url) == "https://h.example/b/k.safetensors"
