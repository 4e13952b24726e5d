"""Key zones (重点区域) and patrol coverage: zones as GeoJSON, import from GIS files, coverage per
period as a layer, missed zones, per-inspector patrol statistics."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path as FsPath

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile
from sqlalchemy import Connection

from api.deps import Allow, get_city, get_conn
from layers.core.city import CityInfo
from layers.field import patrols as lpatrols
from layers.field import zones as lzones

router = APIRouter(prefix="/api/v1", tags=["zones 重点区域与巡查"])

READ = Allow("inspector", "operator", "supervisor", "planner", "admin")
SUPERVISE = Allow("supervisor", "planner", "admin")
EDIT = Allow("supervisor", "admin")


def _date(value: str | None, name: str, default: dt.date) -> dt.date:
    if value is None or value == "":
        return default
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"{name} '{value[:20]}' is not a date (YYYY-MM-DD)") from None


def _period(start: str | None, end: str | None) -> tuple[dt.date, dt.date]:
    today = dt.datetime.now(lpatrols.TZ).date()
    s = _date(start, "start", today)
    return s, _date(end, "end", s)


@router.get("/zones", summary="重点区域 Key zones as GeoJSON")
def zones(crs: str = Query("EPSG:4326", max_length=40), area: str | None = Query(None, max_length=12),
          _=Depends(READ), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return lzones.zones_geojson(conn, city, crs, area)


@router.post("/zones/import", summary="导入重点区域 Import key zones from a GIS file", status_code=201)
def import_zones(file: UploadFile = File(..., description="GeoJSON, GeoPackage, Shapefile (zipped) …"),
                 crs: str | None = Form(None, max_length=40, description="overrides the file's CRS (e.g. GCJ-02)"),
                 name_field: str = Form("name", max_length=40), type_field: str = Form("type", max_length=40),
                 frequency_field: str = Form("frequency", max_length=40), code_field: str = Form("code", max_length=40),
                 _=Depends(EDIT), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    from citygrid import settings

    cap = settings.api().max_upload_bytes
    suffix = FsPath(file.filename or "zones.geojson").suffix.lower() or ".geojson"
    if suffix not in (".geojson", ".json", ".gpkg", ".zip", ".kml", ".fgb"):
        raise HTTPException(422, f"'{suffix}' files are not read: send GeoJSON, GeoPackage, KML, FlatGeobuf or a "
                                 "zipped Shapefile")
    data = file.file.read(cap + 1)
    if len(data) > cap:
        raise HTTPException(413, f"the file is larger than {cap:,} bytes")
    with tempfile.TemporaryDirectory() as d:
        path = FsPath(d) / f"upload{suffix}"
        path.write_bytes(data)
        done = lzones.import_zones(conn, city, path, crs=crs, name_field=name_field, type_field=type_field,
                                   frequency_field=frequency_field, code_field=code_field)
    return {"imported": len(done), "zones": done}


@router.get("/zones/coverage", summary="巡查覆盖 Coverage of each key zone in a period (a GeoJSON layer)")
def zone_coverage(start: str | None = Query(None, max_length=10, description="YYYY-MM-DD (default today)"),
                  end: str | None = Query(None, max_length=10, description="YYYY-MM-DD, inclusive (default start)"),
                  buffer_m: float | None = Query(None, gt=0, le=500), area: str | None = Query(None, max_length=12),
                  crs: str = Query("EPSG:4326", max_length=40),
                  _=Depends(SUPERVISE), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    s, e = _period(start, end)
    return lpatrols.coverage_geojson(conn, city, s, e, dst=crs, buffer_m=buffer_m, area_code=area)


@router.get("/zones/missed", summary="漏巡 Key zones whose patrol frequency was not met in a period")
def missed(start: str | None = Query(None, max_length=10), end: str | None = Query(None, max_length=10),
           area: str | None = Query(None, max_length=12), crs: str = Query("EPSG:4326", max_length=40),
           _=Depends(SUPERVISE), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    s, e = _period(start, end)
    return lpatrols.coverage_geojson(conn, city, s, e, dst=crs, area_code=area, missed_only=True)


@router.get("/patrols/stats", summary="巡查统计 Patrol statistics per inspector in a period")
def patrol_stats(start: str | None = Query(None, max_length=10), end: str | None = Query(None, max_length=10),
                 _=Depends(SUPERVISE), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    s, e = _period(start, end)
    return {"start": s.isoformat(), "end": e.isoformat(), "inspectors": lpatrols.inspector_stats(conn, city, s, e)}
