from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.tokens import MAX_ROWS, TOKEN_CHARS, TokenError, TokenSigner, derive_key

SECRET = b"0123456789abcdef0123"
SIGNER = TokenSigner(SECRET, ttl_s=60, host=0xABCDEF01)


def test_token_roundtrip_carries_claims() -> None:
    token = SIGNER.sign(7, 1, 300, 1_000_000, rows=5)
    assert len(token) == TOKEN_CHARS
    claims = SIGNER.verify(token, 1_000_010)
    assert (claims.version, claims.arm, claims.cell, claims.issued) == (7, 1, 300, 1_000_000)
    assert (claims.rows, claims.host) == (5, 0xABCDEF01)


def test_token_mac_is_keyed_blake2b_of_the_body() -> None:
    # The format is a contract with /events on every host: 28 bytes of claims, then
    # BLAKE2b keyed with the derived key over them, truncated to 11 bytes.
    raw = base64.urlsafe_b64decode(SIGNER.sign(7, 1, 300, 1_000_000, rows=5))
    body, mac = raw[:28], raw[28:]
    assert mac == hashlib.blake2b(body, key=derive_key(SECRET), digest_size=11).digest()


def test_token_each_signature_has_its_own_nonce() -> None:
    # The same claims in the same second: two answers, two tokens, two nonces.
    tokens = [SIGNER.sign(7, 0, 3, 1_000_000) for _ in range(1000)]
    assert len(set(tokens)) == 1000
    assert len({SIGNER.verify(t, 1_000_000).nonce for t in tokens}) == 1000


def test_token_nonce_prefixes_differ_between_signers() -> None:
    # Each worker process has its own signer: a random prefix keeps their nonces apart.
    a, b = TokenSigner(SECRET, 60), TokenSigner(SECRET, 60)
    na = a.verify(a.sign(1, 0, 0, 100), 100).nonce
    nb = b.verify(b.sign(1, 0, 0, 100), 100).nonce
    assert na >> 32 != nb >> 32


def test_token_nonce_counter_wrap_draws_a_new_prefix() -> None:
    signer = TokenSigner(SECRET, 60)
    first = signer.next_nonce()
    signer._counter = (1 << 32) - 1  # as if 4 billion answers were signed
    wrapped = signer.next_nonce()
    assert wrapped & 0xFFFFFFFF == 0 and wrapped != first and wrapped >> 32 != first >> 32


def test_token_signed_at_the_counter_wrap_has_a_new_prefix() -> None:
    signer = TokenSigner(SECRET, 60)
    first = signer.verify(signer.sign(1, 0, 0, 1_000_000), 1_000_000).nonce
    signer._counter = (1 << 32) - 1
    wrapped = signer.verify(signer.sign(1, 0, 0, 1_000_000), 1_000_000).nonce
    after = signer.verify(signer.sign(1, 0, 0, 1_000_000), 1_000_000).nonce
    assert wrapped & 0xFFFFFFFF == 0 and wrapped >> 32 != first >> 32
    assert after == wrapped + 1


def test_token_rows_past_the_limit_are_capped() -> None:
    assert SIGNER.verify(SIGNER.sign(1, 0, 0, 100, rows=100_000), 100).rows == MAX_ROWS


def _flip(token: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[index] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param(_flip(SIGNER.sign(7, 1, 3, 1000), 4), "bad_token", id="tampered-version"),
        pytest.param(_flip(SIGNER.sign(7, 1, 3, 1000), 2), "bad_token", id="tampered-rows"),
        pytest.param(_flip(SIGNER.sign(7, 1, 3, 1000), 25), "bad_token", id="tampered-nonce"),
        pytest.param(_flip(SIGNER.sign(7, 1, 3, 1000), 38), "bad_token", id="tampered-mac"),
        pytest.param(
            TokenSigner(b"another-secret-key!!", 60).sign(7, 1, 3, 1000),
            "bad_token",
            id="forged-other-key",
        ),
        pytest.param("short", "bad_token", id="wrong-length"),
        pytest.param("!" * TOKEN_CHARS, "bad_token", id="not-base64"),
        pytest.param("\u00e9" * TOKEN_CHARS, "bad_token", id="not-ascii"),
        pytest.param("\ud800" * TOKEN_CHARS, "bad_token", id="lone-surrogate"),
        pytest.param("A" * 32, "bad_token", id="old-format-length"),
        pytest.param(None, "bad_token", id="not-a-string"),
        pytest.param(SIGNER.sign(7, 1, 3, 900), "expired_token", id="expired"),
        pytest.param(SIGNER.sign(7, 1, 3, 5000), "bad_token", id="from-the-future"),
        pytest.param(SIGNER.sign(7, 1, 3, 1000, rows=0), "bad_token", id="no-rows"),
    ],
)
def test_token_verify_rejects_with_reason(token: object, reason: str) -> None:
    with pytest.raises(TokenError) as e:
        SIGNER.verify(token, 1000 + 61)
    assert e.value.reason == reason


@given(
    version=st.integers(0, 2**32 - 1),
    arm=st.integers(0, 1),
    cell=st.integers(0, 2**32 - 1),
    rows=st.integers(1, MAX_ROWS),
    index=st.integers(0, 38),
    bit=st.integers(0, 7),
)
def test_token_any_single_bit_flip_is_refused(
    version: int, arm: int, cell: int, rows: int, index: int, bit: int
) -> None:
    token = SIGNER.sign(version, arm, cell, 1000, rows)
    assert SIGNER.verify(token, 1000).rows == rows
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[index] ^= 1 << bit
    with pytest.raises(TokenError):
        SIGNER.verify(base64.urlsafe_b64encode(bytes(raw)).decode(), 1000)
