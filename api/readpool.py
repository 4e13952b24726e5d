"""Read-only heavy work on the read replica (``CITYGRID_DB_READ_URL``), without "my report vanished".

* The app's lifespan opens a read engine when the setting is given (:func:`open_read_pool`); without it
  :func:`api.deps.get_read_conn` is :func:`api.deps.get_conn`'s transaction on the primary, as before.
* :class:`WalMark` (pure ASGI, outermost) remembers, after every successful write request (POST, PUT,
  PATCH, DELETE), the primary's WAL position: per bearer token in this process, and in a cookie
  (``citygrid_wal``) that the browser sends back to every worker, and in the answer's ``X-Citygrid-Wal``
  header (an API client may send it back: its reads then see that write on any worker).
* :func:`api.deps.get_read_conn` (:func:`read_conn`) gives a connection to the replica when it has replayed the caller's last write
  (``pg_last_wal_replay_lsn()`` ≥ that position) — else, or when the replica cannot be reached (it is
  then left alone for a few seconds), a transaction on the primary. ``request.state.read_from`` and the
  answer's ``X-Citygrid-Read`` header say which one served.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi import Request
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from citygrid import settings

COOKIE = "citygrid_wal"
#: The same position as a header: answered on every write, and read on a request that sends it back (API
#: clients without cookies that want their writes read back on any worker process).
HEADER = "x-citygrid-wal"
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
#: The request being served (set by WalMark): its WAL floor and where its reads went. A context variable,
#: so that code run in a worker thread without the request (the tiles) still knows them.
_current: contextvars.ContextVar[dict | None] = contextvars.ContextVar("citygrid_read", default=None)
#: primary engine -> its read pool (for code that has the engine, not the app)
_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def parse_lsn(value: str | None) -> int | None:
    """``'16/B374D848'`` → an integer (None for anything else)."""
    if not value:
        return None
    hi, sep, lo = value.partition("/")
    try:
        return (int(hi, 16) << 32) | int(lo, 16) if sep else None
    except ValueError:
        return None


def format_lsn(n: int) -> str:
    return f"{n >> 32:X}/{n & 0xFFFFFFFF:X}"


class ReadPool:
    """The replica's engine, the callers' last write positions, and whether the replica is away."""

    def __init__(self, engine, *, down_seconds: float = 5.0, max_keys: int = 100_000):
        self.engine = engine
        self.down_seconds = down_seconds
        self.max_keys = max_keys
        self._down_until = 0.0
        self._lsn: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, key: str, lsn: int) -> None:
        with self._lock:
            if lsn > self._lsn.get(key, -1):
                self._lsn[key] = lsn
            self._lsn.move_to_end(key)
            while len(self._lsn) > self.max_keys:
                self._lsn.popitem(last=False)

    def last(self, key: str | None) -> int | None:
        if key is None:
            return None
        with self._lock:
            return self._lsn.get(key)

    def up(self) -> bool:
        return time.monotonic() >= self._down_until

    def mark_down(self) -> None:
        self._down_until = time.monotonic() + self.down_seconds


def caller_key(headers) -> str | None:
    """The caller's key: its bearer token (hashed; never kept in clear), else None."""
    auth = headers.get("authorization")
    if not auth:
        return None
    return hashlib.sha256(auth.strip().encode()).hexdigest()


def open_read_pool(app) -> None:
    """In the lifespan: the read engine when ``CITYGRID_DB_READ_URL`` is set (created lazily: a replica
    that is away does not stop the server from starting)."""
    url = settings.replica().read_url
    if not url:
        app.state.read_pool = None
        return
    from citygrid.dbcluster import normalise_url
    from layers.core.db import make_read_engine

    app.state.read_pool = ReadPool(make_read_engine(normalise_url(url)))
    _pools[app.state.engine] = app.state.read_pool


def close_read_pool(app) -> None:
    pool = getattr(app.state, "read_pool", None)
    if pool is not None:
        pool.engine.dispose()


def wal_floor(request, pool: ReadPool) -> int | None:
    """The WAL position the caller's reads must see: its last write (token, cookie), if any."""
    known = [pool.last(caller_key(request.headers)), parse_lsn(request.cookies.get(COOKIE)),
             parse_lsn(request.headers.get(HEADER))]
    known = [k for k in known if k is not None]
    return max(known) if known else None


def _replica_conn(pool: ReadPool, floor: int | None, engine=None) -> Connection | None:
    """A connection to the replica (from ``engine``, default the pool's) if it is reachable and has
    replayed ``floor``; else None."""
    if not pool.up():
        return None
    try:
        conn = (engine or pool.engine).connect()
    except SQLAlchemyError:
        pool.mark_down()
        return None
    try:
        if floor is not None:
            replayed = conn.execute(text("SELECT pg_last_wal_replay_lsn()::text")).scalar()
            conn.rollback()  # the request's own transaction begins afresh
            # NULL: not a standby (the URL names a primary), which has every write
            if replayed is not None and parse_lsn(replayed) < floor:
                conn.close()
                return None
        return conn
    except SQLAlchemyError:
        conn.close()
        pool.mark_down()
        return None


def _replica_for(request: Request, engine_for: Callable | None = None) -> Connection | None:
    """A replica connection for this request when the replica has the caller's own writes (from
    ``engine_for(replica engine)`` if given, else the replica pool), else None; the answer's
    ``X-Citygrid-Read`` (WalMark) says which one the request reads."""
    pool: ReadPool | None = getattr(request.app.state, "read_pool", None)
    conn = None
    if pool is not None:
        conn = _replica_conn(pool, wal_floor(request, pool), engine_for(pool.engine) if engine_for else None)
    where = "replica" if conn is not None else "primary"
    request.state.read_from = where
    _note_where(where)
    return conn


def read_conn(request: Request, primary: Connection) -> Iterator[Connection]:
    """A transaction for read-only heavy work: on the replica when it has the caller's own writes, else
    ``primary``, the request's own transaction (``api.deps.get_read_conn`` passes it: a request then holds
    one primary connection, not two, and a burst of map tiles cannot take the pool twice over). Never
    write through it."""
    conn = _replica_for(request)
    if conn is None:
        yield primary
        return
    with conn, conn.begin():
        yield conn


def job_read_conn(request: Request, engine_for: Callable | None = None) -> Connection | None:
    """For work that outlives the request (a background export job): a connection to the replica, not in a
    transaction, when it has replayed the caller's own writes — drawn from ``engine_for(replica engine)``
    (the jobs' own pool: a job holds its connection for minutes and must not draw on the requests' pool).
    None: the work reads the primary. The caller owns the connection (closes it)."""
    return _replica_for(request, engine_for)


def _note_where(where: str) -> None:
    cur = _current.get()
    if cur is not None:
        cur["where"] = where


@contextmanager
def reading(engine, fallback: Connection | None = None, replica_ok: bool = True) -> Iterator[Connection]:
    """:func:`read_conn` for code that has the primary ``engine`` (not the request), e.g. in a worker
    thread: the replica's connection in a transaction when it has the current request's writes (and
    ``replica_ok``: False for rows that must be read on the primary, a computed layer just refreshed);
    else ``fallback`` (a primary connection the caller already holds) or a transaction of the primary's."""
    pool: ReadPool | None = _pools.get(engine) if replica_ok else None
    cur = _current.get()
    conn = _replica_conn(pool, cur.get("floor") if cur else None) if pool is not None else None
    _note_where("replica" if conn is not None else "primary")
    if conn is not None:
        with conn, conn.begin():
            yield conn
    elif fallback is not None:
        yield fallback
    else:
        with engine.begin() as c:
            yield c


class WalMark:
    """Remembers the primary's WAL position after each successful write request (see the module)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        app = scope["app"]
        pool: ReadPool | None = getattr(app.state, "read_pool", None)
        if pool is None:
            return await self.app(scope, receive, send)
        write = scope["method"] not in SAFE
        scope.setdefault("state", {})  # shared with the request below: get_read_conn's note lands here
        from starlette.requests import HTTPConnection

        conn = HTTPConnection(scope)
        floor = wal_floor(conn, pool)
        cur = {"floor": floor}
        token = _current.set(cur)

        async def send_marked(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                where = scope.get("state", {}).get("read_from") or cur.get("where")
                if where:  # which server answered a read (set by get_read_conn)
                    headers.append((b"x-citygrid-read", where.encode()))
                signed_in = "authorization" in conn.headers or bool(conn.cookies.get(settings.auth().session_cookie))
                if write and message["status"] < 400 and signed_in:  # anonymous writers read from the primary
                    lsn = await _current_lsn(app)
                    if lsn is not None:
                        from starlette.datastructures import Headers

                        key = caller_key(Headers(scope=scope))
                        if key:
                            pool.note(key, lsn)
                        cookie = f"{COOKIE}={format_lsn(lsn)}; Path=/; Max-Age=600; HttpOnly; SameSite=Strict"
                        headers.append((b"set-cookie", cookie.encode()))
                        headers.append((HEADER.encode(), format_lsn(lsn).encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_marked)
        finally:
            _current.reset(token)


async def _current_lsn(app) -> int | None:
    """The primary's WAL insert position now (after the request's commit): the point a reader must see."""
    from starlette.concurrency import run_in_threadpool

    def query():
        with app.state.engine.connect() as conn:
            return conn.execute(text("SELECT pg_current_wal_insert_lsn()::text")).scalar()

    try:
        return parse_lsn(await run_in_threadpool(query))
    except Exception:  # noqa: BLE001 - a database that is away: nothing to remember
        return None
