"""Sign-in for the pages: a password (or a device's bearer token) opens a session kept in a cookie.

``POST /api/v1/auth/login`` answers the user and the session's CSRF token and sets the cookie
(HttpOnly, SameSite=Lax, Path=/, Secure when the request came over HTTPS — directly or, with
``CITYGRID_API_TRUSTED_PROXY_HOPS``, as X-Forwarded-Proto says). Unknown user and wrong password
get the same answer in the same time; failed sign-ins are limited per user name and per client
address (429 with Retry-After, a correct password too, while locked). ``POST /api/v1/auth/logout``
deletes the session server-side and clears the cookie; ``GET /api/v1/auth/me`` says who is signed
in (and, for a session, its CSRF token, which every cookie-authenticated write must send in
``X-CSRF-Token``: :func:`api.deps.check_csrf`). Bearer tokens keep working everywhere, without CSRF.
Neither passwords nor session ids are ever logged or answered.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import Field, model_validator
from sqlalchemy import Connection

from api.deps import PUBLIC, check_csrf, client_address, get_conn, session_cookie, session_of
from api.validation import Body
from citygrid import settings
from layers.core import sessions as lsessions
from layers.core import users as lusers
from layers.core.models import ROLE_LABELS

router = APIRouter(prefix="/api/v1/auth", tags=["auth 登录"])

REFUSED = "用户名或密码错误 wrong user name or password"
REFUSED_TOKEN = "令牌无效、已过期或已吊销 the token is unknown, expired or revoked"


class Login(Body):
    name: str | None = Field(None, min_length=1, max_length=80, description="用户名 user name")
    password: str | None = Field(None, min_length=1, max_length=lusers.MAX_PASSWORD_CHARS, description="密码 password")
    token: str | None = Field(None, min_length=1, max_length=200,
                              description="a bearer token instead (a device's or a demo link's): exchanged for a session")

    @model_validator(mode="after")
    def _one_way(self):
        if self.token is not None:
            if self.name is not None or self.password is not None:
                raise ValueError("give either name and password, or a token, not both")
        elif self.name is None or self.password is None:
            raise ValueError("请输入用户名和密码 name and password are required")
        return self


def is_https(request: Request) -> bool:
    """Whether the client reached us over HTTPS: the request's own scheme, or — behind trusted proxies
    (``CITYGRID_API_TRUSTED_PROXY_HOPS``) — the scheme X-Forwarded-Proto names for the outermost one."""
    if request.url.scheme == "https":
        return True
    hops = settings.api().trusted_proxy_hops
    if hops > 0:
        chain = [p.strip().lower() for h in request.headers.getlist("x-forwarded-proto") for p in h.split(",") if p.strip()]
        if chain:
            return (chain[-hops] if len(chain) >= hops else chain[0]) == "https"
    return False


def _same_origin(request: Request) -> None:
    """A sign-in posted by another site's page (login CSRF: the victim signed in as the attacker) is
    refused: a browser names the page's origin in Origin; it must be ours."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return
    host = request.headers.get("x-forwarded-host") if settings.api().trusted_proxy_hops > 0 else None
    host = (host or request.headers.get("host") or "").split(",")[0].strip().lower()
    if urlsplit(origin).netloc.lower() != host:
        raise HTTPException(403, "拒绝来自其他网站的登录 sign-in refused: the request comes from another site's page")


def _user_out(user: lusers.User) -> dict:
    return {"id": user.id, "name": user.name, "role": user.role, "role_label": ROLE_LABELS.get(user.role, user.role),
            "department": user.department, "area_code": user.area_code}


def set_session_cookie(request: Request, response: Response, session_id: str) -> None:
    cfg = settings.auth()
    response.set_cookie(cfg.session_cookie, session_id, max_age=int(cfg.session_hours * 3600), path="/",
                        httponly=True, samesite="lax", secure=is_https(request))


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(settings.auth().session_cookie, path="/", httponly=True, samesite="lax",
                           secure=is_https(request))


@router.post("/login", summary="登录 Sign in with a user name and password (or a bearer token): sets the session cookie",
             responses={401: {"description": "wrong user name or password (the same answer for an unknown user)"},
                        429: {"description": "too many failed sign-ins for this name or address: wait Retry-After seconds"}})
def login(body: Login, request: Request, response: Response, _=Depends(PUBLIC),
          conn: Connection = Depends(get_conn, scope="function")):
    _same_origin(request)
    try:
        keys = lsessions.check_lockout(conn, body.name, client_address(request))
    except lsessions.LockedOut as e:
        raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
    if body.token is not None:
        user, via = lusers.user_for_token(conn, body.token.strip()), "token"
    else:
        user, via = lusers.verify_password(conn, body.name, body.password), "password"
    if user is None:
        lsessions.record_failure(conn, keys)
        conn.commit()  # the failure is counted although the answer is an error
        raise HTTPException(401, REFUSED_TOKEN if via == "token" else REFUSED)
    lsessions.clear_failures(conn, keys)
    old = session_cookie(request)
    if old:  # a new sign-in replaces the browser's session (no fixation of an id set before)
        lsessions.end(conn, old)
    sid, sess = lsessions.open_session(conn, user.id, via)
    set_session_cookie(request, response, sid)
    response.headers["Cache-Control"] = "no-store"
    return {"user": _user_out(user), "csrf_token": sess.csrf_token, "expires_at": sess.expires_at, "via": via}


@router.post("/logout", summary="退出登录 Sign out: the session ends on the server and its cookie is cleared")
def logout(request: Request, response: Response, _=Depends(PUBLIC),
           conn: Connection = Depends(get_conn, scope="function")):
    sess = session_of(request, conn)
    if sess is not None:
        check_csrf(request, sess)  # another site's page may not sign the user out
    ended = lsessions.end(conn, session_cookie(request))
    clear_session_cookie(request, response)
    response.headers["Cache-Control"] = "no-store"
    return {"signed_out": ended}


@router.get("/me", summary="当前用户 Who is signed in: the user (null when nobody is) and, for a session, its CSRF "
                           "token for writes",
)
def me(request: Request, response: Response, _=Depends(PUBLIC), authorization: str | None = Header(None, include_in_schema=False),
       conn: Connection = Depends(get_conn, scope="function")):
    """A page asks this on opening: nobody signed in (no cookie, or its session ended) is a plain answer
    ``{"user": null}``, not an error; so is a bearer token that opens nothing, with the reason
    (``token_refused``: unknown, expired, revoked)."""
    response.headers["Cache-Control"] = "no-store"
    if authorization:
        scheme, _, token = authorization.partition(" ")
        user, why = (lusers.check_token(conn, token.strip()) if scheme.lower() == "bearer" and token.strip()
                     else (None, "unknown"))
        if user is None:
            return {"user": None, "via": None, "csrf_token": None, "expires_at": None, "token_refused": why}
        return {"user": _user_out(user), "via": "token", "csrf_token": None, "expires_at": None}
    sess = session_of(request, conn)
    if sess is None:
        if session_cookie(request):  # an ended session: its cookie goes too
            clear_session_cookie(request, response)
        return {"user": None, "via": None, "csrf_token": None, "expires_at": None}
    return {"user": _user_out(sess.user), "via": "session", "csrf_token": sess.csrf_token,
            "expires_at": sess.expires_at, "signed_in_with": sess.via}


@router.get("/oidc", summary="统一身份认证 Whether OpenID Connect sign-in is offered (for /login)")
def oidc_config(_=Depends(PUBLIC)):
    from api import oidc

    enabled = oidc.enabled()
    return {"enabled": enabled, "label": settings.auth().oidc_label if enabled else None}


def _oidc_redirect_uri(request: Request) -> str:
    return str(request.url_for("oidc_callback"))


def _safe_next(next_path: str | None) -> str:
    """Only a path of this site (never //host or a scheme: no open redirect)."""
    if next_path and next_path.startswith("/") and not next_path.startswith(("//", "/\\")) and len(next_path) <= 500:
        return next_path
    return "/"


def _oidc_off():
    return HTTPException(404, "未启用统一身份认证 OpenID Connect sign-in is not configured")


@router.get("/oidc/start", summary="统一身份认证登录 Start an OpenID Connect sign-in (redirects to the provider)",
            status_code=302, response_class=RedirectResponse)
def oidc_start(request: Request, next: str | None = Query(None, max_length=500), _=Depends(PUBLIC)):
    from api import oidc

    if not oidc.enabled():
        raise _oidc_off()
    try:
        url, cookie = oidc.start(_oidc_redirect_uri(request), _safe_next(next))
    except oidc.OidcError as e:
        return RedirectResponse("/login?sso_error=" + e.code, status_code=302)
    out = RedirectResponse(url, status_code=302)
    out.set_cookie(oidc.STATE_COOKIE, cookie, max_age=oidc.STATE_SECONDS, path="/api/v1/auth/oidc", httponly=True,
                   samesite="lax", secure=is_https(request))
    return out


@router.get("/oidc/callback", summary="统一身份认证回调 The provider's answer: opens a session, back to the page",
            status_code=302, response_class=RedirectResponse)
def oidc_callback(request: Request, code: str = Query(..., max_length=2000), state: str = Query(..., max_length=200),
                  _=Depends(PUBLIC), conn: Connection = Depends(get_conn, scope="function")):
    from api import oidc

    if not oidc.enabled():
        raise _oidc_off()
    try:
        keys = lsessions.check_lockout(conn, None, client_address(request))
    except lsessions.LockedOut as e:
        raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
    try:
        name, next_path = oidc.finish(_oidc_redirect_uri(request), code, state, request.cookies.get(oidc.STATE_COOKIE))
        user = lusers.active_user(conn, name)
        if user is None:
            raise oidc.OidcError("unknown_user", "no active user of that name")
    except oidc.OidcError as e:
        lsessions.record_failure(conn, keys)
        conn.commit()
        out = RedirectResponse("/login?sso_error=" + e.code, status_code=302)
        out.delete_cookie(oidc.STATE_COOKIE, path="/api/v1/auth/oidc")
        return out
    old = session_cookie(request)
    if old:
        lsessions.end(conn, old)
    sid, _sess = lsessions.open_session(conn, user.id, "oidc")
    out = RedirectResponse(_safe_next(next_path), status_code=302)
    set_session_cookie(request, out, sid)
    out.delete_cookie(oidc.STATE_COOKIE, path="/api/v1/auth/oidc")
    out.headers["Cache-Control"] = "no-store"
    return out
