"""Properties of log redaction: a configured secret, a bearer token, a credential header's value or a presigned
URL's signature never survives in any text that contains it, wherever it sits and whatever surrounds it."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from logsafe.logs import MIN_SECRET_LENGTH, REDACTED, Redaction, redact
from tests.support.properties import bounded

# Secrets as configured values look (keys, passwords, tokens). No '[', ']' or capitals: a secret that is part of
# the "[REDACTED]" marker itself (say "EDAC") would trivially "survive" in the marker.
secrets = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_./+=:@%"), min_size=MIN_SECRET_LENGTH, max_size=40
)
# Any text around it, control characters, quotes and JSON punctuation included.
surroundings = st.text(max_size=80)
# What a bearer token or signature is made of.
token_chars = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/")
tokens = st.text(token_chars, min_size=16, max_size=60)


@bounded(400)
@given(secret_list=st.lists(secrets, min_size=1, max_size=4), pieces=st.lists(surroundings, min_size=2, max_size=5))
def test_a_configured_secret_never_survives(secret_list: list[str], pieces: list[str]) -> None:
    # Guards: a secret left whole because another secret overlapping it was replaced first, because it appears
    # twice, or because a later pattern rebuilt it; every configured secret is placed in the text.
    text = pieces[0]
    for index, piece in enumerate(pieces[1:]):
        text += secret_list[index % len(secret_list)] + piece
    out = Redaction(secret_list)(text)
    for secret in secret_list:
        if secret in text:
            assert secret not in out


@bounded(300)
@given(
    before=surroundings,
    after=surroundings,
    token=tokens,
    form=st.sampled_from(
        [
            "Authorization: Bearer {}",
            "authorization={}",
            "{{'Authorization': 'Bearer {}'}}",
            '{{"authorization": "{}"}}',
            "Modal-Secret: {}",
            "x-api-key={}",
            "bearer {}",
        ]
    ),
)
def test_a_token_in_a_credential_header_never_survives(before: str, after: str, token: str, form: str) -> None:
    # Guards: a header spelling (case, quotes, ': ' or '=', with or without 'Bearer') that lets a token through.
    assume(token not in before and token not in after)
    out = redact(f"{before} {form.format(token)} {after}")
    assert token not in out


@bounded(300)
@given(
    host=st.from_regex(r"[a-z0-9]{1,12}\.r2\.cloudflarestorage\.com", fullmatch=True),
    key=st.from_regex(r"[a-z0-9/_.-]{1,40}", fullmatch=True),
    signature=st.text(st.sampled_from("0123456789abcdef"), min_size=32, max_size=64),
    credential=tokens,
    before=surroundings,
    after=surroundings,
    order=st.permutations(["X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Credential={c}", "X-Amz-Signature={s}"]),
)
def test_a_presigned_urls_signature_and_credential_never_survive(
    host: str, key: str, signature: str, credential: str, before: str, after: str, order: list[str]
) -> None:
    # Guards: a presigned URL (a working credential until it expires) readable in a log, whatever the order of its
    # query parameters and whatever text is around it.
    assume(signature not in before + after and credential not in before + after)
    query = "&".join(order).format(c=credential, s=signature)
    out = redact(f"{before} https://{host}/{key}?{query} {after}")
    assert signature not in out and credential not in out
    assert REDACTED in out
