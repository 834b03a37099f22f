"""Check a worker's image: base64 that decodes to a PNG of exactly the requested size."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

from PIL import Image

PNG_CONTENT_TYPE = "image/png"
# A 2048×2048 RGBA PNG is at most about 16 MiB uncompressed; anything far larger is not ours.
MAX_PNG_BYTES = 48 * 1024 * 1024


class InvalidImageError(ValueError):
    """The worker's image is not what was asked for."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class CheckedPng:
    """PNG bytes that decode at the requested size."""

    data: bytes
    sha256: str
    width: int
    height: int

    @property
    def size_bytes(self) -> int:
        """Length of the file."""
        return len(self.data)


def decode_png(image_base64: str, width: int, height: int) -> CheckedPng:
    """The PNG in `image_base64` if it decodes and is width×height; InvalidImageError otherwise."""
    if len(image_base64) > MAX_PNG_BYTES * 4 // 3 + 4:
        raise InvalidImageError("image is larger than any PNG the gateway accepts", base64_chars=len(image_base64))
    try:
        data = base64.b64decode(image_base64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError("image_base64 is not valid base64") from None
    if not data:
        raise InvalidImageError("image is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            image_format = probe.format
            probe.verify()
        # verify() leaves the image unusable: decode the pixels from a fresh handle.
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = image.size
    except Exception as error:  # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise InvalidImageError("image does not decode", reason=f"{type(error).__name__}: {error}"[:200]) from None
    if image_format != "PNG":
        raise InvalidImageError("image is not a PNG", format=str(image_format))
    if size != (width, height):
        raise InvalidImageError(
            "image size differs from the requested size",
            width=size[0],
            height=size[1],
            requested_width=width,
            requested_height=height,
        )
    return CheckedPng(data=data, sha256=hashlib.sha256(data).hexdigest(), width=width, height=height)
