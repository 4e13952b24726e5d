"""Open311 GeoReport v2 at /open311/v2: discovery, services, service definitions, requests (GET and
POST), tokens; XML and JSON; errors as a list of {code, description}. Logic in layers/cases/open311.py.

POST needs ``api_key`` — a token of a role that may record cases (layers.cases.open311.FILER_ROLES) — in the
form body; one in the URL is refused (URLs end up in proxy and server logs). Request lists page
(``page``, ``page_size``) and say in their headers how many matched and whether the page is cut."""

from __future__ import annotations

from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import Connection

from api.deps import PUBLIC, get_conn
from api.validation import form_problem
from citygrid import settings
from layers.cases import open311 as o3
from layers.core import city as lcity
from layers.core import users as lusers
from layers.core.errors import NotFound

router = APIRouter(prefix="/open311/v2", tags=["Open311 GeoReport v2"])
FORMATS = {"xml": "text/xml; charset=utf-8", "json": "application/json"}


def _out(fmt: str, root: str, obj, status: int = 200, headers: dict | None = None) -> Response:
    if fmt == "json":
        return Response(orjson.dumps(obj), status_code=status, media_type=FORMATS["json"], headers=headers)
    return Response(o3.to_xml(root, obj), status_code=status, media_type=FORMATS["xml"], headers=headers)


def _error(fmt: str, code: int, description: str) -> Response:
    errs = [{"code": code, "description": description}]
    return _out(fmt if fmt in FORMATS else "xml", "errors", errs, status=code)


def _run(fmt: str, root: str, fn, *args):
    if fmt not in FORMATS:
        return _error("xml", 404, f"format '{fmt[:10]}' is not supported: use .xml or .json")
    try:
        return _out(fmt, root, fn(*args))
    except o3.Open311Error as e:
        return _error(fmt, e.code, e.description)


def _city(conn: Connection, request: Request, slug: str | None = None):
    slug = slug or request.query_params.get("jurisdiction_id") or settings.api().default_city
    try:
        return lcity.get_city(conn, slug[:40])
    except NotFound:
        raise o3.Open311Error(404, f"jurisdiction_id '{slug[:40]}' not found") from None


@router.get("/discovery.{fmt}", summary="Open311 discovery")
def discovery(fmt: str, request: Request, _=Depends(PUBLIC)):
    base = str(request.base_url).rstrip("/") + "/open311/v2"
    return _run(fmt, "discovery", o3.discovery, base)


@router.get("/services.{fmt}", summary="Open311 service list (the case classes)")
def services(fmt: str, request: Request, _=Depends(PUBLIC), conn: Connection = Depends(get_conn, scope="function")):
    def go():
        _city(conn, request)
        return o3.services()

    return _run(fmt, "services", go)


@router.get("/services/{code}.{fmt}", summary="Open311 service definition")
def service_definition(code: str, fmt: str, request: Request, _=Depends(PUBLIC), conn: Connection = Depends(get_conn, scope="function")):
    def go():
        _city(conn, request)
        return o3.service_definition(code)

    return _run(fmt, "service_definition", go)


PAGED = {"description": "One page of requests, newest first. Headers: X-Total-Count (requests that matched), "
                        "X-Page, X-Page-Size, X-Truncated (true when more matched than this page holds) and "
                        "Link rel=\"next\" (the next page) when there is one",
         "headers": {h: {"schema": {"type": t}} for h, t in (("X-Total-Count", "integer"), ("X-Page", "integer"),
                                                             ("X-Page-Size", "integer"), ("X-Truncated", "boolean"),
                                                             ("Link", "string"))}}


def _page_headers(request: Request, page: o3.RequestPage) -> dict:
    h = {"X-Total-Count": str(page.total), "X-Page": str(page.page), "X-Page-Size": str(page.page_size),
         "X-Truncated": "true" if page.truncated else "false"}
    if page.has_next:
        q = {k: v for k, v in request.query_params.items() if k != "page"} | {"page": str(page.page + 1)}
        h["Link"] = f'<{request.url.path}?{urlencode(q)}>; rel="next"'
    return h


@router.get("/requests.{fmt}", summary="Open311 service requests (paged: page, page_size ≤ 200, default 50)",
            responses={200: PAGED})
def get_requests(fmt: str, request: Request, _=Depends(PUBLIC), conn: Connection = Depends(get_conn, scope="function")):
    if fmt not in FORMATS:
        return _error("xml", 404, f"format '{fmt[:10]}' is not supported: use .xml or .json")
    try:
        page = o3.request_page(conn, _city(conn, request), dict(request.query_params))
    except o3.Open311Error as e:
        return _error(fmt, e.code, e.description)
    return _out(fmt, "service_requests", page.items, headers=_page_headers(request, page))


@router.post("/requests.{fmt}", summary="Open311 create a service request (form-encoded; api_key in the body)")
async def post_request(fmt: str, request: Request, _=Depends(PUBLIC), conn: Connection = Depends(get_conn, scope="function")):
    if fmt not in FORMATS:
        return _error("xml", 404, f"format '{fmt[:10]}' is not supported: use .xml or .json")
    if "api_key" in request.query_params:
        return _error(fmt, 400, "api_key must be sent in the form body, not in the URL (URLs are kept in "
                                "server and proxy logs); the request was not created")
    try:
        form = await request.form()
    except Exception:  # noqa: BLE001 - a body that is not a form
        return _error(fmt, 400, "the body must be application/x-www-form-urlencoded")
    fields = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    refused = form_problem(form.multi_items())  # (the query parameters were checked by ParameterGuard)
    if refused is not None:
        return _error(fmt, 422, f"{refused[0]}: {refused[1]}")

    def file_it():  # the token check and the write: database work, off the event loop
        key = (fields.get("api_key") or "").strip()
        user = lusers.user_for_token(conn, key) if key else None
        if user is None:
            return _error(fmt, 403, "a valid api_key is required in the form body to create requests")
        if user.role not in o3.FILER_ROLES:
            return _error(fmt, 403, f"the api_key's role '{user.role}' may not create requests; "
                                    f"keys of these roles may: {', '.join(o3.FILER_ROLES)}")

        def go():
            return o3.post_request(conn, _city(conn, request, fields.get("jurisdiction_id")), fields, user)

        return _run(fmt, "service_requests", go)

    return await run_in_threadpool(file_it)


@router.get("/requests/{request_id}.{fmt}", summary="Open311 one service request")
def get_request(request_id: str, fmt: str, request: Request, _=Depends(PUBLIC), conn: Connection = Depends(get_conn, scope="function")):
    return _run(fmt, "service_requests", lambda: o3.get_request(conn, _city(conn, request), request_id))


@router.get("/tokens/{token}.{fmt}", summary="Open311 request id from a token")
def get_token(token: str, fmt: str, request: Request, _=Depends(PUBLIC), conn: Connection = Depends(get_conn, scope="function")):
    return _run(fmt, "service_requests", lambda: o3.token(conn, _city(conn, request), token))
