"""Token hygiene rules: size and shape before decoding, date claims as RFC 7519 NumericDates in a sane range."""

from __future__ import annotations

import math
from typing import Any

import pytest

from services.common.auth.claims import (
    DEFAULT_MAX_TOKEN_BYTES,
    DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
    MAX_NUMERIC_DATE,
    date_claims_problem,
    numeric_date_problem,
    token_shape_problem,
)

NOW = 1_800_000_000.0
LEEWAY = 30.0
DAY = 24 * 3600


def dates(**claims: Any) -> str | None:
    return date_claims_problem(claims, now=NOW, leeway_seconds=LEEWAY, max_lifetime_seconds=DAY)


def test_the_defaults_are_8_kib_and_one_day() -> None:
    assert (DEFAULT_MAX_TOKEN_BYTES, DEFAULT_MAX_TOKEN_LIFETIME_SECONDS) == (8192, 86400)


def test_a_token_over_the_size_limit_is_refused_before_its_shape_is_looked_at() -> None:
    assert token_shape_problem("a.b.c", 8192) is None
    assert token_shape_problem("a" * 8189 + ".b.", 8192) is None
    assert token_shape_problem("a" * 8189 + ".bc.", 8192) == "token too large"
    assert token_shape_problem("not a token at all" * 1000, 8192) == "token too large"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        ".b.c",
        "a..c",
        "a.b=.c",
        "a.b.c=",
        "a+b.c.d",
        "a.b.c ",
        " a.b.c",
        "é.b.c",
        "a.b\n.c",
    ],
)
def test_anything_but_three_base64url_segments_is_malformed(token: str) -> None:
    assert token_shape_problem(token, 8192) == "malformed token"


def test_an_unsigned_token_keeps_its_shape_for_the_algorithm_check_to_refuse() -> None:
    assert token_shape_problem("eyJhbGciOiJub25lIn0.e30.", 8192) is None


@pytest.mark.parametrize("value", [0, 1, 1_700_000_000, 1_700_000_000.5, MAX_NUMERIC_DATE, float(MAX_NUMERIC_DATE)])
def test_numeric_dates_are_json_numbers_from_the_epoch_to_the_year_9999(value: object) -> None:
    assert numeric_date_problem(value) is None


@pytest.mark.parametrize(
    "value", ["1700000000", "1e30", True, False, None, [1_700_000_000], {"t": 1}, math.nan, math.inf, -math.inf]
)
def test_strings_booleans_and_non_finite_numbers_are_not_numeric_dates(value: object) -> None:
    assert numeric_date_problem(value) == "is not a NumericDate"


@pytest.mark.parametrize("value", [-1, -0.5, MAX_NUMERIC_DATE + 1, 1e30, 10**30])
def test_numbers_before_the_epoch_or_after_the_year_9999_are_out_of_range(value: object) -> None:
    assert numeric_date_problem(value) == "is out of range"


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(("value", "reason"), [("1800000100", "is not a NumericDate"), (True, "is not a NumericDate")])
def test_each_date_claim_must_be_a_numeric_date(name: str, value: object, reason: str) -> None:
    claims = {"exp": NOW + 60, name: value}

    assert (
        date_claims_problem(claims, now=NOW, leeway_seconds=LEEWAY, max_lifetime_seconds=DAY)
        == f"{name} claim {reason}"
    )


def test_exp_1e30_is_out_of_range_and_a_day_and_more_ahead_is_too_far() -> None:
    assert dates(exp=1e30) == "exp claim is out of range"
    assert dates(exp=NOW + DAY + LEEWAY + 1) == "exp claim is too far in the future"
    assert dates(exp=NOW + DAY + LEEWAY) is None
    assert dates(exp=NOW + 3600.25) is None


def test_expiry_and_not_before_allow_the_leeway() -> None:
    assert dates(exp=NOW - LEEWAY + 1) is None
    assert dates(exp=NOW - LEEWAY) == "token expired"
    assert dates(exp=NOW + 60, nbf=NOW + LEEWAY) is None
    assert dates(exp=NOW + 60, nbf=NOW + LEEWAY + 1) == "token not yet valid"


def test_a_token_issued_in_the_future_is_refused_one_issued_long_ago_is_not() -> None:
    assert dates(exp=NOW + 60, iat=NOW + LEEWAY + 1) == "iat claim is in the future"
    assert dates(exp=NOW + 60, iat=NOW + LEEWAY) is None
    assert dates(exp=NOW + 60, iat=0) is None


def test_a_bad_type_is_reported_before_any_comparison() -> None:
    # An expired token with a string nbf: the type is the first thing wrong with it.
    assert dates(exp=NOW - 3600, nbf="x") == "nbf claim is not a NumericDate"
