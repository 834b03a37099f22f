"""The direct SigV4 signer against botocore, byte for byte and with no server: the presigned GET is the URL boto3's
client makes, and what the PUT sends over httpx is exactly what was signed (a server that checks signatures refuses
what does not verify: tests/integration/common/storage/test_signing_real.py)."""

from __future__ import annotations

import datetime
from unittest import mock

import boto3
import botocore.auth
import httpx
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from services.common.storage.objects import ObjectStorage, StorageConfig, StorageRequestError
from services.common.storage.signing import BucketSigner

ENDPOINT, BUCKET, REGION, ACCESS, SECRET = "https://acct.r2.example", "vb-images", "auto", "AKEXAMPLE", "s3cr3t"
# botocore.auth reads its clock through get_current_datetime (naive UTC), imported into its own namespace: patched
# there, both signers sign at this instant.
AT = datetime.datetime(2026, 11, 26, 12, 0, 0)
KEYS = ["outputs/0b1c.png", "loras/avatar 1/v+2 ü~x.safetensors", "a//b/c"]


def boto_client() -> object:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        region_name=REGION,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


@pytest.mark.parametrize("key", KEYS)
def test_a_presigned_get_is_the_url_boto3_signs(key: str) -> None:
    client = boto_client()
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=AT):
        expected = client.generate_presigned_url(  # type: ignore[attr-defined]
            "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=900
        )
        signed = BucketSigner(ENDPOINT, BUCKET, REGION, ACCESS, SECRET).presign_get(key, 900)
    assert signed == expected
    assert "X-Amz-Date=20261126T120000Z" in signed  # the clock was pinned: not two calls that fell in one second


@pytest.mark.parametrize("key", KEYS)
async def test_the_put_sent_is_the_put_signed(key: str) -> None:
    sent: list[httpx.Request] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, headers={"ETag": '"e"'})

    storage = ObjectStorage(StorageConfig(ENDPOINT, ACCESS, SECRET, BUCKET, REGION))
    storage._http = httpx.AsyncClient(transport=httpx.MockTransport(endpoint))  # the wire, recorded
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=AT):
        info = await storage.put_bytes(key, b"\x89PNG bytes", "image/png")
        # Sign again from what went out, the headers the signature names taken as received: the endpoint's check.
        request = sent[0]
        named = request.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
        received = AWSRequest(
            method=request.method,
            url=str(request.url),
            data=request.content,
            headers={name: request.headers[name] for name in named if name != "host"},
        )
        S3SigV4Auth(Credentials(ACCESS, SECRET), "s3", REGION).add_auth(received)
    await storage.close()
    assert request.headers["authorization"] == received.headers["Authorization"]
    assert "x-amz-meta-sha256" in request.headers["authorization"] and info.etag == '"e"'
    assert request.url.raw_path.decode().startswith(f"/{BUCKET}/")


async def test_a_refused_put_raises_with_the_s3_error_code() -> None:
    body = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>reduce</Message></Error>"
    storage = ObjectStorage(StorageConfig(ENDPOINT, ACCESS, SECRET, BUCKET, REGION))
    storage._http = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(503, content=body)))
    with pytest.raises(StorageRequestError) as raised:
        await storage.put_bytes("outputs/x.png", b"x", "image/png")
    await storage.close()
    assert (raised.value.status, raised.value.code) == (503, "SlowDown")
    assert SECRET not in str(raised.value) and "Signature" not in str(raised.value)
