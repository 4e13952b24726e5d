"""A pure-ASGI fast path for cached public vector tiles: an anonymous request for a tile that is in
the cache is answered before FastAPI's routing and dependency machinery (which cost more than the
answer itself). Everything else, including every tile that is not cached, goes on to the app.

The answer is sent as two raw ASGI messages with header lists built once (no Response object, no
decoding of every request header): what is left per request is the regex, a dict look-up and the send."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

import orjson
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect, Request

from api.deps import Allow, TokenClaim, apool_of, has_session_cookie
from api.routers import inspector
from api.tile_answer import MEDIA, VARY
from citygrid import settings
from layers.publish import tiles as ltiles

TILE_PATH = re.compile(r"^/api/v1/tiles/([A-Za-z0-9_]{1,60})/(\d{1,2})/(\d{1,8})/(\d{1,8})\.mvt$")

# The headers every cached public tile answer has (besides its ETag, length and encoding).
_HIT_HEADERS = [(b"cache-control", b"public, max-age=60"), (b"x-tile-cache", b"hit"), (b"vary", VARY.encode())]
_HIT_200 = [*_HIT_HEADERS, (b"content-type", MEDIA.encode())]
_GZIP = (b"content-encoding", b"gzip")


class CachedTileFastPath:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            m = TILE_PATH.match(scope["path"])
            if m is not None:
                inm = accept = None
                for k, v in scope["headers"]:
                    if k == b"authorization":
                        break
                    if k == b"if-none-match":
                        inm = v
                    elif k == b"accept-encoding":
                        accept = v
                else:
                    answer = None if has_session_cookie(scope) else self._cached(scope, m, inm, accept)
                    if answer is not None:
                        await send(answer[0])
                        await send(answer[1])
                        return
        await self.app(scope, receive, send)

    @staticmethod
    def _cached(scope, m, if_none_match: bytes | None, accept_encoding: bytes | None):
        qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if qs.keys() - {"city"}:  # anything else (a datetime window …) asks for another tile: the app answers
            return None
        slug = qs.get("city", [None])[0] or settings.api().default_city
        name, z, x, y = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        try:
            hit = ltiles.fast_hit(scope["app"].state.engine, slug, name, z, x, y)
        except Exception:  # anything unusual: let the app answer (and explain) it
            return None
        if hit is None:
            return None
        data, etag = hit
        gzip_ok = len(data) >= ltiles.GZIP_MIN_BYTES and accept_encoding is not None and b"gzip" in accept_encoding.lower()
        tag = (etag[:-1] + '-gz"' if gzip_ok else etag).encode()
        if if_none_match is not None and tag in [t.strip() for t in if_none_match.split(b",")]:
            return ({"type": "http.response.start", "status": 304, "headers": [(b"etag", tag), *_HIT_HEADERS]},
                    {"type": "http.response.body", "body": b""})
        if gzip_ok:
            data = ltiles.gzipped(etag, data)
            headers = [(b"etag", tag), *_HIT_200, _GZIP, (b"content-length", str(len(data)).encode())]
        else:
            headers = [(b"etag", tag), *_HIT_200, (b"content-length", str(len(data)).encode())]
        return ({"type": "http.response.start", "status": 200, "headers": headers},
                {"type": "http.response.body", "body": data})


REPORT_PATH = "/api/v1/reports/json"
_JSON = (b"content-type", b"application/json")
_REPLAYED = (b"idempotent-replayed", b"true")


class ReportIntakeFastPath:
    """``POST /api/v1/reports/json`` answered before FastAPI's routing and dependency machinery when
    it is the common case: a bearer token, and a report recorded (201) or a retry (200). That
    machinery costs as much server time as the intake's own work (validation, snapping, the plan).

    The work is the route's own (:func:`api.routers.inspector.file_json_report`), and the request is
    read as the route reads it (the first Authorization and Idempotency-Key header, the last city
    parameter). A request without a bearer token goes to the route unread (401 there); a body over
    ``inspector.MAX_JSON_REPORT_BYTES`` is a 413 here as there. A refusal — a body or field refused,
    401/403 from the database — is handed on to the route with the body replayed, which answers and
    explains it as always: a refused report wrote nothing, so it costs only the time of asking twice.
    Any other error is not retried: it propagates, as from the route. ``app.state.intake_fast_path``
    counts both outcomes, for the tests."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != REPORT_PATH:
            await self.app(scope, receive, send)
            return
        auth = key = None
        for k, v in scope["headers"]:
            if k == b"authorization" and auth is None:
                auth = v.decode("latin-1")
            elif k == b"idempotency-key" and key is None:
                key = v.decode("latin-1")
        counts = _counts(scope["app"])
        try:
            token = Allow.bearer(auth)
        except HTTPException:  # the route says what is wrong with the header, without reading the body
            counts["handed_on"] += 1
            await self.app(scope, receive, send)
            return
        try:
            raw = await inspector.read_capped(Request(scope, receive), inspector.MAX_JSON_REPORT_BYTES)
        except HTTPException as e:  # 413
            from api.errors import body as error_body

            await JSONResponse(error_body(e.status_code, e.detail), status_code=e.status_code)(scope, receive, send)
            return
        except ClientDisconnect:
            return
        answer = await self._answer(scope, token, key, raw)
        if answer is not None:
            counts["answered"] += 1
            await send(answer[0])
            await send(answer[1])
            return
        counts["handed_on"] += 1
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _answer(scope, token: str, key: str | None, raw: bytes):
        qs = scope.get("query_string", b"")
        city = parse_qs(qs.decode("latin-1")).get("city", [None])[-1] if qs else None
        app = scope["app"]
        pool = await apool_of(app)
        try:
            out = await inspector.file_json_report(app, pool, TokenClaim(inspector.FAST_INSPECTOR, token), raw, key,
                                                   city)
        except (*inspector.REFUSALS, HTTPException):
            return None  # refused, nothing written: the route answers it
        status = out["status"]
        if status not in (200, 201):
            return None
        body = orjson.dumps(out["result"])
        headers = [_JSON, (b"content-length", str(len(body)).encode())]
        if status == 200:
            headers.append(_REPLAYED)
        return ({"type": "http.response.start", "status": status, "headers": headers},
                {"type": "http.response.body", "body": body})


def _counts(app) -> dict:
    counts = getattr(app.state, "intake_fast_path", None)
    if counts is None:
        counts = app.state.intake_fast_path = {"answered": 0, "handed_on": 0}
    return counts
