"""The 12345 WeChat official account: its message server (``/wechat/{city}``), the H5 page's sign-in
by WeChat web authorisation, the signed-in citizen's own cases, and the chat's photos for staff.

The message server is PUBLIC for the role gate but answers only requests signed with the account's
token (and, in safe mode, encrypted with its AES key), inside the replay window, with a new nonce:
anything else is refused (403/400) and nothing is written. Logic in layers/channels/wechat.py.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from sqlalchemy import Connection

from api.deps import PUBLIC, Allow, get_city, get_conn
from api.limits import RateLimit
from api.validation import INT64_MAX
from layers.channels import wechat as lwx
from layers.core import city as lcity
from layers.core.city import CityInfo
from layers.core.errors import InputError, NotFound

log = logging.getLogger("citygrid.wechat")
COOKIE = "cg_wx"


@asynccontextmanager
async def _lifespan(app):
    """At start: the chat's photo files in line with the committed rows; the notification worker
    as a background task when ``CITYGRID_NOTIFY_IN_APP`` is set."""
    engine = getattr(app.state, "engine", None)
    stop = task = None
    if engine is not None:
        lwx.recover_at_start(engine, log)
        from citygrid import settings

        if settings.notify().in_app:
            import threading

            from layers.channels import notify

            stop = threading.Event()
            task = threading.Thread(target=notify.run_forever, args=(engine,), kwargs={"stop": stop},
                                    name="citygrid-notify", daemon=True)
            task.start()
    try:
        yield
    finally:
        if stop is not None:
            stop.set()
            task.join(timeout=10)


router = APIRouter(tags=["wechat 微信公众号"], lifespan=_lifespan)


def _account(slug: str) -> lwx.Account:
    acct = lwx.account(slug)
    if acct is None:
        raise NotFound(f"city '{slug}' has no WeChat account configured")
    return acct


def _refusal(e: lwx.Refused) -> PlainTextResponse:
    log.info("wechat request refused: %s", e)
    return PlainTextResponse(str(e), status_code=e.status)


@router.get("/wechat/{city}", summary="微信服务器地址校验 URL verification of the account's server",
            response_class=PlainTextResponse)
def verify_url(request: Request, city: str = Path(..., max_length=40), signature: str | None = Query(None, max_length=64),
               timestamp: str | None = Query(None, max_length=20), nonce: str | None = Query(None, max_length=100),
               echostr: str | None = Query(None, max_length=200), _=Depends(PUBLIC)):
    acct = _account(city)
    try:
        with request.app.state.engine.begin() as conn:
            info = lcity.get_city(conn, city)
            lwx.check_request(conn, info, acct, signature=signature, timestamp=timestamp, nonce=nonce)
    except lwx.Refused as e:
        return _refusal(e)
    if not echostr:
        raise InputError("echostr is missing")
    return PlainTextResponse(echostr)


def _render(reply: lwx.Reply | None, msg) -> str | None:
    from wechatpy.replies import ArticlesReply, TextReply

    if reply is None:
        return None
    if reply.articles:
        return ArticlesReply(message=msg, articles=reply.articles).render()
    return TextReply(message=msg, content=reply.text or "").render()


def _message_key(msg) -> str:
    """What identifies a message across WeChat's retries: MsgId, or for events sender + time + event."""
    if getattr(msg, "id", None):
        return f"m{msg.id}"
    at = int(msg.create_time.timestamp()) if msg.create_time else 0
    return f"e{msg.source}:{at}:{getattr(msg, 'event', '')}:{getattr(msg, 'key', '') or ''}"


def _process(engine, slug: str, q: dict, body: bytes) -> Response:
    from wechatpy import parse_message

    acct = _account(slug)
    store = lwx.photo_store()
    staged = store.new_stage()
    try:
        with engine.begin() as conn:
            city = lcity.get_city(conn, slug)
            lwx.check_request(conn, city, acct, signature=q.get("signature"), timestamp=q.get("timestamp"),
                              nonce=q.get("nonce"))
            xml = lwx.open_message(acct, body, timestamp=q["timestamp"], nonce=q["nonce"],
                                   encrypt_type=q.get("encrypt_type"), msg_signature=q.get("msg_signature"))
            try:
                msg = parse_message(xml)
            except Exception:  # noqa: BLE001 - not the XML of a message
                raise lwx.Refused(400, "the body is not a WeChat message") from None
            if not lwx._first_time(conn, city, "msg", _message_key(msg)[:120], 86400):
                out = None  # WeChat's retry of a message handled already
            else:
                ctx = lwx.Context(acct, wx=lwx.client(acct, engine), staged=staged)
                out = _render(lwx.handle(conn, city, ctx, msg), msg)
    except lwx.Refused as e:
        staged.discard()
        return _refusal(e)
    except BaseException:
        staged.discard()
        raise
    staged.promote()
    if out is None:
        return PlainTextResponse("success")
    return Response(lwx.seal_reply(acct, out, nonce=q["nonce"], timestamp=q["timestamp"]), media_type="application/xml")


@router.post("/wechat/{city}", summary="微信消息推送 Messages and events of the official account (XML)")
async def message(request: Request, city: str = Path(..., max_length=40), _=Depends(PUBLIC)):
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > lwx.MAX_BODY:
            return PlainTextResponse(f"the message is larger than {lwx.MAX_BODY} bytes", status_code=413)
    q = {k: v[:200] for k, v in request.query_params.items()}
    return await run_in_threadpool(_process, request.app.state.engine, city, q, body)


# -- the H5 page: sign-in by WeChat web authorisation (snsapi_base) -----------------------------------

def _next(url: str | None) -> str:
    return url if url and url.startswith("/public") and "//" not in url and "\\" not in url else "/public"


def _back_url(request: Request, city: str) -> str:
    """The sign-in's redirect_uri: on ``CITYGRID_WECHAT_PUBLIC_BASE`` (the domain registered with
    WeChat, behind a proxy) or, without it, on the address the request came to."""
    from citygrid import settings

    base = settings.wechat().public_base
    if base:
        return base.rstrip("/") + f"/wechat/{quote(city)}/oauth"
    return str(request.url_for("oauth_back", city=city))


@router.get("/wechat/{city}/oauth/start", summary="网页授权 Start the WeChat sign-in of the H5 page")
def oauth_start(request: Request, city: str = Path(..., max_length=40), next: str | None = Query(None, max_length=200),
                _=Depends(PUBLIC)):
    acct = _account(city)
    back = _back_url(request, city) + "?next=" + quote(_next(next), safe="")
    return RedirectResponse(lwx.oauth(acct, back, state="cg").authorize_url, status_code=302)


@router.get("/wechat/{city}/oauth", name="oauth_back", summary="网页授权回调 WeChat sign-in: code → openid")
def oauth_back(request: Request, city: str = Path(..., max_length=40), code: str | None = Query(None, max_length=200),
               next: str | None = Query(None, max_length=200), _=Depends(PUBLIC),
               _limit=Depends(RateLimit("lookup"))):
    # Anonymous, and each request costs a call to WeChat: limited per address like the look-ups, and
    # no database connection is held while WeChat answers.
    acct = _account(city)
    openid = lwx.openid_for_code(acct, code or "", _back_url(request, city))
    with request.app.state.engine.begin() as conn:
        token = lwx.open_session(conn, lcity.get_city(conn, city), openid)
    target = _next(next)
    sep = "&" if "?" in target else "?"
    r = RedirectResponse(f"{target}{sep}city={quote(city)}", status_code=302)
    from citygrid import settings

    r.set_cookie(f"{COOKIE}_{city}", token, max_age=settings.wechat().session_days * 86400, httponly=True,
                 samesite="lax", secure=request.url.scheme == "https", path="/")
    return r


@router.get("/api/v1/public/wechat/me", summary="我的诉求 The cases of the citizen signed in by WeChat (H5 page)")
def my_cases(request: Request, _=Depends(PUBLIC), conn: Connection = Depends(get_conn, scope="function"),
             city: CityInfo = Depends(get_city)):
    openid = lwx.session_openid(conn, city, request.cookies.get(f"{COOKIE}_{city.slug}"))
    acct = lwx.account(city.slug)
    if openid is None:
        return {"signed_in": False, "cases": [],
                "authorize": f"/wechat/{city.slug}/oauth/start?next=/public" if acct and acct.secret else None}
    return {"signed_in": True, "cases": lwx.my_cases(conn, city, openid)}


STAFF = Allow("inspector", "operator", "department", "supervisor", "admin")


@router.get("/api/v1/cases/{case_id}/wechat-photos/{photo_id}/{variant}",
            summary="微信照片 A photo a citizen sent in the chat (public copy or thumbnail)")
def wechat_photo(case_id: int = Path(..., ge=1, le=INT64_MAX), photo_id: int = Path(..., ge=1, le=INT64_MAX),
                 variant: str = Path(..., pattern="^(public|thumb)$"), user=Depends(STAFF),
                 conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    data, media_type = lwx.photo_file(conn, city, case_id, photo_id, variant, user)
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=86400"})

