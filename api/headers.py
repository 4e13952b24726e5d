"""Security headers on every response (pure ASGI middleware).

* ``Content-Security-Policy`` of the pages (``/``, ``/<page>``, ``/static/…``): scripts, styles, fonts and XHR from this origin only; the pages' inline
  ``<script>`` blocks are allowed by their sha256 (computed from ``static/`` when the app is made, so a
  page edited keeps working and an injected script does not run); inline style attributes are allowed
  (the pages and Leaflet set them); images from this origin, ``data:``/``blob:`` (Leaflet, photo
  previews) and the configured base map's host; no plugins; no framing (``frame-ancestors 'none'``);
  forms post only here. The OpenAPI pages (``/docs``, ``/redoc``) load Swagger UI / ReDoc from their
  CDN with an inline starter script: they get a policy that allows those. Responses that are not HTML
  (JSON, files, tiles) get ``default-src 'none'``: nothing in them may run.
* ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` (older browsers),
  ``Referrer-Policy: strict-origin-when-cross-origin`` (``no-referrer`` for the API), and
  ``Cross-Origin-Opener-Policy: same-origin``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from urllib.parse import urlsplit

_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)


def inline_script_hashes(static: Path) -> list[str]:
    """CSP source expressions ('sha256-…') of every inline script of the pages under ``static``."""
    out = set()
    for page in sorted(Path(static).rglob("*.html")):
        if "vendor" in page.parts:
            continue
        for body in _INLINE_SCRIPT.findall(page.read_text(encoding="utf-8")):
            digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()
            out.add(f"'sha256-{digest}'")
    return sorted(out)


def _origin(url: str | None) -> str | None:
    """``scheme://host[:port]`` of a tile URL template (``{s}`` subdomains become a wildcard)."""
    if not url:
        return None
    parts = urlsplit(url.replace("{s}", "a"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    host = parts.netloc
    if "{s}" in url.split("/")[2]:
        host = "*." + host.split(".", 1)[1] if "." in host else host
    return f"{parts.scheme}://{host}"


def page_policy(static: Path, basemap_url: str | None = None, tile_hosts: list[str] | tuple = ()) -> str:
    """The pages' policy; ``tile_hosts``: the exact origins of the configured base maps' tiles
    (``api.basemaps.tile_hosts``), allowed as images and nothing else."""
    scripts = " ".join(["'self'", *inline_script_hashes(static)])
    hosts = dict.fromkeys([*(h for h in [_origin(basemap_url)] if h), *tile_hosts])
    images = " ".join(["'self'", "data:", "blob:", *hosts])
    return "; ".join([
        "default-src 'self'", f"script-src {scripts}", "style-src 'self' 'unsafe-inline'",
        f"img-src {images}", "font-src 'self' data:", "connect-src 'self'", "worker-src 'self' blob:",
        "object-src 'none'", "base-uri 'self'", "form-action 'self'", "frame-ancestors 'none'",
    ])


#: The OpenAPI pages of FastAPI: Swagger UI and ReDoc from jsDelivr, each started by an inline script.
DOCS_POLICY = "; ".join([
    "default-src 'self'", "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net",
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com",
    "font-src 'self' data: https://fonts.gstatic.com", "img-src 'self' data: https://fastapi.tiangolo.com",
    "connect-src 'self'", "worker-src 'self' blob:", "object-src 'none'", "base-uri 'self'",
    "frame-ancestors 'none'",
])
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")
PAGES = ("inspector", "supervisor", "planner", "public", "operator", "login", "admin")


class SecurityHeaders:
    """Adds the headers above to every HTTP response (a header the route set itself is kept)."""

    def __init__(self, app, static: Path, basemap_url: str | None = None, tile_hosts: list[str] | tuple = ()):
        self.app = app
        common = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                  (b"cross-origin-opener-policy", b"same-origin")]
        self.page = [*common, (b"content-security-policy", page_policy(static, basemap_url, tile_hosts).encode()),
                     (b"referrer-policy", b"strict-origin-when-cross-origin")]
        self.docs = [*common, (b"content-security-policy", DOCS_POLICY.encode()),
                     (b"referrer-policy", b"strict-origin-when-cross-origin")]
        # Other HTML (reports, maps and OGC pages made by the service, some with a CDN's scripts): no
        # plugins, no framing, no foreign base.
        self.other_html = [*common, (b"content-security-policy",
                                     b"object-src 'none'; base-uri 'self'; frame-ancestors 'none'"),
                           (b"referrer-policy", b"strict-origin-when-cross-origin")]
        # JSON, files, tiles: nothing in them may run or be framed.
        self.api = [*common, (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
                    (b"referrer-policy", b"no-referrer")]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        docs = path in DOCS_PATHS
        page = path == "/" or path.startswith("/static/") or path.strip("/") in PAGES

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                media = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if docs:
                    extra = self.docs
                elif page:  # the pages and their scripts, styles, images
                    extra = self.page
                else:
                    extra = self.other_html if media.startswith(b"text/html") else self.api
                headers += [(k, v) for k, v in extra if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
