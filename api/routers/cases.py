"""Cases (案卷): intake, the list and detail, every workflow action, dispatch proposals, alerts, the
"needs location" queue, batch import and public notices. Logic lives in layers/cases/workflow.py."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path as FsPath
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import Field, field_validator
from shapely.geometry import Point
from sqlalchemy import Connection, text

from api.deps import Allow, get_city, get_conn
from api.validation import INT64_MAX, MAX_OFFSET, BigId, Body
from citygrid import settings
from gis import crs as gcrs
from layers.cases import calendar as lcal
from layers.cases import duplicates as ldup
from layers.cases import workflow as wf
from layers.cases.vocab import CHANNELS, EVENTS, RATINGS, REQUEST_TYPES, STATES
from layers.core.city import CityInfo
from layers.core.errors import InputError

router = APIRouter(prefix="/api/v1", tags=["cases 案卷"])
EARLIEST = dt.datetime(2000, 1, 1)  # the earliest receiving time a case may be given

INTAKE = Allow("operator", "inspector", "supervisor", "admin")
READERS = Allow("operator", "department", "inspector", "supervisor", "admin", "planner")
ACTORS = Allow("operator", "department", "inspector", "supervisor", "admin")
DISPATCHERS = Allow("operator", "supervisor", "admin")
STAFF_ALL = Allow("inspector", "operator", "department", "supervisor", "planner", "admin")


def forbid(fn, *args, **kw):
    """Run a layer function; a case the user may not touch is a 403."""
    try:
        return fn(*args, **kw)
    except wf.Forbidden as e:
        refused = HTTPException(403, f"无权限 {e}")
        refused.code, refused.message_zh = e.code, e.message_zh  # the layer's code and Chinese text
        raise refused from None


class Location(Body):
    x: float = Field(..., description="经度 longitude (or easting in a projected CRS)")
    y: float = Field(..., description="纬度 latitude (or northing)")
    crs: str = Field("EPSG:4326", description="EPSG:4326, EPSG:4490, the working CRS, GCJ-02 or BD-09")
    accuracy_m: float | None = Field(None, ge=0, le=100_000)


def to_working(city: CityInfo, loc: Location | None) -> Point | None:
    if loc is None:
        return None
    src = gcrs.parse_crs(loc.crs)
    if gcrs.is_geographic(src) or src in (gcrs.GCJ02, gcrs.BD09):
        bad = gcrs.validate_lonlat(np.array([loc.x]), np.array([loc.y]))
        if bad is not None:
            raise InputError(f"location ({loc.x}, {loc.y}) is not a valid lon/lat: {bad[0]}")
    x, y = gcrs.transform_xy(np.array([loc.x]), np.array([loc.y]), src, city.working_crs)
    return Point(float(x[0]), float(y[0]))


class Contact(Body):
    name: str | None = Field(None, max_length=80)
    phone: str | None = Field(None, max_length=40)


class CaseIn(Body):
    category_code: str = Field(..., max_length=40, description="类别 class code from GET /api/v1/catalog")
    channel: str = Field("电话", description="渠道: " + ", ".join(CHANNELS))
    source: Literal["hotline", "inspector", "other"] = "hotline"
    received_at: dt.datetime | None = Field(None, description=f"受理时间 (default: now; not before {EARLIEST:%Y-%m-%d})")
    request_type: str | None = Field(None, description="诉求类型: " + ", ".join(REQUEST_TYPES))
    urgency: Literal["normal", "urgent", "emergency"] = "normal"
    title: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=5000)
    address: str | None = Field(None, max_length=500)
    location: Location | None = None
    source_ref: str | None = Field(None, max_length=80, description="来源编号 the source system's case number")
    asset_id: BigId | None = None
    contact: Contact | None = None

    @field_validator("received_at")
    @classmethod
    def _not_ancient(cls, v: dt.datetime | None) -> dt.datetime | None:
        # A year-1 case would be accepted by PostgreSQL and then break every clock and statistic.
        if v is not None and v.replace(tzinfo=None) < EARLIEST:
            raise ValueError(f"must not be before {EARLIEST:%Y-%m-%d}")
        return v


@router.post("/cases", summary="受理 Record a case (hotline call, inspector report)", status_code=201)
def create_case(body: CaseIn, user=Depends(INTAKE), conn: Connection = Depends(get_conn, scope="function"),
                city: CityInfo = Depends(get_city)):
    wf.check_call(body.description, body.address, body.location)  # the call form: what and where
    loc = to_working(city, body.location)
    location_source = None
    confidence = None
    if loc is None and body.address:
        from layers.cases import gazetteer

        hit = gazetteer.locate_address(conn, city, body.address)
        if hit is not None:
            loc, confidence, location_source = hit["point"], hit["confidence"], "gazetteer"
    elif loc is not None:
        location_source = "given"
    opened = wf.open_case(
        conn, city, source=body.source, channel=body.channel, category_code=body.category_code,
        received_at=body.received_at or lcal.now(), location=loc, description=body.description,
        address=body.address, urgency=body.urgency, request_type=body.request_type, asset_id=body.asset_id,
        source_ref=body.source_ref, contact=body.contact.model_dump() if body.contact else None, actor=user,
        title=body.title, location_source=location_source,
        location_accuracy_m=body.location.accuracy_m if body.location else None, location_confidence=confidence)
    return {
        "id": opened.id, "case_no": opened.case_no, "state": opened.state, "merged_into": opened.merged_into,
        "cell_code": opened.cell_code, "query_code": opened.query_code,
        "step_deadline_at": wf._iso(opened.step_deadline_at), "close_deadline_at": wf._iso(opened.close_deadline_at),
        "needs_location": loc is None,
        **({"calendar_warning": opened.calendar_warning} if opened.calendar_warning else {})}


@router.get("/cases", summary="案卷列表 List cases (what your role may see)")
def cases(state: str | None = Query(None, max_length=200, description="state(s), comma separated"),
          category: str | None = Query(None, max_length=40, description="class code or its prefix"),
          department: str | None = Query(None, max_length=40),
          overdue: bool | None = None, needs_location: bool = False,
          q: str | None = Query(None, max_length=100, description="case number or text"),
          limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_OFFSET),
          user=Depends(READERS), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return wf.list_cases(conn, city, user, state=state, category=category, department=department, overdue=overdue,
                         needs_location=needs_location, q=q, limit=limit, offset=offset)


@router.get("/cases/alerts", summary="预警 Cases near (yellow) or past (red) their step deadline")
def case_alerts(level: Literal["yellow", "red", "all"] = "all", limit: int = Query(200, ge=1, le=1000),
                user=Depends(READERS), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    levels = ("yellow", "red") if level == "all" else (level,)
    items = wf.alerts(conn, city, user, levels=levels, limit=limit)
    return {"count": len(items), "cases": items}


@router.get("/cases/needs-location", summary="待定位 Cases without a location, for an operator to place")
def needs_location(limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                   user=Depends(DISPATCHERS), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    # Plain JSON values already (times as ISO text): written by orjson, not walked by jsonable_encoder
    # (which took longer than the query and the 1,000 clocks together).
    import orjson

    return Response(orjson.dumps(wf.list_cases(conn, city, user, needs_location=True, limit=limit, offset=offset)),
                    media_type="application/json")


@router.get("/cases/{case_id}", summary="案卷详情 One case with its events and clock")
def case(case_id: int = Path(..., ge=1, le=INT64_MAX), user=Depends(READERS), conn: Connection = Depends(get_conn, scope="function"),
         city: CityInfo = Depends(get_city)):
    out = forbid(wf.case_detail, conn, city, case_id, user)
    out["actions"] = wf.allowed_actions(conn, case_id, user)  # what this user may do now (the pages' buttons)
    return out


@router.get("/cases/{case_id}/proposal", summary="派遣建议 The proposed department (部件先属主后属地, 事件先属地后属主)")
def proposal(case_id: int = Path(..., ge=1, le=INT64_MAX), _=Depends(DISPATCHERS), conn: Connection = Depends(get_conn, scope="function"),
             city: CityInfo = Depends(get_city)):
    forbid(wf.case_detail, conn, city, case_id, _)
    return wf.propose_department(conn, case_id)


class ActionIn(Body):
    note: str | None = Field(None, max_length=2000)
    reason: str | None = Field(None, max_length=2000)
    photos: list[str] | None = Field(None, max_length=20)
    department: str | None = Field(None, max_length=40, description="dispatch: department id or code")
    override_reason: str | None = Field(None, max_length=500)
    rating: str | None = Field(None, description="rate: " + ", ".join(f"{k} {v}" for k, v in RATINGS.items()))
    amount: float | None = Field(None, description="extend: how much")
    unit: Literal["wh", "eh", "wd"] | None = Field(None, description="extend: 工作时 wh, 紧急工作时 eh, 工作日 wd")


@router.post("/cases/{case_id}/actions/{action}", summary="流转 Apply a workflow action to a case")
def act(body: ActionIn | None = None, case_id: int = Path(..., ge=1, le=INT64_MAX),
        action: str = Path(..., max_length=20, description=", ".join(wf.ACTIONS)),
        user=Depends(ACTORS), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    body = body or ActionIn()
    owner = conn.execute(text("SELECT city_id FROM case_file WHERE id = :i"), {"i": case_id}).scalar()
    if owner is not None and owner != city.id:
        raise HTTPException(404, f"no case {case_id} in {city.slug}")
    return forbid(wf.transition, conn, case_id, action, user, **body.model_dump(exclude_none=True))


@router.post("/cases/{case_id}/location", summary="定位 Place a case of the needs-location queue on the map")
def place(body: Location, case_id: int = Path(..., ge=1, le=INT64_MAX), user=Depends(DISPATCHERS),
          conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return wf.place_location(conn, city, case_id, to_working(city, body), user)


class MergeIn(Body):
    into: int = Field(..., ge=1, le=INT64_MAX, description="the id of the open case to merge into")
    note: str | None = Field(None, max_length=500)


@router.post("/cases/{case_id}/merge", summary="并单 Merge a case into another by hand")
def merge(body: MergeIn, case_id: int = Path(..., ge=1, le=INT64_MAX), user=Depends(DISPATCHERS),
          conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    forbid(wf.case_detail, conn, city, case_id, user)
    ldup.link_duplicate(conn, case_id, body.into, user, note=body.note)
    return {"id": case_id, "state": "merged", "merged_into": body.into}


@router.get("/catalog", summary="类别目录 The 3-level case catalog and the vocabularies")
def catalog(_=Depends(STAFF_ALL)):
    return {"items": [{k: v for k, v in i.items()} for i in wf.catalog().values()],
            "channels": CHANNELS, "request_types": REQUEST_TYPES, "states": STATES, "events": EVENTS,
            "ratings": RATINGS, "actions": list(wf.ACTIONS)}


@router.get("/departments", summary="部门 Departments of the city")
def departments(_=Depends(STAFF_ALL), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    rows = conn.execute(text("SELECT id, code, name, kind, area_code FROM department WHERE city_id = :c AND active "
                             "ORDER BY kind <> 'department', id"), {"c": city.id}).mappings().all()
    staffed = wf.staffed_departments(conn, city.id)
    # staffed: someone works there (a user of the department); unstaffed ones are flagged 无人员 on the page
    return {"departments": [{**dict(r), "staffed": r["code"] in staffed or r["name"] in staffed} for r in rows]}


@router.post("/departments/setup", summary="部门初始化 Create the configured departments and street offices")
def setup_departments(_=Depends(Allow("admin")), conn: Connection = Depends(get_conn, scope="function"),
                      city: CityInfo = Depends(get_city)):
    return {"departments": wf.ensure_departments(conn, city)}


@router.post("/cases/import", summary="批量导入 Import cases from CSV/XLSX/JSON with a column mapping")
def import_cases(request: Request, file: UploadFile = File(...), mapping: UploadFile | None = File(None),
                 dry_run: bool = Form(False), user=Depends(Allow("operator", "admin")),
                 city: CityInfo = Depends(get_city)):
    # A plain function (run in a worker thread), and the import itself in a worker process (api/offload.py):
    # parsing and writing 50,000 rows must not hold the event loop. It commits there, in its own transaction.
    from api import offload

    cap = settings.api().max_upload_bytes
    data = file.file.read(cap + 1)
    if len(data) > cap:
        raise HTTPException(413, f"the file is larger than {cap} bytes")
    suffix = FsPath(file.filename or "upload.csv").suffix.lower() or ".csv"
    with tempfile.TemporaryDirectory() as tmp:
        path = FsPath(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        mpath = None
        if mapping is not None:
            mpath = FsPath(tmp) / "mapping.json"
            mpath.write_bytes(mapping.file.read(1_000_000))
        return offload.import_cases(request.app.state.database_url, city, path, mapping=mpath, actor=user,
                                    dry_run=dry_run)


class NoticeIn(Body):
    title: str = Field(..., min_length=1, max_length=200)
    body: str = Field(..., min_length=1, max_length=10_000)
    expires_at: dt.datetime | None = None


@router.post("/notices", summary="便民公告 Publish a public notice", status_code=201)
def add_notice(body: NoticeIn, user=Depends(DISPATCHERS), conn: Connection = Depends(get_conn, scope="function"),
               city: CityInfo = Depends(get_city)):
    from layers.cases import citizen

    return citizen.add_notice(conn, city, body.title, body.body, user, expires_at=body.expires_at)
