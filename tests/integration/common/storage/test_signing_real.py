"""The hand-made SigV4 signer (BucketSigner: presigned GETs, header-signed PUTs) and presign_put against a server
that checks signatures (SeaweedFS, or MinIO under Docker): what was signed is accepted; a wrong secret, a tampered
or expired URL, and a request other than the one signed are refused, with the S3 error code asserted."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable
from xml.etree import ElementTree

import httpx
import pytest

from services.common.storage.objects import ObjectStorage, StorageRequestError
from services.common.storage.signing import BucketSigner

# A space, unicode, '+' and '~': the path must be encoded as the server canonicalises it, or nothing verifies.
KEY = "loras/avatar 1/v+2 ü~x.safetensors"
EXPIRY_DEADLINE_SECONDS = 10.0
# Of one length: a body swapped for the other differs only in its bytes.
SIGNED, OTHER = b"signed bytes", b"other bytes!"


def signer_of(storage: ObjectStorage, secret: str | None = None) -> BucketSigner:
    """A signer for the storage's bucket; with `secret`, one that signs with that secret instead of the right one."""
    config = storage.config
    return BucketSigner(
        config.endpoint_url, config.bucket, config.region, config.access_key_id, secret or config.secret_access_key
    )


def error_of(response: httpx.Response) -> tuple[int, str | None]:
    """The status and the <Code> of the S3 error document (None when the body is none: an object, or empty)."""
    try:
        return response.status_code, ElementTree.fromstring(response.content).findtext("Code")
    except ElementTree.ParseError:
        return response.status_code, None


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def impostor(storage: ObjectStorage) -> AsyncIterator[ObjectStorage]:
    """The same bucket, signed for with a wrong secret."""
    wrong = ObjectStorage(dataclasses.replace(storage.config, secret_access_key="not-the-secret"))
    try:
        yield wrong
    finally:
        await wrong.close()


async def test_a_presigned_get_downloads_the_object(storage: ObjectStorage, http: httpx.AsyncClient) -> None:
    await storage.put_bytes(KEY, b"lora bytes")

    response = await http.get(signer_of(storage).presign_get(KEY, 60))

    assert (response.status_code, response.content) == (200, b"lora bytes")


async def test_a_presigned_put_uploads_the_object(storage: ObjectStorage, http: httpx.AsyncClient) -> None:
    url = await storage.presign_put(KEY, 60, content_type="image/png", content_length=5)

    response = await http.put(url, content=b"12345", headers={"Content-Type": "image/png"})

    assert response.status_code == 200, response.text
    assert await storage.get_bytes(KEY) == b"12345"


async def test_a_header_signed_put_stores_the_bytes_with_their_sha256(storage: ObjectStorage) -> None:
    data = b"\x89PNG image bytes"

    await storage.put_bytes(KEY, data, "image/png")

    head = await storage.head(KEY)
    assert (head.size, head.sha256, head.content_type) == (len(data), hashlib.sha256(data).hexdigest(), "image/png")
    assert await storage.get_bytes(KEY) == data


async def test_a_presigned_get_signed_with_a_wrong_secret_is_refused(
    storage: ObjectStorage, http: httpx.AsyncClient
) -> None:
    await storage.put_bytes(KEY, b"lora bytes")

    response = await http.get(signer_of(storage, secret="not-the-secret").presign_get(KEY, 60))

    assert error_of(response) == (403, "SignatureDoesNotMatch")


async def test_a_header_signed_put_with_a_wrong_secret_is_refused_and_stores_nothing(
    storage: ObjectStorage, impostor: ObjectStorage
) -> None:
    with pytest.raises(StorageRequestError) as raised:
        await impostor.put_bytes(KEY, b"image bytes", "image/png")

    assert (raised.value.status, raised.value.code) == (403, "SignatureDoesNotMatch")
    assert not await storage.exists(KEY)


def _other_key(url: str) -> str:
    return url.replace("/a.bin?", "/b.bin?")


def _longer_expiry(url: str) -> str:
    return re.sub(r"X-Amz-Expires=\d+", "X-Amz-Expires=3600", url)


def _one_signature_digit_changed(url: str) -> str:
    return re.sub(r"(X-Amz-Signature=[0-9a-f]{63})([0-9a-f])", lambda m: m[1] + ("1" if m[2] == "0" else "0"), url)


@pytest.mark.parametrize(
    "tamper", [_other_key, _longer_expiry, _one_signature_digit_changed], ids=["key", "expires", "signature"]
)
async def test_a_tampered_presigned_get_is_refused(
    storage: ObjectStorage, http: httpx.AsyncClient, tamper: Callable[[str], str]
) -> None:
    # Both keys exist: a refusal is the signature's doing, not a missing object's.
    await storage.put_bytes("a.bin", b"a")
    await storage.put_bytes("b.bin", b"b")
    url = signer_of(storage).presign_get("a.bin", 60)
    tampered = tamper(url)
    assert tampered != url

    response = await http.get(tampered)

    assert error_of(response) == (403, "SignatureDoesNotMatch")


async def test_a_presigned_get_works_at_once_and_is_refused_as_expired_after_its_ttl(
    storage: ObjectStorage, http: httpx.AsyncClient
) -> None:
    await storage.put_bytes(KEY, b"lora bytes")
    # X-Amz-Date has whole seconds: signed late in a second, a 1 s URL would have almost nothing left.
    if time.time() % 1 > 0.5:
        await asyncio.sleep(1 - time.time() % 1)
    url = signer_of(storage).presign_get(KEY, 1)

    assert (await http.get(url)).status_code == 200
    deadline = time.monotonic() + EXPIRY_DEADLINE_SECONDS
    while (response := await http.get(url)).status_code == 200:
        if time.monotonic() > deadline:
            pytest.fail(f"a 1 s URL still downloads after {EXPIRY_DEADLINE_SECONDS:.0f} s")
        await asyncio.sleep(0.2)

    assert error_of(response) == (403, "AccessDenied")
    assert "expired" in (ElementTree.fromstring(response.content).findtext("Message") or "").lower()


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Amz-Content-SHA256", hashlib.sha256(OTHER).hexdigest()),  # made to fit other bytes
        ("x-amz-meta-sha256", hashlib.sha256(OTHER).hexdigest()),  # the digest we record, forged
        ("Content-Type", "text/html"),
    ],
    ids=["content-sha256", "recorded-sha256", "content-type"],
)
async def test_a_header_signed_put_with_a_signed_header_changed_is_refused_and_stores_nothing(
    storage: ObjectStorage, http: httpx.AsyncClient, header: str, value: str
) -> None:
    headers = {"Content-Type": "image/png", "x-amz-meta-sha256": hashlib.sha256(SIGNED).hexdigest()}
    signed = signer_of(storage).put(KEY, SIGNED, headers)
    assert header in signed.headers
    body = OTHER if header == "X-Amz-Content-SHA256" else SIGNED

    response = await http.put(signed.url, content=body, headers={**signed.headers, header: value})

    assert error_of(response) == (403, "SignatureDoesNotMatch")
    assert not await storage.exists(KEY)


async def test_a_header_signed_put_of_other_bytes_than_signed_is_refused(
    storage: ObjectStorage, http: httpx.AsyncClient
) -> None:
    signed = signer_of(storage).put(KEY, SIGNED, {"Content-Type": "image/png"})

    # As long as what was signed, every header as signed: only the body's sha256 is not the one signed.
    response = await http.put(signed.url, content=OTHER, headers=signed.headers)

    if response.status_code == 200 and response.headers.get("server", "").startswith("SeaweedFS"):
        pytest.xfail("SeaweedFS 4.48 stores a body other than the signed x-amz-content-sha256 (S3, MinIO refuse it)")
    assert error_of(response) == (400, "XAmzContentSHA256Mismatch")
    assert not await storage.exists(KEY)


async def test_a_presigned_put_signed_with_a_content_type_refuses_another(
    storage: ObjectStorage, http: httpx.AsyncClient
) -> None:
    url = await storage.presign_put(KEY, 60, content_type="image/png")

    response = await http.put(url, content=b"<script>", headers={"Content-Type": "text/html"})

    assert error_of(response) == (403, "SignatureDoesNotMatch")
    assert not await storage.exists(KEY)


@pytest.mark.parametrize("length", [0, 4095, 4097])
async def test_a_presigned_put_signed_with_a_content_length_refuses_a_body_of_another(
    storage: ObjectStorage, http: httpx.AsyncClient, length: int
) -> None:
    # How identity signs the declared size_bytes into a LoRA's upload URL (lora_files.presign_upload).
    url = await storage.presign_put(KEY, 60, content_length=4096)

    response = await http.put(url, content=b"x" * length)

    assert error_of(response) == (403, "SignatureDoesNotMatch")
    assert not await storage.exists(KEY)
