from __future__ import annotations

import base64

import pytest

from router.tokens import TOKEN_CHARS, TokenError, TokenSigner

SIGNER = TokenSigner(b"0123456789abcdef0123", ttl_s=60)


def test_token_roundtrip_carries_claims() -> None:
    token = SIGNER.sign(7, 1, 300, 1_000_000)
    assert len(token) == TOKEN_CHARS
    claims = SIGNER.verify(token, 1_000_010)
    assert (claims.version, claims.arm, claims.cell, claims.issued) == (7, 1, 300, 1_000_000)


def _flip(token: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[index] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param(_flip(SIGNER.sign(7, 1, 3, 1000), 2), "bad_token", id="tampered-version"),
        pytest.param(_flip(SIGNER.sign(7, 1, 3, 1000), 23), "bad_token", id="tampered-mac"),
        pytest.param(
            TokenSigner(b"another-secret-key!!", 60).sign(7, 1, 3, 1000),
            "bad_token",
            id="forged-other-key",
        ),
        pytest.param("short", "bad_token", id="wrong-length"),
        pytest.param("!" * TOKEN_CHARS, "bad_token", id="not-base64"),
        pytest.param(None, "bad_token", id="not-a-string"),
        pytest.param(SIGNER.sign(7, 1, 3, 900), "expired_token", id="expired"),
        pytest.param(SIGNER.sign(7, 1, 3, 5000), "bad_token", id="from-the-future"),
    ],
)
def test_token_verify_rejects_with_reason(token: object, reason: str) -> None:
    with pytest.raises(TokenError) as e:
        SIGNER.verify(token, 1000 + 61)
    assert e.value.reason == reason
