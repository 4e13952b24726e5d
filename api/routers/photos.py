"""Case photos through the loop: every photo of a case (上报照片, 处置前/处置后, 核查照片) with its
thumbnail; the department's 处置反馈 with photos (multipart); the citizen's photos through the look-up
(signed addresses); the inspector page's service worker. Logic in layers/field/casephotos.py."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path as FsPath

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import Field
from sqlalchemy import Connection

from api import errors as api_errors
from api.deps import PUBLIC, Allow, client_address, get_city, get_conn
from api.limits import RateLimit
from api.uploads import read_photo_upload
from api.validation import INT64_MAX, Body
from layers.cases import citizen
from layers.core.city import CityInfo
from layers.core.errors import InputError
from layers.field import casephotos as lphotos
from layers.field import reports as lreports

log = logging.getLogger("citygrid.photos")
STATIC = FsPath(__file__).resolve().parents[2] / "static"


@asynccontextmanager
async def _lifespan(app):
    """At start: the feedback photo files in line with the committed rows."""
    engine = getattr(app.state, "engine", None)
    if engine is not None:
        lphotos.recover_at_start(engine, log)
    yield


router = APIRouter(tags=["photos 照片"], lifespan=_lifespan)
# Those who handle or check cases; planners read layers with scrubbed text and never case photos.
STAFF = Allow("inspector", "operator", "department", "supervisor", "admin")
FEEDBACK = Allow("department", "supervisor", "admin")
SOURCE = Path(..., pattern="^(report|citizen|wechat|feedback|verification)$")
REF = Path(..., max_length=80, pattern=r"^[0-9a-z.]+$")
VARIANT = Path(..., pattern="^(thumb|public)$")
#: photos are immutable (content-addressed), but a back-office photo must not outlive the sign-out in an
#: office PC's browser: private, and kept only for the time a case detail is looked at
PHOTO_CACHE = {"Cache-Control": "private, max-age=600"}


@router.get("/api/v1/cases/{case_id}/photos", summary="案件照片 Every photo of a case: kind, step, thumbnail")
def case_photos(case_id: int = Path(..., ge=1, le=INT64_MAX), user=Depends(STAFF),
                conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return lphotos.staff_list(conn, city, case_id, user)


@router.get("/api/v1/cases/{case_id}/photos/{source}/{ref}/{variant}",
            summary="照片 A photo of a case: thumbnail or the public copy (no EXIF)")
def case_photo(case_id: int = Path(..., ge=1, le=INT64_MAX), source: str = SOURCE, ref: str = REF,
               variant: str = VARIANT, user=Depends(STAFF), conn: Connection = Depends(get_conn, scope="function"),
               city: CityInfo = Depends(get_city)):
    data = lphotos.staff_photo(conn, city, case_id, source, ref, variant, user)
    return Response(data, media_type="image/jpeg", headers=PHOTO_CACHE)


FEEDBACK_FIELDS = ("note", "before", "after")


async def _known_feedback_fields(request: Request) -> None:
    """422 for a multipart field the feedback does not take (photos under another name, e.g. ``photos``
    as the on-site check's route calls them, would be dropped without a word). The form is parsed once
    (Starlette keeps it for the route's own parameters)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return
    unknown = sorted({k for k in (await request.form()).keys() if k not in FEEDBACK_FIELDS})
    if unknown:
        raise InputError(f"未知字段 {', '.join(unknown)[:200]} — unknown field(s) {', '.join(unknown)[:200]}: "
                         "send the photos as before (处置前) and after (处置后), the text as note")


@router.post("/api/v1/cases/{case_id}/feedback", status_code=201,
             summary="处置反馈 The department's feedback with its before/after photos (multipart)")
def feedback(case_id: int = Path(..., ge=1, le=INT64_MAX),
             note: str | None = Form(None, max_length=2000, description="反馈说明 what was done"),
             before: list[UploadFile] | None = File(None, description="处置前 photos (0–9)"),
             after: list[UploadFile] | None = File(None, description="处置后 photos (0–9; required by some classes)"),
             user=Depends(FEEDBACK), _fields=Depends(_known_feedback_fields),
             conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    cfg = lreports.config()
    before = [f for f in (before or []) if f.filename]
    after = [f for f in (after or []) if f.filename]
    for name, group in (("处置前 before", before), ("处置后 after", after)):
        if len(group) > cfg["max_photos"]:
            raise InputError(f"{name}: 最多 {cfg['max_photos']} 张照片 — at most {cfg['max_photos']} photos")
    lphotos.precheck_feedback(conn, city, case_id, user, len(after))  # 404/403/409/422 before decoding
    raw_b = [read_photo_upload(i, f, cfg["max_photo_bytes"]) for i, f in enumerate(before)]
    raw_a = [read_photo_upload(i, f, cfg["max_photo_bytes"]) for i, f in enumerate(after)]
    prep_b = [lreports.prepare_photo(i, f.filename, b) for i, (f, b) in enumerate(zip(before, raw_b, strict=True))]
    prep_a = [lreports.prepare_photo(i, f.filename, b) for i, (f, b) in enumerate(zip(after, raw_a, strict=True))]
    store = lphotos.feedback_store()
    staged = store.new_stage()
    try:
        out = lphotos.feedback_with_photos(conn, city, case_id, user, (note or "").strip() or None, prep_b, prep_a,
                                           store, staged)
        conn.commit()
    except BaseException:
        staged.discard()
        raise
    staged.promote()
    return JSONResponse(out, status_code=201)


class Lookup(Body):
    case_no: str = Field(..., min_length=1, max_length=40)
    query_code: str = Field(..., min_length=1, max_length=20)


@router.post("/api/v1/public/photos", summary="我的案件照片 The photos of your request (case number + query code)",
             responses={404: {"description": "no case with this number and code"}, 429: {"description": "too many wrong codes"}})
def lookup_photos(body: Lookup, request: Request, _=Depends(PUBLIC), _limit=Depends(RateLimit("lookup")),
                  conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    try:
        row = citizen._guarded_find(conn, city, body.case_no, body.query_code, client_address(request), "status")
    except citizen.TooManyAttempts as e:
        return JSONResponse({**api_errors.body(429, str(e), "too_many_requests"), "retry_after": e.retry_after},
                            status_code=429, headers={"Retry-After": str(e.retry_after)})
    except citizen.WrongCode as e:  # the same answer as /api/v1/public/status
        return JSONResponse(api_errors.coded_body(e), status_code=404)
    return {"case_no": row["case_no"], "photos": lphotos.lookup_photos(conn, row["id"])}


def _signed_address(case_id: int = Path(..., ge=1, le=INT64_MAX), source: str = SOURCE, ref: str = REF,
                    variant: str = VARIANT, exp: int = Query(..., ge=0, le=INT64_MAX),
                    sig: str = Query(..., min_length=32, max_length=32, pattern="^[0-9a-f]+$")) -> None:
    """Checked before a database connection is taken: a forged or expired address costs no connection."""
    lphotos.check_signed(case_id, source, ref, variant, exp, sig)


@router.get("/api/v1/public/case-photos/{case_id}/{source}/{ref}/{variant}",
            summary="市民照片 A photo at a signed address from the look-up (no EXIF)")
def public_photo(case_id: int = Path(..., ge=1, le=INT64_MAX), source: str = SOURCE, ref: str = REF,
                 variant: str = VARIANT, exp: int = Query(..., ge=0, le=INT64_MAX),
                 sig: str = Query(..., min_length=32, max_length=32, pattern="^[0-9a-f]+$"),
                 _=Depends(PUBLIC), _signed=Depends(_signed_address),
                 conn: Connection = Depends(get_conn, scope="function")):
    data = lphotos.public_photo(conn, case_id, source, ref, variant, exp, sig)
    # kept by the browser no longer than the address is valid (a shared computer forgets it with the link)
    left = max(0, min(86400, exp - int(time.time())))
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": f"private, max-age={left}"})


@router.get("/inspector-sw.js", include_in_schema=False)
def inspector_service_worker():
    """The inspector page's service worker, served from the root so that its scope may be /inspector."""
    return FileResponse(STATIC / "inspector" / "sw.js", media_type="text/javascript", headers={
        "Cache-Control": "no-cache", "Service-Worker-Allowed": "/inspector",
        "Content-Security-Policy": "default-src 'self'; connect-src 'self'; frame-ancestors 'none'"})
