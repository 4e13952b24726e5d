"""On-site verification (核查) with real photos: the inspector's check of a department's work, the
task it needs on site, and the photos served to staff. Logic in layers/field/verification.py."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, File, Form, Header, Path, UploadFile
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Connection

from api.deps import Allow, get_city, get_conn
from api.uploads import read_photo_upload
from api.validation import INT64_MAX
from layers.core.city import CityInfo
from layers.field import reports as lreports
from layers.field import verification as lver

log = logging.getLogger("citygrid.verify")


@asynccontextmanager
async def _lifespan(app):
    """At start: bring the verification photo files in line with the committed rows."""
    engine = getattr(app.state, "engine", None)
    if engine is not None:
        lver.recover_at_start(engine, log)
    yield


router = APIRouter(prefix="/api/v1", tags=["verify 核查"], lifespan=_lifespan)

VERIFIERS = Allow("inspector", "supervisor", "admin")
READERS = Allow("inspector", "operator", "department", "supervisor", "admin")


@router.post("/cases/{case_id}/verify", summary="核查 On-site check of a case with 1–9 photos (multipart)",
             status_code=201,
             responses={200: {"description": "a retry with the same Idempotency-Key: the first result"},
                        201: {"description": "the check, the case's new state, distance and flags, the photos"}})
def verify(
    case_id: int = Path(..., ge=1, le=INT64_MAX),
    result: str = Form(..., pattern="^(ok|fail)$", description="ok 通过 (verify_ok) or fail 不通过 (verify_fail, 返工)"),
    photos: list[UploadFile] = File(..., description="1–9 photos of the site now: JPEG, PNG, WebP or HEIC"),
    note: str | None = Form(None, max_length=2000, description="备注; for fail the reason (required)"),
    reason: str | None = Form(None, max_length=2000, description="the same as note (either may be used)"),
    lon: str | None = Form(None, max_length=40, description="your longitude (in crs)"),
    lat: str | None = Form(None, max_length=40, description="your latitude (in crs)"),
    accuracy: str | None = Form(None, max_length=40, description="horizontal accuracy in metres"),
    crs: str = Form("EPSG:4326", max_length=40, description="WGS-84 (default), EPSG:4490, GCJ-02 or BD-09"),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=100),
    user=Depends(VERIFIERS), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city),
):
    cfg = lreports.config()
    key = lreports.check_key(idempotency_key)
    inp = lver.VerifyInput(result=result, note=reason or note, lon=lon or None, lat=lat or None,
                           accuracy_m=accuracy or None, crs=crs)
    action, _, _ = lver.check_input(city, inp, len(photos), cfg)
    raw = [read_photo_upload(i, f, cfg["max_photo_bytes"]) for i, f in enumerate(photos)]
    req_hash = lver.request_hash(case_id, inp, raw)
    first = lver.find_existing(conn, user.id, key, req_hash)  # a retry: no decoding, no writing
    if first is not None:
        return JSONResponse(first, status_code=200, headers={"Idempotent-Replayed": "true"})
    case = lver.precheck(conn, city, case_id, action, user)  # 404 / 403 / 409 before the photos are decoded
    prepared = [lreports.prepare_photo(i, f.filename, b) for i, (f, b) in enumerate(zip(photos, raw, strict=True))]
    store = lver.photo_store()
    staged = store.new_stage()
    try:
        out, created = lver.verify_case(conn, city, case_id, user, inp, prepared, key, req_hash, store, staged,
                                        case=case)
        conn.commit()
    except BaseException:
        staged.discard()
        raise
    if not created:
        staged.discard()
        return JSONResponse(out, status_code=200, headers={"Idempotent-Replayed": "true"})
    staged.promote()
    return JSONResponse(out, status_code=201)


@router.get("/cases/{case_id}/verify", summary="核查任务 What the on-site check needs: case, place, feedback, earlier checks")
def verify_task(case_id: int = Path(..., ge=1, le=INT64_MAX), user=Depends(READERS),
                conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return lver.task(conn, city, case_id, user)


@router.get("/verifications/{verification_id}", summary="核查结果 One on-site check as first answered")
def verification(verification_id: int = Path(..., ge=1, le=INT64_MAX), user=Depends(READERS),
                 conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return lver.get_verification(conn, city, verification_id, user)


@router.get("/verifications/{verification_id}/photos/{seq}/{variant}",
            summary="核查照片 A photo of a check: public copy, thumbnail or the original")
def verification_photo(verification_id: int = Path(..., ge=1, le=INT64_MAX), seq: int = Path(..., ge=0, le=99),
                       variant: str = Path(..., pattern="^(public|thumb|original)$"), user=Depends(READERS),
                       conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    data, media = lver.photo_file(conn, city, verification_id, seq, variant, user, lver.photo_store())
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=86400"})
