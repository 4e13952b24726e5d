"""Limits that keep one client from stalling or exhausting the service, and a database outage from
looking like a crash:

* :class:`BodyLimit` — a pure-ASGI cap on request bodies: 413 before the body is read when
  Content-Length says more than the route may take, and as soon as a streamed body (no length)
  passes it. Default ``CITYGRID_API_MAX_BODY_BYTES`` (1 MiB); uploads and imports have their own caps
  (:func:`body_cap`).
* :class:`RateLimits` / :class:`RateLimit` — requests per client address (``api.deps.client_address``,
  which honours ``CITYGRID_API_TRUSTED_PROXY_HOPS``; an IPv6 address counts by its /64) for anonymous
  submissions, look-ups and exports; 429 with Retry-After. Counted by the ``limits`` library (moving
  window) in ``CITYGRID_API_RATE_LIMIT_STORAGE``: ``database://`` (default, :class:`DatabaseStorage`)
  in the app's own PostgreSQL, shared by every worker process and host; ``redis://…`` the same off the
  database; ``memory://`` per process (with N worker processes a client gets N times the limit). The
  look-up limits on wrong query codes are counted in PostgreSQL apart (migration 0015).
* :class:`DatabaseUnavailable` — 503 with Retry-After (never a 500) when the database cannot be reached:
  connection refused or lost, pool exhausted, the server shutting down.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time

from fastapi import HTTPException, Request

from citygrid import settings

log = logging.getLogger("citygrid")


# -- body size -------------------------------------------------------------------------------------

def _field_photos_cap() -> int:
    from layers.field import reports

    cfg = reports.config()
    return cfg["max_photos"] * cfg["max_photo_bytes"] + (1 << 20)


def _feedback_photos_cap() -> int:
    """The department's 处置反馈: up to max_photos before and max_photos after photos."""
    return 2 * _field_photos_cap()


def _track_cap() -> int:
    from layers.field import reports

    return reports.config()["max_track_bytes"] + (1 << 20)


def _upload_cap() -> int:
    return settings.api().max_upload_bytes + (1 << 20)


#: (method, path pattern, cap in bytes): routes that take more than the default. A multipart body carries
#: a little more than its files (boundaries, the other fields): 1 MiB on top.
ROUTE_CAPS: list[tuple[str, re.Pattern, object]] = [
    ("POST", re.compile(r"/api/v1/public/requests"), lambda: settings.api().max_submit_bytes),
    ("POST", re.compile(r"/api/v1/snap"), lambda: settings.api().max_snap_body_bytes),
    ("POST", re.compile(r"/api/v1/reports"), _field_photos_cap),
    ("POST", re.compile(r"/api/v1/cases/\d+/verify"), _field_photos_cap),
    ("POST", re.compile(r"/api/v1/cases/\d+/feedback"), _feedback_photos_cap),
    ("POST", re.compile(r"/api/v1/tracks"), _track_cap),
    ("POST", re.compile(r"/api/v1/(cases/import|admin/assets/import|zones/import|admin/cities(/[^/]+/grids)?)"),
     _upload_cap),
]


def body_cap(method: str, path: str) -> int:
    """The largest body a request to ``path`` may send, in bytes."""
    for m, pattern, cap in ROUTE_CAPS:
        if m == method and pattern.fullmatch(path):
            return int(cap())
    return settings.api().max_body_bytes


class BodyTooLarge(HTTPException):
    def __init__(self, cap: int):
        super().__init__(413, f"请求体过大 request body larger than {cap:,} bytes, the limit of this endpoint")


def _json_answer(status: int, detail: str, headers: dict[str, str] | None = None):
    from api.errors import body as error_body  # detail + code + Chinese message, as every error answer

    body = json.dumps(error_body(status, detail), ensure_ascii=False).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return ({"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": body})


class _TrackedSend:
    """``send`` that remembers whether the answer has begun (after that, an error cannot be answered
    any more: it is raised on)."""

    def __init__(self, send):
        self.send, self.started = send, False

    async def __call__(self, message):
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


async def _answer(send, status: int, detail: str, headers: dict[str, str]) -> None:
    start, body = _json_answer(status, detail, headers)
    await send(start)
    await send(body)


class BodyLimit:
    """Pure ASGI middleware: the body cap of :func:`body_cap`. A request whose Content-Length is over the
    cap is answered 413 at once (its body never read; the connection is closed after the answer); a body
    without a length is counted while it streams in and refused when it passes the cap (the app's read
    raises :class:`BodyTooLarge`, answered 413 here when the app has not answered yet)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        cap = body_cap(scope["method"], scope["path"])
        length = None
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = None
                break
        if length is not None and length > cap:
            return await _answer(send, 413, BodyTooLarge(cap).detail, {"Connection": "close"})
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge(cap)
            return message

        tracked = _TrackedSend(send)
        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge as e:
            if tracked.started:
                raise
            await _answer(send, 413, e.detail, {"Connection": "close"})


# -- rate limits -----------------------------------------------------------------------------------

def _database_storage_class():
    """:class:`limits.storage.Storage` in the app's own PostgreSQL (``database://``), made on first use
    (the ``limits`` registry knows a scheme once its class exists)."""
    global DatabaseStorage
    if DatabaseStorage is not None:
        return DatabaseStorage
    import random

    from limits.storage import MovingWindowSupport, Storage
    from sqlalchemy import text

    class _DatabaseStorage(Storage, MovingWindowSupport):
        """Rate-limit counters in two UNLOGGED tables of the app's database (migration 0022), so that
        every worker process (and every host of one database) counts a client once. The moving window
        keeps one row per request (``rate_limit_event``); a key's entries are read and written under a
        transaction-scoped advisory lock on the key, so two processes never both take the last entry.
        The engine is the app's (:meth:`bind`, done by :func:`rate_limits` on the first request)."""

        STORAGE_SCHEME = ["database"]

        def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options):
            super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
            self.engine = None

        def bind(self, engine) -> None:
            self.engine = engine

        @property
        def base_exceptions(self):
            import sqlalchemy.exc

            return sqlalchemy.exc.SQLAlchemyError

        def _tx(self):
            if self.engine is None:
                raise RuntimeError("the database rate-limit storage is not bound to an engine")
            return self.engine.begin()

        def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
            if amount > limit:
                return False
            now = time.time()
            with self._tx() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 1215))"), {"k": key})
                conn.execute(text("DELETE FROM rate_limit_event WHERE key = :k AND at < :t"),
                             {"k": key, "t": now - expiry})
                if random.random() < 0.001:  # keys nobody uses any more: their rows go now and then
                    conn.execute(text("DELETE FROM rate_limit_event WHERE at < :t"), {"t": now - 2 * 86400})
                    conn.execute(text("DELETE FROM rate_limit_counter WHERE expires_at < :t"), {"t": now})
                used = conn.execute(text("SELECT count(*) FROM rate_limit_event WHERE key = :k AND at >= :t"),
                                    {"k": key, "t": now - expiry}).scalar_one()
                if used + amount > limit:
                    return False
                conn.execute(text("INSERT INTO rate_limit_event (key, at) SELECT :k, :t FROM generate_series(1, :a)"),
                             {"k": key, "t": now, "a": amount})
            return True

        def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
            now = time.time()
            with self._tx() as conn:
                oldest, n = conn.execute(text("""
                    SELECT min(at), count(*) FROM (SELECT at FROM rate_limit_event WHERE key = :k AND at >= :t
                                                   ORDER BY at DESC LIMIT :l) w"""),
                    {"k": key, "t": now - expiry, "l": limit}).one()
            return (float(oldest), int(n)) if n else (now, 0)

        def incr(self, key: str, expiry: int, amount: int = 1) -> int:
            now = time.time()
            with self._tx() as conn:
                return int(conn.execute(text("""
                    INSERT INTO rate_limit_counter AS c (key, n, expires_at) VALUES (:k, :a, :e)
                    ON CONFLICT (key) DO UPDATE SET
                        n = CASE WHEN c.expires_at <= :now THEN EXCLUDED.n ELSE c.n + EXCLUDED.n END,
                        expires_at = CASE WHEN c.expires_at <= :now THEN EXCLUDED.expires_at ELSE c.expires_at END
                    RETURNING n"""), {"k": key, "a": amount, "e": now + expiry, "now": now}).scalar_one())

        def get(self, key: str) -> int:
            with self._tx() as conn:
                n = conn.execute(text("SELECT n FROM rate_limit_counter WHERE key = :k AND expires_at > :now"),
                                 {"k": key, "now": time.time()}).scalar()
            return int(n or 0)

        def get_expiry(self, key: str) -> float:
            with self._tx() as conn:
                e = conn.execute(text("SELECT expires_at FROM rate_limit_counter WHERE key = :k"),
                                 {"k": key}).scalar()
            return float(e) if e is not None else time.time()

        def check(self) -> bool:
            try:
                with self._tx() as conn:
                    conn.execute(text("SELECT 1"))
                return True
            except Exception:  # noqa: BLE001 - health check
                return False

        def reset(self) -> int | None:
            with self._tx() as conn:
                n = conn.execute(text("DELETE FROM rate_limit_event")).rowcount
                n += conn.execute(text("DELETE FROM rate_limit_counter")).rowcount
            return n

        def clear(self, key: str) -> None:
            with self._tx() as conn:
                conn.execute(text("DELETE FROM rate_limit_event WHERE key = :k"), {"k": key})
                conn.execute(text("DELETE FROM rate_limit_counter WHERE key = :k"), {"k": key})

    DatabaseStorage = _DatabaseStorage
    return DatabaseStorage


DatabaseStorage = None


class RateLimits:
    """The rate limits of one app (``app.state.rate_limits``), read from the settings when it is made."""

    SCOPES = ("submit", "lookup", "export")

    def __init__(self, cfg: settings.ApiSettings | None = None):
        from limits import parse_many, storage, strategies

        cfg = cfg or settings.api()
        if cfg.rate_limit_storage.startswith("database:"):
            _database_storage_class()
        self.storage = storage.storage_from_string(cfg.rate_limit_storage)
        self.limiter = strategies.MovingWindowRateLimiter(self.storage)
        self.rules = {scope: parse_many(getattr(cfg, f"rate_limit_{scope}")) for scope in self.SCOPES}

    def bind(self, engine) -> None:
        """The app's engine, for the ``database://`` storage (the others need none)."""
        if hasattr(self.storage, "bind") and getattr(self.storage, "engine", None) is None:
            self.storage.bind(engine)

    def hit(self, scope: str, client: str) -> None:
        """Count one request of ``client`` in ``scope``; HTTPException 429 (with Retry-After) when one of
        the scope's limits is reached (the refused request is not counted)."""
        from layers.core.sessions import address_source

        key = address_source(client)
        rules = self.rules[scope]

        def refuse(rule):
            reset, _ = self.limiter.get_window_stats(rule, scope, key)
            wait = max(1, math.ceil(reset - time.time()))
            return HTTPException(429, f"请求过于频繁 too many requests from your address ({scope}: at most {rule}); "
                                      f"try again in {wait} s", headers={"Retry-After": str(wait)})

        for rule in rules:
            if not self.limiter.test(rule, scope, key):
                raise refuse(rule)
        # The test above is a look, not a claim: two requests (two threads, two worker processes) may both
        # see the last entry free. The hit is the claim (atomic in the storage): a refused one is a 429.
        for rule in rules:
            if not self.limiter.hit(rule, scope, key):
                raise refuse(rule)


def rate_limits(app) -> RateLimits:
    limits = getattr(app.state, "rate_limits", None)
    if limits is None:
        limits = app.state.rate_limits = RateLimits()
    engine = getattr(app.state, "engine", None)
    if engine is not None:
        limits.bind(engine)
    return limits


class RateLimit:
    """Dependency: count the request against the client address's limit of ``scope`` (429 when over)."""

    def __init__(self, scope: str):
        if scope not in RateLimits.SCOPES:
            raise ValueError(f"unknown rate-limit scope {scope!r}")
        self.scope = scope

    def __repr__(self) -> str:
        return f"RateLimit({self.scope})"

    def __call__(self, request: Request) -> None:
        from api.deps import client_address

        rate_limits(request.app).hit(self.scope, client_address(request))


# -- database unavailable --------------------------------------------------------------------------

def _unavailable_types() -> tuple[type[BaseException], ...]:
    import psycopg
    import sqlalchemy.exc as sa

    kinds: list[type[BaseException]] = [sa.OperationalError, sa.TimeoutError, sa.DisconnectionError,
                                         psycopg.OperationalError, ConnectionRefusedError, ConnectionResetError]
    try:
        import asyncpg

        kinds += [asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.CannotConnectNowError,
                  asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.TooManyConnectionsError,
                  asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


UNAVAILABLE = _unavailable_types()
UNAVAILABLE_DETAIL = "数据库暂不可用 the database cannot be reached right now: try again later"


#: SQLSTATE classes of a server that is not there: connection exceptions, insufficient resources (too many
#: connections), operator intervention (shutting down, starting up).
_UNAVAILABLE_STATES = ("08", "53", "57P")


def is_unavailable(e: BaseException) -> bool:
    """True for an error of a database that cannot be reached (also when wrapped, e.g. by SQLAlchemy).
    An error the server answered for a statement (a timeout, a deadlock: an SQLSTATE of another class)
    is not one."""
    seen = 0
    while e is not None and seen < 5:
        if isinstance(e, UNAVAILABLE):
            state = getattr(e, "sqlstate", None)
            if state is None and getattr(e, "orig", None) is not None:
                state = getattr(e.orig, "sqlstate", None)
            return state is None or state.startswith(_UNAVAILABLE_STATES)
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


class DatabaseUnavailable:
    """Pure ASGI middleware: a database that cannot be reached — raised by a route, a dependency or a
    fast path — is answered 503 with Retry-After (``CITYGRID_API_DB_RETRY_AFTER_S``), not 500."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        tracked = _TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            if tracked.started or not is_unavailable(e):
                raise
            log.warning("database unavailable (%s %s): %s", scope["method"], scope["path"], type(e).__name__)
            await _answer(send, 503, UNAVAILABLE_DETAIL, {"Retry-After": str(settings.api().db_retry_after_s)})
