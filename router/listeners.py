"""What a `rampart serve` worker process serves, and on which listener.

`create_app` is the factory `rampart serve` hands uvicorn. With `[serve] admin_listen`
set, each worker listens on two sockets: the main one serves everything but `/admin/...`,
the admin one only `/admin/...` and the read-only `/status`, `/healthz` and `/readyz`.
The listener a request came in on is its ASGI `scope["server"]`. Without `admin_listen`
the worker serves `router.app.App` as it is, with no extra dispatch on the hot path.
"""

from __future__ import annotations

import json

from router import app as worker_app
from router import lifeline
from router.app import App
from router.config import Address
from router.layout import Reject
from router.types import Receive, Scope, Send

ADMIN_PREFIX = "/admin/"
READ_ONLY = frozenset({"/status", "/healthz", "/readyz"})  # also on the admin listener


def is_admin_listener(server: tuple[str, int | None] | None, admin: Address) -> bool:
    if server is None:
        return False
    if admin.path:
        return server[1] is None and server[0] == admin.path
    # A TCP connection's local address, compared with the address the listener was bound to
    # (a wildcard host accepts on any local address).
    wildcard = admin.host in ("0.0.0.0", "::", "")
    return server[1] == admin.port and (wildcard or server[0] == admin.host)


class AdminSplit:
    """`App` behind a check of which listener a request came in on."""

    def __init__(self, app: App, admin: Address) -> None:
        self.app = app
        self.admin = admin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            is_admin_path = path.startswith(ADMIN_PREFIX) or path == "/admin"
            if is_admin_listener(scope.get("server"), self.admin):
                if not (is_admin_path or path in READ_ONLY):
                    return await self._not_found(send, f"{self.admin} serves only admin")
            elif is_admin_path:
                return await self._not_found(send, "admin is served on its own listener")
        await self.app(scope, receive, send)

    async def _not_found(self, send: Send, detail: str) -> None:
        if self.app.worker is not None:
            self.app.worker.reject(Reject.NOT_FOUND)
        body = json.dumps({"error": Reject.NOT_FOUND.value, "detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_app() -> App | AdminSplit:
    """uvicorn factory for `rampart serve`'s workers (config from the environment, as
    `router.app.create_app`): a worker dies with its `rampart serve`."""
    lifeline.die_with_serve()
    app = worker_app.create_app()
    admin = app.config.serve.admin_address
    return app if admin is None else AdminSplit(app, admin)
