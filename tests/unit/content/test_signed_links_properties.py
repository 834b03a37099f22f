"""Properties of signed links: a link the signer made is good until it expires, and changing any one byte of what
it covers (purpose, resource, expiry, signature) or the key that checks it makes it refused."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from services.content.signed_links import MIN_KEY_BYTES, LinkSigner
from tests.support.properties import bounded

NOW = 1_800_000_000.0
keys = st.binary(min_size=MIN_KEY_BYTES, max_size=64)
texts = st.text(min_size=1, max_size=60)
ttls = st.integers(1, 86_400)


def signer(key: bytes, now: float = NOW) -> LinkSigner:
    return LinkSigner(key, clock=lambda: now)


def one_char_changed(value: str, index: int, replacement: str) -> str:
    index %= len(value)
    assume(value[index] != replacement)
    return value[:index] + replacement + value[index + 1 :]


@bounded(300)
@given(key=keys, purpose=texts, resource=texts, ttl=ttls, age=st.integers(0, 86_400))
def test_a_signed_link_is_good_until_it_expires(key: bytes, purpose: str, resource: str, ttl: int, age: int) -> None:
    # Guards: a link refused while it should work (the browser's event stream fails), or still good once expired.
    link = signer(key).sign(purpose, resource, ttl)
    verdict = signer(key, NOW + age).refusal(purpose, resource, link.expires, link.signature)
    assert (verdict is None) == (age <= ttl)


@bounded(500)
@given(
    key=keys,
    purpose=texts,
    resource=texts,
    ttl=ttls,
    part=st.sampled_from(["purpose", "resource", "signature"]),
    index=st.integers(0, 200),
    replacement=st.characters(codec="utf-8"),
)
def test_any_one_character_changed_is_refused(
    key: bytes, purpose: str, resource: str, ttl: int, part: str, index: int, replacement: str
) -> None:
    # Guards: a link for one generation's stream opening another's (resource), another purpose, or a forged
    # signature accepted (a comparison that stops early or ignores a character). It found that a non-ASCII
    # character in the signature raised TypeError (hmac.compare_digest on str) instead of being refused.
    link = signer(key).sign(purpose, resource, ttl)
    values = {"purpose": purpose, "resource": resource, "signature": link.signature}
    values[part] = one_char_changed(values[part], index, replacement)
    assert signer(key).refusal(values["purpose"], values["resource"], link.expires, values["signature"]) is not None


@bounded(300)
@given(key=keys, purpose=texts, resource=texts, ttl=ttls, delta=st.integers(-(10**6), 10**6).filter(bool))
def test_a_changed_expiry_is_refused(key: bytes, purpose: str, resource: str, ttl: int, delta: int) -> None:
    # Guards: a holder extending its own link by editing `expires` in the query.
    link = signer(key).sign(purpose, resource, ttl)
    assert signer(key).refusal(purpose, resource, link.expires + delta, link.signature) is not None


@bounded(300)
@given(key=keys, index=st.integers(0, 63), flip=st.integers(1, 255), purpose=texts, resource=texts, ttl=ttls)
def test_a_link_signed_with_another_key_is_refused(
    key: bytes, index: int, flip: int, purpose: str, resource: str, ttl: int
) -> None:
    # Guards: a signature that does not depend on every byte of the key (one replica's key opening another's).
    other = bytearray(key)
    other[index % len(key)] ^= flip
    link = signer(bytes(other)).sign(purpose, resource, ttl)
    assert signer(key).refusal(purpose, resource, link.expires, link.signature) is not None


@bounded(200)
@given(key=keys, left=texts, right=texts, ttl=ttls)
def test_moving_text_between_purpose_and_resource_is_refused(key: bytes, left: str, right: str, ttl: int) -> None:
    # Guards: a separator-based MAC where ("ab", "c") and ("a", "bc") sign the same bytes.
    link = signer(key).sign(left, right, ttl)
    moved = (left + right[:1], right[1:]) if len(right) > 1 else (left[:-1], left[-1:] + right)
    assume(moved[0] and moved[1] and moved != (left, right))
    assert signer(key).refusal(moved[0], moved[1], link.expires, link.signature) is not None
