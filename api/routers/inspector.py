"""Inspectors in the field (信息采集员/监督员): reports with photo evidence, tracks, the worklist."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import orjson
from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import Field, ValidationError
from sqlalchemy import Connection, text
from starlette.concurrency import run_in_threadpool

from api.deps import Allow, DeferredAllow, TokenClaim, get_apool, get_city, get_conn
from api.uploads import read_photo_upload
from api.validation import INT64_MAX, MAX_OFFSET, Body
from gis.crs import CRSError
from layers.cases import workflow as lwf
from layers.core.city import CityInfo
from layers.core.errors import Conflict, InputError, NotFound
from layers.field import intake as lintake
from layers.field import photostore as lstore
from layers.field import reports as lreports

log = logging.getLogger("citygrid.field")



@asynccontextmanager
async def _lifespan(app):
    """At start: bring staged and stored photo files in line with the committed rows, and load the
    default city's grid index once now, rather than in every worker thread of the first burst of
    uploads at the same time."""
    engine = getattr(app.state, "engine", None)
    if engine is not None:
        lstore.recover_at_start(engine, "field_photo", lstore.PhotoStore.default(), log=log)
        try:
            from citygrid import settings
            from layers.core import city as lcity
            from layers.core import grid as lgrid

            with engine.connect() as conn:
                slug = settings.api().default_city
                if conn.execute(text("SELECT 1 FROM city WHERE slug = :s"), {"s": slug}).first():
                    lgrid.snapper(conn, lcity.get_city(conn, slug))
        except Exception as e:  # noqa: BLE001 - a server without its database still starts
            log.warning("grid preload skipped: %s", e)
    yield


router = APIRouter(prefix="/api/v1", tags=["inspector 信息采集"], lifespan=_lifespan)

INSPECTOR = Allow("inspector", "supervisor", "admin")
READERS = Allow("inspector", "operator", "supervisor", "admin")


def _forbid(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except lwf.Forbidden as e:
        raise HTTPException(403, f"无权限 {e}") from None


@router.post("/reports", summary="上报 File a report with 1–9 photos (multipart)", status_code=201,
             responses={200: {"description": "a retry with the same Idempotency-Key: the first result"},
                        201: {"description": "the report, its case (or the case it was merged into), cell, flags"}})
def create_report(
    category_code: str = Form(..., max_length=40, description="类别 case class code (GET /api/v1/catalog)"),
    photos: list[UploadFile] = File(..., description="1–9 photos: JPEG, PNG, WebP or HEIC"),
    description: str | None = Form(None, max_length=5000),
    lon: str | None = Form(None, max_length=40, description="device longitude (in crs)"),
    lat: str | None = Form(None, max_length=40, description="device latitude (in crs)"),
    accuracy: str | None = Form(None, max_length=40, description="horizontal accuracy in metres"),
    crs: str = Form("EPSG:4326", max_length=40, description="WGS-84 (default), EPSG:4490, GCJ-02 or BD-09"),
    device_time: str | None = Form(None, max_length=40, description="when the device took it (ISO 8601)"),
    asset_code: str | None = Form(None, max_length=16, description="the 16-digit code of the asset concerned"),
    address: str | None = Form(None, max_length=500),
    location_source: str | None = Form(None, pattern="^(gps|manual)?$",
                                       description="manual: lon/lat pinned by hand on the map (no GPS fix); flagged manual_pin"),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=100),
    user=Depends(INSPECTOR), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city),
):
    cfg = lreports.config()
    key = lreports.check_key(idempotency_key)
    if not photos:
        raise HTTPException(422, "photos: send 1 to 9 photos")
    if len(photos) > cfg["max_photos"]:
        raise HTTPException(422, f"{len(photos)} photos: at most {cfg['max_photos']} per report")
    raw = [read_photo_upload(i, f, cfg["max_photo_bytes"]) for i, f in enumerate(photos)]
    inp = lreports.ReportInput(category_code=category_code.strip(), description=description, lon=lon or None,
                               lat=lat or None, accuracy_m=accuracy or None, crs=crs, device_time=device_time,
                               asset_code=asset_code or None, address=address,
                               extra_flags=["manual_pin"] if location_source == "manual" else [])
    if location_source == "manual" and lon in (None, ""):
        raise HTTPException(422, "手动选点需要经纬度 — a manual pin needs lon and lat")
    req_hash = lreports.request_hash(inp, raw)
    first = lreports.find_existing(conn, user.id, key, req_hash)  # a retry: no decoding, no writing
    if first is not None:
        return JSONResponse(first, status_code=200, headers={"Idempotent-Replayed": "true"})
    prepared = [lreports.prepare_photo(i, f.filename, b) for i, (f, b) in enumerate(zip(photos, raw, strict=True))]
    store = lstore.PhotoStore.default()
    staged = store.new_stage()
    try:
        result, created = lreports.submit_report(conn, city, user, inp, prepared, key, req_hash, store, staged)
        conn.commit()
    except BaseException:
        staged.discard()
        raise
    staged.promote()
    if not created:
        return JSONResponse(result, status_code=200, headers={"Idempotent-Replayed": "true"})
    return JSONResponse(result, status_code=201)


class ReportJson(Body):
    category_code: str = Field(..., max_length=40, description="类别 case class code")
    lon: float | None = Field(None, description="device longitude (in crs)")
    lat: float | None = Field(None, description="device latitude (in crs)")
    accuracy: float | None = Field(None, description="horizontal accuracy in metres")
    crs: str = Field("EPSG:4326", max_length=40)
    description: str | None = Field(None, max_length=5000)
    device_time: str | None = Field(None, max_length=40)
    asset_code: str | None = Field(None, max_length=16)
    address: str | None = Field(None, max_length=500)


FAST_INSPECTOR = DeferredAllow("inspector", "supervisor", "admin")


def _report_input(body: ReportJson) -> lreports.ReportInput:
    return lreports.ReportInput(category_code=body.category_code.strip(), description=body.description, lon=body.lon,
                                lat=body.lat, accuracy_m=body.accuracy, crs=body.crs, device_time=body.device_time,
                                asset_code=body.asset_code, address=body.address)


def _file_with_asset(engine, claim: TokenClaim, slug: str, inp: lreports.ReportInput, key: str) -> dict:
    """The synchronous path, for reports that ask the asset registry: one transaction, committed here."""
    from layers.core import city as lcity
    from layers.core import users as lusers

    with engine.begin() as conn:
        user = claim.user or claim.gate.admit(*lusers.check_token(conn, claim.token))
        city = lcity.get_city(conn, slug)
        req_hash = lreports.request_hash(inp, [])
        store = lstore.PhotoStore.default()  # (a retry is answered by cg_file_report itself)
        result, created = lreports.submit_report(conn, city, user, inp, [], key, req_hash, store, store.new_stage(),
                                                 min_photos=0)
    return {"status": 201 if created else 200, "result": result}


@router.post("/reports/json", summary="上报 (无照片) File a report without photos (JSON; flagged no_photos)",
             status_code=201, openapi_extra={
                 "requestBody": {"required": True, "content": {"application/json": {
                     "schema": ReportJson.model_json_schema(ref_template="#/components/schemas/{model}")}}},
                 "parameters": [
                     {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
                      "description": "1–100 letters, digits and . _ : - ; a retry with the same key gets the first result"},
                     {"name": "city", "in": "query", "required": False, "schema": {"type": "string"},
                      "description": "城市 City slug (default: the configured city)"}]},
             responses={200: {"description": "a retry with the same Idempotency-Key: the first result"},
                        201: {"description": "the report, its case (or the case it was merged into), cell, flags"}})
async def create_report_json(request: Request, claim: TokenClaim = Depends(FAST_INSPECTOR)):
    """The fast intake (layers/field/intake.py): validated and snapped here, written by one database call
    that also checks the token. Any refusal is preceded by the token check, so a bad request from
    an unknown token is a 401 as everywhere else. (The header and the query parameter are read from
    the request, not declared, as the fast path reads them; the OpenAPI entry declares them.)
    The common case — a report recorded, or a retry — is answered before this route by
    :class:`api.fastpath.ReportIntakeFastPath`, with :func:`file_json_report` as here."""
    pool = await get_apool(request)
    raw = await read_capped(request, MAX_JSON_REPORT_BYTES)
    try:
        out = await file_json_report(request.app, pool, claim, raw,
                                     request.headers.get("idempotency-key"), request.query_params.get("city"))
    except REFUSALS:
        await claim.verify(pool)
        raise
    if out["status"] == 401:
        raise claim.gate.refused_token(out.get("reason"))
    if out["status"] == 403:
        claim.gate.check_role(out["role"])
    body = orjson.dumps(out["result"])
    if out["status"] == 200:
        return Response(body, status_code=200, media_type="application/json", headers={"Idempotent-Replayed": "true"})
    return Response(body, status_code=201, media_type="application/json")


#: What file_json_report raises for a report it refuses (nothing written).
REFUSALS = (RequestValidationError, InputError, CRSError, NotFound, Conflict)
MAX_JSON_REPORT_BYTES = 64 * 1024  # the longest fields allowed (5,000 characters of description …) take < 25 KB


async def read_capped(request: Request, cap: int) -> bytes:
    """The request body, or 413 as soon as it is larger than ``cap`` bytes (never read whole)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise HTTPException(413, f"the report is larger than {cap:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise HTTPException(413, f"the report is larger than {cap:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def file_json_report(app, pool, claim: TokenClaim, raw: bytes, idempotency_key: str | None,
                           city: str | None) -> dict:
    """A JSON report, validated, snapped and written (layers.field.intake.file_report); the answer is
    ``{"status": 201|200, "result": ...}`` or ``{"status": 401}`` / ``{"status": 403, "role": ...}``
    for the token. Raises RequestValidationError / InputError / CRSError / NotFound / Conflict for a
    refused report (nothing written). Shared by the route and its fast path."""
    from citygrid import settings

    try:
        body = ReportJson.model_validate_json(raw)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])}  # where FastAPI would say it is
                                      for err in e.errors(include_url=False, include_context=False)]) from None
    if city is not None and len(city) > 40:
        raise InputError("city: at most 40 characters")
    slug = city or settings.api().default_city
    inp = _report_input(body)
    key = lreports.check_key(idempotency_key)
    if lreports.needs_asset_lookup(inp) or claim.user is not None:  # (a session's user: checked already)
        return await run_in_threadpool(_file_with_asset, app.state.engine, claim, slug, inp, key)
    return await lintake.file_report(pool, app.state.places, slug, claim.token_hash, claim.gate.roles, inp, key)


@router.get("/reports", summary="上报列表 Reports (an inspector sees their own)")
def reports(mine: bool = False, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_OFFSET),
            user=Depends(READERS), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return lreports.list_reports(conn, city, user, mine=mine, limit=limit, offset=offset)


@router.get("/reports/{report_id}", summary="上报详情 One report as first acknowledged, with its case's state now")
def report(report_id: int = Path(..., ge=1, le=INT64_MAX), user=Depends(READERS), conn: Connection = Depends(get_conn, scope="function"),
           city: CityInfo = Depends(get_city)):
    return _forbid(lreports.get_report, conn, city, report_id, user)


@router.get("/reports/{report_id}/photos/{seq}/{variant}", summary="照片 A photo: public copy, thumbnail or the original")
def report_photo(report_id: int = Path(..., ge=1, le=INT64_MAX), seq: int = Path(..., ge=0, le=99),
                 variant: str = Path(..., pattern="^(public|thumb|original)$"),
                 user=Depends(READERS), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    data, media = _forbid(lreports.photo_file, conn, city, report_id, seq, variant, user, lstore.PhotoStore.default())
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=86400"})


@router.post("/tracks", summary="巡查轨迹 Upload a patrol track (GPX 1.1 or GeoJSON with times)", status_code=201)
def upload_track(file: UploadFile = File(..., description="GPX 1.1, or a GeoJSON LineString/points with times"),
                 crs: str = Form("EPSG:4326", max_length=40, description="WGS-84 (default), EPSG:4490, GCJ-02, BD-09"),
                 format: str = Form("auto", pattern="^(auto|gpx|geojson)$"),
                 user=Depends(INSPECTOR), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    from layers.field import patrols as lpatrols

    cap = lreports.config()["max_track_bytes"]
    data = file.file.read(cap + 1)
    if len(data) > cap:
        raise HTTPException(413, f"the track file is larger than {cap:,} bytes")
    return lpatrols.upload_tracks(conn, city, user, data, crs=crs, fmt=format)


@router.get("/worklist", summary="今日任务 Zones due today and cases waiting on site, overdue first")
def my_worklist(user=Depends(INSPECTOR), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    from layers.field import patrols as lpatrols

    return lpatrols.worklist(conn, city, user)
