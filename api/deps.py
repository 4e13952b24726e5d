"""Dependencies shared by the routers: a connection per request, the city, and role checks.

Every endpoint declares who may call it with ``Depends(Allow(...))`` (or ``PUBLIC``); the role
matrix test reads these declarations from the routes.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import Depends, Header, HTTPException, Query, Request
from sqlalchemy import Connection

from citygrid import settings
from layers.core import city as lcity
from layers.core import sessions as lsessions
from layers.core import users as lusers
from layers.core.models import ROLES


def get_conn(request: Request) -> Iterator[Connection]:
    """One transaction per request: committed when the endpoint returns, rolled back on any error.

    Always declare it as ``Depends(get_conn, scope="function")``: the commit then happens before the
    response is sent, so nothing is acknowledged that is not stored, and a client that reads right
    after a write sees it (FastAPI's default scope would commit after the response).
    """
    with request.app.state.engine.begin() as conn:
        yield conn


# Read-only heavy work (tiles, exports, OGC items, analytics, bulletins) may use the read replica:
# ``Depends(get_read_conn, scope="function")`` (api/readpool.py; the primary without CITYGRID_DB_READ_URL).
from api import readpool  # noqa: E402  (the read replica's hook)


def get_read_conn(request: Request, conn: Connection = Depends(get_conn, scope="function")) -> Iterator[Connection]:
    """A transaction on the read replica when it has the caller's own writes, else the request's own
    transaction on the primary (the same connection as :func:`get_conn`'s: one per request, not two)."""
    yield from readpool.read_conn(request, conn)


def get_city(conn: Connection = Depends(get_conn, scope="function"),
             city: str | None = Query(None, description="城市 City slug (default: the configured city)",
                                      max_length=40)) -> lcity.CityInfo:
    return lcity.get_city(conn, city or settings.api().default_city)


#: Methods that write: a cookie-authenticated request with one of them must carry X-CSRF-Token.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "x-csrf-token"


def session_cookie(request: Request) -> str | None:
    """The session id of the request's cookie, if any (never logged)."""
    return request.cookies.get(settings.auth().session_cookie) or None


def has_session_cookie(scope) -> bool:
    """Whether an ASGI scope carries the session cookie (for the pure-ASGI fast paths, which must not
    answer such a request anonymously)."""
    name = settings.auth().session_cookie.encode() + b"="
    return any(k == b"cookie" and name in v for k, v in scope["headers"])


def session_of(request: Request, conn: Connection) -> lsessions.Session | None:
    """The live session of the request's cookie (checked once per request), else None."""
    cached = getattr(request.state, "cg_session", False)
    if cached is not False:
        return cached
    sess = lsessions.check(conn, session_cookie(request))
    request.state.cg_session = sess
    return sess


def check_csrf(request: Request, sess: lsessions.Session) -> None:
    """403 for a cookie-authenticated write without the session's CSRF token in X-CSRF-Token."""
    if request.method not in WRITE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(sent.encode(), sess.csrf_token.encode()):
        raise HTTPException(403, "缺少或错误的 CSRF 令牌，请刷新页面后重试 missing or wrong X-CSRF-Token: a write "
                                 "signed in by the session cookie must send the session's CSRF token (reload the page)")


def session_user(request: Request, conn: Connection) -> lusers.User:
    """The user of the request's session cookie (401 when it has none or it has ended), its CSRF
    token checked on writes (403)."""
    sess = session_of(request, conn)
    if sess is None:
        raise HTTPException(401, "登录已过期，请重新登录 session expired or signed out: sign in again",
                            headers={"WWW-Authenticate": "Bearer"})
    check_csrf(request, sess)
    return sess.user


def optional_user(request: Request | None, conn: Connection, authorization: str | None) -> lusers.User | None:
    """The caller of a route open to all that shows staff more: the user of a valid bearer token or
    live session cookie (its CSRF token checked on writes), else None (anonymous)."""
    if not authorization:
        if request is None or not session_cookie(request):
            return None
        sess = session_of(request, conn)
        if sess is None:
            return None
        check_csrf(request, sess)
        return sess.user
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return lusers.user_for_token(conn, token.strip())


class Allow:
    """Role gate: 401 without a valid bearer token or session cookie, 403 when the user's role is not
    listed (or, for a cookie-authenticated write, without the session's CSRF token). A bearer token,
    when sent, is what counts (API clients and devices: no CSRF token)."""

    def __init__(self, *roles: str, public: bool = False):
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {unknown}")
        self.roles = frozenset(roles)
        self.public = public

    def __repr__(self) -> str:
        return "PUBLIC" if self.public else f"Allow({', '.join(sorted(self.roles))})"

    def __call__(self, request: Request, conn: Connection = Depends(get_conn, scope="function"),
                 authorization: str | None = Header(None, include_in_schema=False)) -> lusers.User | None:
        if self.public:
            return None
        if not authorization and session_cookie(request):
            user = session_user(request, conn)
            self.check_role(user.role)
            return user
        return self.admit(*lusers.check_token(conn, self.bearer(authorization)))

    @staticmethod
    def bearer(authorization: str | None) -> str:
        """The token of an ``Authorization: Bearer …`` header; 401 without one."""
        if not authorization:
            raise HTTPException(401, "未登录，请先登录 authentication required: sign in, or send "
                                     "'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "the Authorization header must be 'Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        return token.strip()

    def admit(self, user: lusers.User | None, why: str | None = None) -> lusers.User:
        """``user`` (of a token), or 401 when there is none (``why``: unknown, expired, revoked —
        :func:`layers.core.users.check_token`), 403 when its role is not allowed."""
        if user is None:
            raise self.refused_token(why)
        self.check_role(user.role)
        return user

    @staticmethod
    def refused_token(why: str | None = None) -> HTTPException:
        """The 401 for a token that is unknown, expired or revoked."""
        msg = lusers.REFUSED.get(why or "unknown", lusers.REFUSED["unknown"])
        return HTTPException(401, msg, headers={"WWW-Authenticate": "Bearer"})

    @classmethod
    def unknown_token(cls) -> HTTPException:
        return cls.refused_token("unknown")

    def check_role(self, role: str) -> None:
        if role not in self.roles:
            raise HTTPException(403, f"无权限 role '{role}' may not do this; allowed: {', '.join(sorted(self.roles))}")


@dataclass(frozen=True)
class TokenClaim:
    """A bearer token not yet checked, and the gate it must pass (see :class:`DeferredAllow`)."""

    gate: Allow
    token: str
    #: The user of a session cookie, already checked (role and CSRF token) by :class:`DeferredAllow`:
    #: then there is no token, and the endpoint writes as this user.
    user: lusers.User | None = None

    @property
    def token_hash(self) -> str:
        return lusers.hash_token(self.token)

    async def verify(self, pool) -> None:
        """Check the token now, in a query of its own (asyncpg ``pool``): 401 / 403 as :class:`Allow`."""
        if self.user is not None:
            return
        row = await pool.fetchrow("""
            SELECT role, CASE WHEN token_revoked_at IS NOT NULL THEN 'revoked'
                              WHEN token_expires_at <= now() THEN 'expired' END AS refused
            FROM app_user WHERE token_hash = $1 AND active""", self.token_hash)
        if row is None or row["refused"]:
            raise self.gate.refused_token(row["refused"] if row else "unknown")
        self.gate.check_role(row["role"])


class DeferredAllow(Allow):
    """The same gate for an endpoint that checks the token in its own single database round trip
    (the fast intake): here only the header is read (401 without a bearer token); the endpoint gets
    a :class:`TokenClaim` and must verify it — in its write, or with :meth:`TokenClaim.verify` before
    it answers anything else (a bad request from an unknown token is still a 401)."""

    async def __call__(self, request: Request,
                       authorization: str | None = Header(None, include_in_schema=False)) -> TokenClaim:
        # async: FastAPI would run a plain function in a worker thread, a thread hop per request
        if not authorization and session_cookie(request):  # a page signed in by its cookie: checked now
            from starlette.concurrency import run_in_threadpool

            user = await run_in_threadpool(self._session_user, request)
            self.check_role(user.role)
            return TokenClaim(self, "", user)
        return TokenClaim(self, self.bearer(authorization))

    @staticmethod
    def _session_user(request: Request) -> lusers.User:
        with request.app.state.engine.begin() as conn:
            return session_user(request, conn)


def client_address(request: Request) -> str:
    """The client's address: the socket's, or — when ``CITYGRID_API_TRUSTED_PROXY_HOPS`` says that n
    proxies stand in front — the n-th address from the end of X-Forwarded-For (the one the outermost
    trusted proxy saw; what the client wrote before it is not believed)."""
    peer = request.client.host if request.client else ""
    hops = settings.api().trusted_proxy_hops
    if hops > 0:
        chain = [a.strip() for h in request.headers.getlist("x-forwarded-for") for a in h.split(",") if a.strip()]
        if chain:
            return chain[-hops] if len(chain) >= hops else chain[0]
    return peer


class _Public(Allow):
    """No role needed, and no database connection taken: a route that reads the database asks for its
    own (so that an anonymous request refused by a check before it, e.g. a rate limit or a signature,
    costs no connection)."""

    def __init__(self):
        super().__init__(public=True)

    def __call__(self) -> None:
        return None


PUBLIC = _Public()
STAFF = Allow(*ROLES)
ADMIN = Allow("admin")


async def get_apool(request: Request):
    """The asyncpg pool of this event loop (made on first use: a server whose database is down still
    starts, and an app served by two loops — a test client beside a live server — gets one each)."""
    return await apool_of(request.app)


async def apool_of(app):
    """:func:`get_apool` for code that has the app, not a request (a pure-ASGI fast path)."""
    import asyncio

    from layers.core.db import create_async_pool

    state = app.state
    loop = asyncio.get_running_loop()
    if not hasattr(state, "apools"):
        state.apools, state.apool_locks = {}, {}
    pool = state.apools.get(loop)
    if pool is None:
        async with state.apool_locks.setdefault(loop, asyncio.Lock()):
            pool = state.apools.get(loop)
            if pool is None:
                pool = state.apools[loop] = await create_async_pool(state.database_url)
    return pool


async def close_apool(app) -> None:
    """Close the pool of the running loop, if one was made (the app's lifespan ends)."""
    import asyncio

    pool = getattr(app.state, "apools", {}).pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()
