"""The operator's page: `GET /dashboard` and its assets, served from package data.

No build step and no network: the page is plain HTML and CSS plus one script
that polls `/status` once a second and draws its charts as inline SVG. Assets
are read once, at start. Their URLs carry a content hash, so a browser may keep
them for a year, while the page itself is revalidated on every load (an
upgraded sidecar serves a new page that names new asset URLs).

URLs in the page are relative (`dashboard/static/...`, `status`), so it also
works behind a reverse proxy that mounts Rampart under a path prefix.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

PAGE = "dashboard.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# Everything the page loads comes from Rampart itself; charts are DOM-built SVG.
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str  # quoted, as sent

    @classmethod
    def of(cls, body: bytes, content_type: str) -> Asset:
        return cls(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:16]}"')

    @property
    def version(self) -> str:
        return self.etag.strip('"')


class Dashboard:
    """The page and the static files under `router/static/`, held in memory."""

    def __init__(self) -> None:
        root = importlib.resources.files("router") / "static"
        assets: dict[str, Asset] = {}
        for entry in root.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in CONTENT_TYPES:
                assets[entry.name] = Asset.of(entry.read_bytes(), CONTENT_TYPES[suffix])
        template = assets.pop(PAGE, None)
        if template is None:
            raise RuntimeError(f"router/static/{PAGE} is missing: the package was built without it")
        # The page names each asset by its content hash: {{app.js}} -> dashboard/static/app.js?v=…
        html = template.body.decode()
        for name, asset in assets.items():
            html = html.replace("{{" + name + "}}", f"dashboard/static/{name}?v={asset.version}")
        self.page = Asset.of(html.encode(), CONTENT_TYPES[".html"])
        self.assets = assets

    def routes(self) -> list[Route]:
        return [
            Route("/dashboard", self.serve_page, methods=["GET"]),
            Route("/dashboard/static/{name}", self.serve_asset, methods=["GET"]),
        ]

    async def serve_page(self, request: Request) -> Response:
        return _answer(request, self.page, REVALIDATE)

    async def serve_asset(self, request: Request) -> Response:
        asset = self.assets.get(request.path_params["name"])
        if asset is None:
            return PlainTextResponse("no such asset", status_code=404)
        current = request.query_params.get("v") == asset.version
        return _answer(request, asset, IMMUTABLE if current else REVALIDATE)


def _answer(request: Request, asset: Asset, cache_control: str) -> Response:
    headers = {"etag": asset.etag, "cache-control": cache_control, **SECURITY_HEADERS}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, headers=headers, media_type=asset.content_type)
