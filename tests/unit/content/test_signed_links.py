"""Signed links: a link grants one purpose on one resource until it expires, and nothing else."""

from __future__ import annotations

import pytest

from services.content.signed_links import MIN_KEY_BYTES, LinkSigner

KEY = b"k" * MIN_KEY_BYTES
T0 = 1_800_000_000.0


class Clock:
    """Unix seconds that a test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(clock: Clock) -> LinkSigner:
    return LinkSigner(KEY, clock=clock)


def test_a_fresh_link_is_accepted_for_its_purpose_and_resource(signer: LinkSigner) -> None:
    link = signer.sign("events", "gen-1", ttl_seconds=600)

    assert link.expires == int(T0) + 600
    assert signer.refusal("events", "gen-1", link.expires, link.signature) is None


def test_the_query_carries_expires_and_signature(signer: LinkSigner) -> None:
    link = signer.sign("events", "gen-1", ttl_seconds=60)

    assert link.query() == f"expires={link.expires}&signature={link.signature}"
    # URL-safe as it is: no padding, no characters a query would need to escape.
    assert all(c.isalnum() or c in "-_" for c in link.signature)


def test_a_tampered_signature_is_refused(signer: LinkSigner) -> None:
    link = signer.sign("events", "gen-1", ttl_seconds=600)
    flipped = ("A" if link.signature[0] != "A" else "B") + link.signature[1:]

    assert signer.refusal("events", "gen-1", link.expires, flipped) == "the link's signature does not match"
    assert signer.refusal("events", "gen-1", link.expires, "") == "the link's signature does not match"


def test_a_later_expiry_with_the_same_signature_is_refused(signer: LinkSigner) -> None:
    link = signer.sign("events", "gen-1", ttl_seconds=600)

    assert signer.refusal("events", "gen-1", link.expires + 3600, link.signature) is not None


def test_a_link_for_another_resource_or_purpose_is_refused(signer: LinkSigner) -> None:
    link = signer.sign("events", "gen-1", ttl_seconds=600)

    assert signer.refusal("events", "gen-2", link.expires, link.signature) == "the link's signature does not match"
    assert signer.refusal("download", "gen-1", link.expires, link.signature) == "the link's signature does not match"


def test_a_link_is_good_until_its_expiry_and_refused_after(signer: LinkSigner, clock: Clock) -> None:
    link = signer.sign("events", "gen-1", ttl_seconds=600)

    clock.now = T0 + 600
    assert signer.refusal("events", "gen-1", link.expires, link.signature) is None
    clock.now = T0 + 601
    assert signer.refusal("events", "gen-1", link.expires, link.signature) == "the link has expired"


def test_another_key_does_not_accept_the_link(clock: Clock, signer: LinkSigner) -> None:
    link = signer.sign("events", "gen-1", ttl_seconds=600)
    other = LinkSigner(b"o" * MIN_KEY_BYTES, clock=clock)

    assert other.refusal("events", "gen-1", link.expires, link.signature) is not None


@pytest.mark.parametrize("key", [b"", b"k" * (MIN_KEY_BYTES - 1)])
def test_a_short_key_is_refused(key: bytes) -> None:
    with pytest.raises(ValueError, match=f"at least {MIN_KEY_BYTES} bytes"):
        LinkSigner(key)


def test_derived_signers_agree_for_one_context_and_differ_across_contexts(clock: Clock) -> None:
    secret = "a shared secret that signs tokens elsewhere"
    streams = LinkSigner.derived(secret, "content-stream-links", clock=clock)
    again = LinkSigner.derived(secret, "content-stream-links", clock=clock)
    downloads = LinkSigner.derived(secret, "downloads", clock=clock)
    link = streams.sign("events", "gen-1", ttl_seconds=600)

    assert again.refusal("events", "gen-1", link.expires, link.signature) is None
    assert downloads.refusal("events", "gen-1", link.expires, link.signature) is not None
    assert downloads.sign("events", "gen-1", ttl_seconds=600) != link


def test_a_derived_key_is_not_the_secret_itself(clock: Clock) -> None:
    secret = "s" * MIN_KEY_BYTES
    derived = LinkSigner.derived(secret, "content-stream-links", clock=clock)
    raw = LinkSigner(secret.encode(), clock=clock)
    link = raw.sign("events", "gen-1", ttl_seconds=600)

    assert derived.refusal("events", "gen-1", link.expires, link.signature) is not None
