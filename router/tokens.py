"""Event tokens: what /predict hands out so /events can attribute an outcome.

A token is 24 bytes, base64url (32 characters)::

    format(1) | model version(4) | arm(1) | segment cell(4) | issued, unix s(4) | HMAC(10)

The MAC is HMAC-SHA256 under RAMPART_TOKEN_SECRET, truncated to 80 bits. Tokens
carry nothing request-specific, so a worker reuses one per (version, arm, cell)
within the same second instead of signing every response.
"""

from __future__ import annotations

import base64
import hmac
import struct
from dataclasses import dataclass

from router.layout import Reject

FORMAT = 1
_BODY = struct.Struct("<BIBII")
MAC_BYTES = 10
TOKEN_CHARS = 32


class TokenError(ValueError):
    def __init__(self, reason: Reject) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    version: int
    arm: int  # 0 champion, 1 challenger, as assigned when the prediction was made
    cell: int
    issued: int


class TokenSigner:
    def __init__(self, secret: bytes, ttl_s: int, max_skew_s: int = 60) -> None:
        if len(secret) < 16:
            raise ValueError("the token secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_s = ttl_s
        self.max_skew_s = max_skew_s

    def _mac(self, body: bytes) -> bytes:
        return hmac.digest(self._secret, body, "sha256")[:MAC_BYTES]

    def sign(self, version: int, arm: int, cell: int, issued: int) -> str:
        body = _BODY.pack(FORMAT, version, arm, cell, issued)
        return base64.urlsafe_b64encode(body + self._mac(body)).decode()

    def verify(self, token: object, now: int) -> Claims:
        """Claims of a genuine, unexpired token; else TokenError with a reason code."""
        if type(token) is not str or len(token) != TOKEN_CHARS:
            raise TokenError(Reject.BAD_TOKEN)
        try:
            raw = base64.urlsafe_b64decode(token)
        except ValueError:
            raise TokenError(Reject.BAD_TOKEN) from None
        body, mac = raw[: _BODY.size], raw[_BODY.size :]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise TokenError(Reject.BAD_TOKEN)
        fmt, version, arm, cell, issued = _BODY.unpack(body)
        if fmt != FORMAT or arm > 1:
            raise TokenError(Reject.BAD_TOKEN)
        if issued > now + self.max_skew_s:
            raise TokenError(Reject.BAD_TOKEN)
        if now - issued > self.ttl_s:
            raise TokenError(Reject.EXPIRED_TOKEN)
        return Claims(version, arm, cell, issued)
