"""SigV4 for the two calls made once per generation (presign a GET, PUT an image), by botocore's own signer
but without its client: the client's request pipeline cost more CPU than the rest of the gateway's upload
(docs/benchmarks.md). Path-style URLs, as the client is configured for (R2, SeaweedFS, MinIO)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SERVICE = "s3"


@dataclass(frozen=True)
class SignedRequest:
    """What to send: the URL and every header that was signed (sent as they are, or the signature breaks)."""

    url: str
    headers: dict[str, str] = field(repr=False)


class BucketSigner:
    """Signs requests for the objects of one bucket."""

    def __init__(self, endpoint_url: str, bucket: str, region: str, access_key_id: str, secret_access_key: str) -> None:
        self._base = f"{endpoint_url.rstrip('/')}/{quote(bucket, safe='')}"
        self._region = region
        self._credentials = Credentials(access_key_id, secret_access_key)

    def object_url(self, key: str) -> str:
        """The object's path-style URL, its key encoded as botocore encodes it."""
        return f"{self._base}/{quote(key, safe='/~')}"

    def presign_get(self, key: str, ttl_seconds: int) -> str:
        """A URL that downloads `key` for `ttl_seconds` (the query carries the signature)."""
        request = AWSRequest(method="GET", url=self.object_url(key))
        S3SigV4QueryAuth(self._credentials, SERVICE, self._region, expires=ttl_seconds).add_auth(request)
        return str(request.url)

    def put(self, key: str, body: bytes, headers: dict[str, str]) -> SignedRequest:
        """A PUT of `body` under `key` with `headers` (Content-Type, x-amz-meta-*), signed in the headers."""
        request = AWSRequest(method="PUT", url=self.object_url(key), data=body, headers=dict(headers))
        S3SigV4Auth(self._credentials, SERVICE, self._region).add_auth(request)
        return SignedRequest(str(request.url), {name: str(value) for name, value in request.headers.items()})
