"""Raw ASGI for the hot path: a request's framing and body, and an answer, without Starlette.

`/predict` and `/events` are served by raw handlers (`router.app`): reading the body to its
end within `max_body_bytes` and `[serve] body_timeout_s` (a body refused before it is read
closes the connection), and sending the answer with its length. `router.http_fast` reads
the same framing when it answers in place.
"""

from __future__ import annotations

import asyncio

from router.body_deadline import BodyDeadlines
from router.codec import JSON, Rejected, encode, media_type
from router.layout import Reject
from router.types import Message, Receive, Send

CLOSE = (b"connection", b"close")


class BodyNotRead(Rejected):
    """A body refused before it was read to its end: the answer closes the connection
    (else uvicorn reads and drops the rest, however long, before the next request)."""


def framing(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """Content-Type and Content-Length of a request, in one pass over its headers."""
    content_type = length = None
    for name, value in headers:
        if name == b"content-type":
            if content_type is None:
                content_type = value
        elif name == b"content-length":
            length = value
    return content_type, length


def _over(declared: bytes | None, limit: int) -> bool:
    # Fewer digits than the limit cannot be over it: the usual case costs no int().
    if declared is None or len(declared) < len(str(limit)):
        return False
    try:
        return int(declared) > limit
    except ValueError:  # the HTTP parser refuses these first
        return False


def too_large(limit: int) -> BodyNotRead:
    return BodyNotRead(Reject.BODY_TOO_LARGE, f"body is over {limit} bytes", 413)


async def read_body(
    receive: Receive, limit: int, declared: bytes | None, deadlines: BodyDeadlines
) -> bytes:
    if _over(declared, limit):
        # Refused before reading (and before uvicorn's `100 Continue`, so a client
        # that asked first sends nothing); a client already sending sees the close.
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    task = deadlines.enter()
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Rejected(Reject.MALFORMED_BODY, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # chunked: no length was declared
                raise too_large(limit)
            if not message.get("more_body"):
                if not chunks:  # the whole body in one message, as usual: no copy
                    return chunk
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)
    except asyncio.CancelledError:
        if not deadlines.expired(task):
            raise
        late = f"the body did not arrive within {deadlines.timeout_s:g} s"
        raise BodyNotRead(Reject.BODY_TIMEOUT, late, 408) from None
    finally:
        deadlines.leave(task)


async def send_answer(
    send: Send, status: int, body: bytes, kind: bytes, close: bool = False
) -> None:
    headers = [(b"content-type", kind), (b"content-length", b"%d" % len(body))]
    if close:
        headers.append(CLOSE)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def closing_500s(send: Send) -> Send:
    """`send` that adds `Connection: close` to a 500. Starlette's error middleware answers
    an unhandled exception with a 500 and re-raises it; uvicorn then closes the connection
    at once, and a keep-alive client that was not told so sends its next request into the
    closing socket (seen as a reset with no answer)."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 500:
            message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
        await send(message)

    return wrapped


def error_body(e: Rejected, kind: bytes) -> bytes:
    return encode({"error": e.reason, "detail": e.detail}, kind)


def answer_kind(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A refusal answers in the request's type when it named one we speak, else JSON."""
    try:
        return media_type(headers)
    except Rejected:
        return JSON
