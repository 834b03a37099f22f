"""Identity's per-owner quota rules: where each refusal starts, its status, reason code and Retry-After."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common.http.errors import ConflictError, TooManyRequestsError
from services.identity.lora_files import immutable_key
from services.identity.quotas import (
    LORA_BYTES_QUOTA_EXCEEDED,
    REGISTRATION_EXPIRED,
    TOO_MANY_AVATARS,
    TOO_MANY_OPEN_UPLOADS,
    OwnerQuotas,
    UploadUsage,
    check_avatar_quota,
    check_registration,
    check_still_open,
    is_open,
    registration_expiry,
)
from services.identity.upload_expiry import upload_object_of

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
QUOTAS = OwnerQuotas(max_avatars=3, max_open_uploads=2, max_lora_bytes=1000)


def usage(open_uploads: int = 0, lora_bytes: int = 0, first_expiry: datetime | None = None) -> UploadUsage:
    return UploadUsage(open_uploads=open_uploads, first_open_expiry=first_expiry, lora_bytes=lora_bytes)


def test_the_defaults_are_the_documented_ones() -> None:
    assert OwnerQuotas() == OwnerQuotas(max_avatars=100, max_open_uploads=5, max_lora_bytes=10 * 1024**3)


def test_an_owner_may_have_up_to_the_quota_of_avatars_and_no_more() -> None:
    check_avatar_quota(2, QUOTAS)

    with pytest.raises(ConflictError) as refused:
        check_avatar_quota(3, QUOTAS)

    assert (refused.value.status_code, refused.value.reason_code) == (409, TOO_MANY_AVATARS)


def test_open_uploads_past_the_quota_are_a_429_until_the_first_open_one_expires() -> None:
    check_registration(usage(open_uploads=1), 10, QUOTAS, NOW)

    with pytest.raises(TooManyRequestsError) as refused:
        check_registration(usage(open_uploads=2, first_expiry=NOW + timedelta(seconds=90.2)), 10, QUOTAS, NOW)

    assert (refused.value.status_code, refused.value.reason_code) == (429, TOO_MANY_OPEN_UPLOADS)
    assert refused.value.headers == {"Retry-After": "91"}


def test_a_retry_after_is_never_under_a_second() -> None:
    with pytest.raises(TooManyRequestsError) as refused:
        check_registration(usage(open_uploads=2, first_expiry=NOW - timedelta(seconds=5)), 10, QUOTAS, NOW)

    assert refused.value.headers == {"Retry-After": "1"}


def test_bytes_fill_the_quota_exactly_and_one_more_is_a_409_naming_size_bytes() -> None:
    check_registration(usage(lora_bytes=900), 100, QUOTAS, NOW)

    with pytest.raises(ConflictError) as refused:
        check_registration(usage(lora_bytes=900), 101, QUOTAS, NOW)

    assert (refused.value.status_code, refused.value.reason_code) == (409, LORA_BYTES_QUOTA_EXCEEDED)
    assert [f.field for f in refused.value.fields] == ["size_bytes"]
    assert "100 are left" in refused.value.fields[0].reason


def test_a_registration_is_open_until_its_expiry_and_not_at_it() -> None:
    expires = registration_expiry(NOW, 3600)

    assert expires == NOW + timedelta(hours=1)
    assert is_open(expires, expires - timedelta(microseconds=1))
    assert not is_open(expires, expires)
    # A registration made before expiry existed, not yet given one by the migration: still open.
    assert is_open(None, NOW)
    check_still_open(expires, NOW)
    with pytest.raises(ConflictError) as refused:
        check_still_open(expires, expires)
    assert refused.value.reason_code == REGISTRATION_EXPIRED


def test_the_object_the_sweep_deletes_is_an_upload_key_never_a_ready_versions_file() -> None:
    avatar_id, lora_id = uuid.uuid4(), uuid.uuid4()

    key = upload_object_of(avatar_id, lora_id)

    assert key == f"uploads/loras/{avatar_id}/{lora_id}.safetensors"
    assert not key.startswith(immutable_key("0" * 64).split("/")[0] + "/")


def test_every_quota_reason_code_has_its_row_in_the_identity_docs() -> None:
    text = (Path(__file__).resolve().parents[3] / "docs" / "identity.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| \d{3} \| `[A-Z_]+` \| `([A-Z_]+)` \|", text, re.M))

    assert rows == {TOO_MANY_AVATARS, TOO_MANY_OPEN_UPLOADS, LORA_BYTES_QUOTA_EXCEEDED, REGISTRATION_EXPIRED}
