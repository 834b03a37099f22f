"""Properties of pagination cursors: any cursor the API issues decodes to where the page ended and fits the query
parameter's documented pattern, every string of that pattern is a position (the schema allows no string the API
refuses), and any other string is refused as a 422 naming `cursor` (never a 500)."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from services.common.http.errors import InvalidRequestError
from services.common.http.pagination import CURSOR_LENGTH, CURSOR_PATTERN, Cursor
from tests.support.properties import bounded

zones = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
cursors = st.builds(
    Cursor,
    # The cursor holds times from 1970 to the year 4253 (7 bytes of microseconds); rows are made now.
    created_at=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(4200, 1, 1), timezones=zones),
    id=st.uuids(),
)
CURSOR_SHAPE = re.compile(CURSOR_PATTERN)


@bounded(300)
@given(cursor=cursors)
def test_an_issued_cursor_round_trips_and_fits_the_documented_parameter(cursor: Cursor) -> None:
    # Guards: a next_cursor the API itself refuses (too long for max_length, a character outside the pattern:
    # the list stops at page one) or one that resumes somewhere else (items skipped or repeated).
    encoded = cursor.encode()
    assert CURSOR_SHAPE.fullmatch(encoded) and len(encoded) == CURSOR_LENGTH
    assert Cursor.decode(encoded) == cursor


@bounded(300)
@given(value=st.from_regex(CURSOR_PATTERN, fullmatch=True))
def test_every_string_of_the_documented_pattern_is_a_position_and_its_own_encoding(value: str) -> None:
    # Guards: a string the OpenAPI document allows being refused (schemathesis' "schema-valid request rejected":
    # `cursor=0` was a 422 while the pattern allowed any base64 text), and two spellings of one position.
    decoded = Cursor.decode(value)
    assert decoded.created_at.tzinfo is not None
    assert decoded.encode() == value


@bounded(300)
@given(cursor=cursors, data=st.data())
def test_a_tampered_cursor_is_refused_or_names_another_valid_position(cursor: Cursor, data: st.DataObject) -> None:
    # Guards: a crafted cursor turning into a 500 (an uncaught decode error) instead of a 422 naming `cursor`.
    encoded = cursor.encode()
    index = data.draw(st.integers(0, len(encoded) - 1))
    replacement = data.draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    assume(replacement != encoded[index])
    tampered = encoded[:index] + replacement + encoded[index + 1 :]
    try:
        decoded = Cursor.decode(tampered)
    except InvalidRequestError as refusal:
        assert [field.field for field in refusal.fields] == ["cursor"]
    else:
        # Every string of the cursors' shape is a position: a changed character names another one (one that sets
        # the last character's spare bits is refused), a whole, timezone-aware position, never a half-parsed one.
        assert decoded.created_at.tzinfo is not None


@bounded(300)
@given(value=st.text(max_size=4 * CURSOR_LENGTH))
def test_any_other_string_is_a_422_naming_cursor_never_a_crash(value: str) -> None:
    # Guards: an exception other than the 422 (UnicodeDecodeError, AttributeError on a JSON list, OverflowError)
    # escaping as a 500 for whatever a client sends.
    try:
        Cursor.decode(value)
    except InvalidRequestError as refusal:
        assert [field.field for field in refusal.fields] == ["cursor"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


@bounded(300)
@given(
    payload=json_values
    | st.fixed_dictionaries({"t": json_values, "id": json_values})
    | st.fixed_dictionaries({"t": st.datetimes(timezones=zones).map(datetime.isoformat), "id": json_values})
)
def test_a_crafted_cursor_of_any_json_is_a_422_naming_cursor(payload: object) -> None:
    # Guards: the 500 this found: {"t": <a good time>, "id": 5} raised AttributeError inside uuid.UUID, which
    # escaped decode as a server error (GET /api/v1/avatars?cursor=… and every other list).
    value = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    try:
        decoded = Cursor.decode(value)
    except InvalidRequestError as refusal:
        assert [field.field for field in refusal.fields] == ["cursor"]
    else:
        assert decoded.created_at.tzinfo is not None


@pytest.mark.parametrize(
    "payload",
    [
        '{"t":"2026-01-01T00:00:00","id":"00000000-0000-0000-0000-000000000000"}',
        '{"t":"2026-01-01T00:00:00+00:00","id":"00000000-0000-0000-0000-000000000000"}',
    ],
)
def test_a_cursor_of_the_earlier_json_form_is_refused(payload: str) -> None:
    # The cursors issued before the fixed-shape form: a client paging across the upgrade starts again at page one.
    with pytest.raises(InvalidRequestError):
        Cursor.decode(base64.urlsafe_b64encode(payload.encode()).decode().rstrip("="))
