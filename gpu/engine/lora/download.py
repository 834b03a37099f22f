"""Stream a LoRA file from a (presigned) URL under a policy: scheme, host allow-list, size cap, timeouts."""

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urljoin, urlsplit

import httpx

from gpu.engine.errors import lora_download_failed

REDIRECT_STATUSES = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 3
# `details.reason` of a LoRA whose bytes do not match the sha256 the request gave (raised by the store).


@dataclass(frozen=True)
class DownloadPolicy:
    """Where a LoRA may come from and how much of it may arrive, how fast."""

    mode: Literal["local", "production"] = "production"
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    max_bytes: int = 512 * 1024 * 1024
    connect_timeout_seconds: float = 5.0
    total_timeout_seconds: float = 60.0


def url_identity(url: str) -> str:
    """The URL without its query and fragment: names the object, never carries a signature."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    # An entry starting with a dot allows that domain's subdomains; any other entry must match exactly.
    for entry in allowed:
        if entry.startswith(".") and host.endswith(entry):
            return True
        if host == entry:
            return True
    return False


def check_url(url: str, policy: DownloadPolicy) -> str:
    """Return the URL's host if the policy lets us fetch it, else raise LORA_DOWNLOAD_FAILED."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError as exc:
        raise lora_download_failed("lora_url is not a valid URL", reason=str(exc)) from None
    if parts.scheme not in ("http", "https") or not host:
        raise lora_download_failed("lora_url must be an http(s) URL with a host", scheme=parts.scheme)
    if policy.mode == "production":
        if parts.scheme != "https":
            raise lora_download_failed("lora_url must use https", scheme=parts.scheme, host=host)
        if not _host_allowed(host, policy.allowed_hosts):
            raise lora_download_failed("lora_url host is not on the allow-list", host=host)
    elif not (_is_loopback(host) or _host_allowed(host, policy.allowed_hosts)):
        raise lora_download_failed("lora_url host is neither loopback nor on the allow-list", host=host)
    return host


def check_redirect(host: str, current: str, location: str, policy: DownloadPolicy) -> str:
    """The redirect target, if it passes the policy and stays on the same host; else LORA_DOWNLOAD_FAILED."""
    target = urljoin(current, location)
    target_host = check_url(target, policy)
    if target_host != host:
        raise lora_download_failed("LoRA download redirected to another host", host=host, redirect_host=target_host)
    return target


def download(url: str, policy: DownloadPolicy, deadline: float | None = None) -> bytes:
    """Fetch the whole file, enforcing the cap while streaming; redirects only within the same host."""
    start = time.monotonic()
    stop_at = start + policy.total_timeout_seconds
    if deadline is not None:
        stop_at = min(stop_at, deadline)
    host = check_url(url, policy)
    current = url
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            remaining = stop_at - time.monotonic()
            if remaining <= 0:
                raise lora_download_failed("LoRA download timed out", host=host)
            timeout = httpx.Timeout(remaining, connect=min(policy.connect_timeout_seconds, remaining))
            try:
                with client.stream("GET", current, timeout=timeout) as response:
                    if response.status_code in REDIRECT_STATUSES:
                        current = check_redirect(host, current, response.headers.get("location", ""), policy)
                        continue
                    return _read_body(response, policy, host, stop_at)
            except httpx.TimeoutException:
                raise lora_download_failed(
                    "LoRA download timed out", host=host, elapsed_seconds=round(time.monotonic() - start, 3)
                ) from None
            except httpx.HTTPError as exc:
                raise lora_download_failed("LoRA host unreachable", host=host, reason=type(exc).__name__) from None
    raise lora_download_failed("too many redirects", host=host, max_redirects=MAX_REDIRECTS)


_STATUS_REASONS = {
    401: "access denied (unsigned URL)",
    403: "access denied (expired or invalid signature)",
    404: "LoRA object not found",
}


def _read_body(response: httpx.Response, policy: DownloadPolicy, host: str, stop_at: float) -> bytes:
    if response.status_code != 200:
        reason = _STATUS_REASONS.get(response.status_code, "unexpected HTTP status")
        # `http_status` (machine-readable, kept when a caller adds its own `status`): the gateway signs a fresh URL
        # once after a 401/403, and does not retry a 404.
        raise lora_download_failed(
            f"LoRA download failed: {reason}", host=host, status=response.status_code, http_status=response.status_code
        )
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
        raise lora_download_failed(
            "LoRA file is larger than the cap", host=host, bytes=int(declared), max_bytes=policy.max_bytes
        )
    received = bytearray()
    # No chunk size: httpx would otherwise buffer until it has that much, hiding a trickle from the deadline.
    for chunk in response.iter_raw():
        received += chunk
        if len(received) > policy.max_bytes:
            raise lora_download_failed(
                "LoRA file is larger than the cap",
                host=host,
                received_bytes=len(received),
                max_bytes=policy.max_bytes,
            )
        if time.monotonic() > stop_at:
            raise lora_download_failed("LoRA download timed out", host=host, received_bytes=len(received))
    return bytes(received)
