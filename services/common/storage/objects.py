"""Object storage over boto3 for R2 or any S3 endpoint; every boto3 call runs off the event loop. The two calls
made once per generation (presigning a GET, putting an image) skip boto3's client: signed by botocore's signer
(s3_signing), the PUT sent with httpx."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import boto3
import httpx
from botocore.config import Config
from botocore.exceptions import ClientError

from services.common.observability import telemetry
from services.common.storage.signing import BucketSigner

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from services.common.app.settings import StorageSettings

SHA256_METADATA_KEY = "sha256"
_CHUNK = 1024 * 1024
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class ObjectNotFoundError(LookupError):
    """The key (or the bucket) does not exist."""


class ObjectTooLargeError(ValueError):
    """The object is larger than the caller allowed."""


class StorageRequestError(RuntimeError):
    """The endpoint answered a request with an error status (its S3 error code, when the body names one)."""

    def __init__(self, operation: str, key: str, status: int, code: str | None) -> None:
        super().__init__(f"{operation} {key}: HTTP {status}{f' {code}' if code else ''}")
        self.status = status
        self.code = code


@dataclass(frozen=True)
class StorageConfig:
    """Where the bucket is and how to sign for it."""

    endpoint_url: str
    # Kept out of repr so that neither appears in a log line or a traceback.
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    bucket: str
    # R2 and the local SeaweedFS take "auto"; AWS needs a real region such as us-east-1.
    region: str = "auto"
    public_url: str | None = None

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> StorageConfig:
        """From the R2_* settings."""
        return cls(
            endpoint_url=settings.r2_endpoint_url,
            access_key_id=settings.r2_access_key_id.get_secret_value(),
            secret_access_key=settings.r2_secret_access_key.get_secret_value(),
            bucket=settings.r2_bucket_name,
            region=settings.r2_region,
            public_url=settings.r2_public_url,
        )


@dataclass(frozen=True)
class ObjectInfo:
    """What HEAD says about an object (sha256 from our metadata, or computed on request)."""

    key: str
    size: int
    sha256: str | None
    content_type: str | None
    etag: str | None


class ObjectStorage:
    """One bucket. The boto3 client is built on first use, never at import."""

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self._client: S3Client | None = None
        self._client_lock = threading.Lock()
        self._signer = BucketSigner(
            config.endpoint_url, config.bucket, config.region, config.access_key_id, config.secret_access_key
        )
        self._http: httpx.AsyncClient | None = None

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self.config.bucket

    def _s3(self) -> S3Client:
        # boto3 sessions are not thread-safe to build; clients are safe to share once built.
        with self._client_lock:
            if self._client is None:
                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.config.endpoint_url,
                    aws_access_key_id=self.config.access_key_id,
                    aws_secret_access_key=self.config.secret_access_key,
                    region_name=self.config.region,
                    config=Config(
                        signature_version="s3v4",
                        s3={"addressing_style": "path"},
                        retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=5,
                        read_timeout=60,
                    ),
                )
            return self._client

    async def presign_get(self, key: str, ttl_seconds: int) -> str:
        """A URL that downloads `key` until it expires (the same URL boto3's client signs)."""
        return self._signer.presign_get(key, ttl_seconds)

    async def presign_put(
        self, key: str, ttl_seconds: int, content_type: str | None = None, content_length: int | None = None
    ) -> str:
        """A URL that uploads `key` with PUT until it expires.

        The client must send `content_type` when set; with `content_length` the length is signed into the URL,
        so an endpoint that checks signatures (R2, S3) refuses a body of any other size.
        """
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if content_type:
            params["ContentType"] = content_type
        if content_length is not None:
            params["ContentLength"] = content_length
        return await asyncio.to_thread(
            self._s3().generate_presigned_url, "put_object", Params=params, ExpiresIn=ttl_seconds
        )

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Store `data` under `key`, recording its sha256 in the object's metadata. StorageRequestError when the
        endpoint refuses it, httpx.HTTPError when it cannot be reached."""
        digest = hashlib.sha256(data).hexdigest()
        signed = self._signer.put(
            key, data, {"Content-Type": content_type, f"x-amz-meta-{SHA256_METADATA_KEY}": digest}
        )
        response = await self._client_http().put(signed.url, content=data, headers=signed.headers)
        if response.status_code >= 300:
            raise StorageRequestError("PUT", key, response.status_code, _error_code(response.content))
        return ObjectInfo(key, len(data), digest, content_type, response.headers.get("ETag"))

    def _client_http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0), follow_redirects=False)
            telemetry.instrument_http_client(self._http)
        return self._http

    async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes; ObjectNotFoundError or ObjectTooLargeError (past `max_bytes`)."""
        return await asyncio.to_thread(self._get_bytes, key, max_bytes)

    def _get_bytes(self, key: str, max_bytes: int | None) -> bytes:
        chunks: list[bytes] = []
        self._read_into(key, chunks.append, max_bytes)
        return b"".join(chunks)

    async def read_into(self, key: str, sink: Callable[[bytes], None], *, max_bytes: int) -> ObjectInfo:
        """Read `key` once, start to end, handing each chunk to `sink` (called off the event loop).

        ObjectNotFoundError when absent; ObjectTooLargeError before any byte is read when the object says it
        is larger than `max_bytes`, or as soon as more arrive. The size returned is what was read.
        """
        return await asyncio.to_thread(self._read_into, key, sink, max_bytes)

    def _read_into(self, key: str, sink: Callable[[bytes], None], max_bytes: int | None) -> ObjectInfo:
        try:
            response = self._s3().get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            raise _translate(error, key) from error
        body = response["Body"]
        try:
            declared = int(response.get("ContentLength", 0))
            if max_bytes is not None and declared > max_bytes:
                raise ObjectTooLargeError(f"{key} is {declared} bytes, over {max_bytes}")
            total = 0
            for chunk in body.iter_chunks(_CHUNK):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise ObjectTooLargeError(f"{key} is over {max_bytes} bytes")
                sink(chunk)
        finally:
            body.close()
        return ObjectInfo(key, total, None, response.get("ContentType"), response.get("ETag"))

    async def put_file(
        self, key: str, source: IO[bytes], *, sha256: str, content_type: str = "application/octet-stream"
    ) -> None:
        """Store the readable binary `source` under `key` (multipart when large), recording its sha256."""
        extra = {"ContentType": content_type, "Metadata": {SHA256_METADATA_KEY: sha256}}
        await asyncio.to_thread(self._s3().upload_fileobj, source, self.bucket, key, ExtraArgs=extra)

    async def head(self, key: str) -> ObjectInfo:
        """Size and type of `key`, and the sha256 recorded in its metadata by put_bytes/put_file (an uploader
        could set that to anything: verify a client's upload from its bytes, as identity does)."""
        return await asyncio.to_thread(self._head, key)

    def _head(self, key: str) -> ObjectInfo:
        try:
            response = self._s3().head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            raise _translate(error, key) from error
        return ObjectInfo(
            key=key,
            size=int(response.get("ContentLength", 0)),
            sha256=response.get("Metadata", {}).get(SHA256_METADATA_KEY),
            content_type=response.get("ContentType"),
            etag=response.get("ETag"),
        )

    async def exists(self, key: str) -> bool:
        """Whether `key` exists."""
        try:
            await self.head(key)
        except ObjectNotFoundError:
            return False
        return True

    async def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, in key order (all pages)."""
        return await asyncio.to_thread(self._keys, prefix)

    def _keys(self, prefix: str) -> list[str]:
        pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    async def delete(self, key: str) -> None:
        """Delete `key` (no error when absent)."""
        await asyncio.to_thread(self._s3().delete_object, Bucket=self.bucket, Key=key)

    async def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (local endpoints; R2 buckets are made beforehand)."""
        await asyncio.to_thread(self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        client = self._s3()
        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as error:
            if _code(error) not in _NOT_FOUND_CODES:
                raise
        if self.config.region in ("us-east-1", "auto"):
            client.create_bucket(Bucket=self.bucket)
        else:
            client.create_bucket(
                Bucket=self.bucket,
                CreateBucketConfiguration={"LocationConstraint": self.config.region},  # type: ignore[typeddict-item]
            )

    def public_url(self, key: str) -> str | None:
        """The public URL of `key` when the bucket has one (R2_PUBLIC_URL), else None."""
        if not self.config.public_url:
            return None
        return f"{self.config.public_url.rstrip('/')}/{key}"

    async def close(self) -> None:
        """Release the clients' connection pools."""
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)


def _error_code(body: bytes) -> str | None:
    """The <Code> of an S3 error document, if the body is one."""
    start = body.find(b"<Code>")
    end = body.find(b"</Code>", start)
    if start < 0 or end < 0:
        return None
    return body[start + len(b"<Code>") : end].decode("ascii", "replace")[:64] or None


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _translate(error: ClientError, key: str) -> Exception:
    if _code(error) in _NOT_FOUND_CODES:
        return ObjectNotFoundError(key)
    return error
