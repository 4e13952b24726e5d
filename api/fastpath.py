"""A pure-ASGI fast path for cached public vector tiles: an anonymous request for a tile that is in
the cache is answered before FastAPI's routing and dependency machinery (which cost more than the
answer itself). Everything else, including every tile that is not cached, goes on to the app."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from fastapi.responses import Response

from citygrid import settings
from layers import tiles as ltiles

TILE_PATH = re.compile(r"^/api/v1/tiles/([A-Za-z0-9_]{1,60})/(\d{1,2})/(\d{1,8})/(\d{1,8})\.mvt$")


class CachedTileFastPath:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            m = TILE_PATH.match(scope["path"])
            if m is not None:
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                if "authorization" not in headers:
                    response = self._cached(scope, m, headers)
                    if response is not None:
                        await response(scope, receive, send)
                        return
        await self.app(scope, receive, send)

    @staticmethod
    def _cached(scope, m, headers):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        slug = query.get("city", [settings.api().default_city])[0]
        name, z, x, y = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        try:
            hit = ltiles.fast_hit(scope["app"].state.engine, slug, name, z, x, y)
        except Exception:  # anything unusual: let the app answer (and explain) it
            return None
        if hit is None:
            return None
        return tile_response(hit[0], hit[1], True, True, headers.get("if-none-match"),
                              headers.get("accept-encoding"))


def tile_response(data: bytes, etag: str, hit: bool, public: bool, if_none_match: str | None,
                   accept_encoding: str | None = None) -> Response:
    """An encoded tile with its ETag (304 when it matches), cache headers, gzip when accepted."""
    gzip_ok = len(data) >= ltiles.GZIP_MIN_BYTES and "gzip" in (accept_encoding or "").lower()
    tag = etag[:-1] + '-gz"' if gzip_ok else etag  # a strong ETag per representation
    headers = {"ETag": tag, "Cache-Control": f"{'public' if public else 'private'}, max-age=60",
               "X-Tile-Cache": "hit" if hit else "miss", "Vary": "Authorization, Accept-Encoding"}
    if if_none_match and tag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    if gzip_ok:
        headers["Content-Encoding"] = "gzip"
        data = ltiles.gzipped(etag, data)
    return Response(data, media_type="application/vnd.mapbox-vector-tile", headers=headers)
