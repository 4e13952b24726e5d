"""The routed answer of a vector tile (ETag, 304, cache headers, gzip), shared by the tile route and
the cached-tile fast path (api/fastpath.py), which sends the same headers."""

from __future__ import annotations

from fastapi.responses import Response

from layers.publish import tiles as ltiles

MEDIA = "application/vnd.mapbox-vector-tile"
VARY = "Authorization, Cookie, Accept-Encoding"  # a session cookie may see a fuller form than anonymous


def tile_response(data: bytes, etag: str, hit: bool, public: bool, if_none_match: str | None,
                   accept_encoding: str | None = None) -> Response:
    """An encoded tile with its ETag (304 when it matches), cache headers, gzip when accepted (the
    routed answer; the fast path of api/fastpath.py sends the same headers)."""
    gzip_ok = len(data) >= ltiles.GZIP_MIN_BYTES and "gzip" in (accept_encoding or "").lower()
    tag = etag[:-1] + '-gz"' if gzip_ok else etag  # a strong ETag per representation
    headers = {"ETag": tag, "Cache-Control": f"{'public' if public else 'private'}, max-age=60",
               "X-Tile-Cache": "hit" if hit else "miss", "Vary": VARY}
    if if_none_match and tag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    if gzip_ok:
        headers["Content-Encoding"] = "gzip"
        data = ltiles.gzipped(etag, data)
    return Response(data, media_type=MEDIA, headers=headers)
