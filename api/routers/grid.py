"""The unit grid: snapping points to cells, and cells as GeoJSON."""

from __future__ import annotations

from typing import Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import Connection

from api.deps import STAFF, get_city, get_conn
from api.validation import MAX_OFFSET, Body
from citygrid import settings
from gis import crs as gcrs
from layers.core import grid as lgrid
from layers.core.city import CityInfo

router = APIRouter(prefix="/api/v1", tags=["grid 单元网格"])

CRS_HELP = "EPSG:4326 (default), EPSG:4490, the working CRS (e.g. EPSG:4549), GCJ-02 or BD-09"


class SnapRequest(Body):
    crs: str = Field("EPSG:4326", description="坐标系 CRS of the points: " + CRS_HELP)
    points: list[tuple[float, float]] = Field(
        ..., description="[[x, y], …] — [lon, lat] for geographic CRSs; at most 100,000 points",
        examples=[[[121.17, 31.89], [121.3, 31.95]]])
    invalid: Literal["reject", "report"] = Field(
        "reject", description="invalid coordinates (NaN, out of range, swapped): 'reject' the request "
                              "with 422, or 'report' them point by point with a reason")


class SnapCell(BaseModel):
    code: str | None = Field(None, description="15-digit cell code, null when the point is in no cell")
    col: int | None = None
    row: int | None = None
    reason: str | None = Field(None, description="why the point has no cell")


class SnapResponse(BaseModel):
    city: str
    grid_id: int
    cells: list[SnapCell]


def _crs(value: str, field: str) -> str:
    try:
        return gcrs.parse_crs(value)
    except gcrs.CRSError as e:
        raise HTTPException(422, f"{field}: {e}") from None


@router.post("/snap", summary="落格 Snap points to unit-grid cells", response_model=None,
             responses={200: {"model": SnapResponse, "description": "one object per point, in order"}})
def snap(body: SnapRequest, _=Depends(STAFF), conn: Connection = Depends(get_conn, scope="function"),
         city: CityInfo = Depends(get_city)):
    limit = settings.api().max_snap_points
    if not body.points:
        raise HTTPException(422, "points is empty: give at least one [lon, lat] pair")
    if len(body.points) > limit:
        raise HTTPException(413, f"{len(body.points)} points; at most {limit} per request: split the list")
    src = _crs(body.crs, "crs")
    xs = [p[0] for p in body.points]
    ys = [p[1] for p in body.points]
    cells = lgrid.snap_points(conn, city, xs, ys, src, invalid=body.invalid)
    grid = lgrid.snapper(conn, city)
    body = orjson.dumps({"city": city.slug, "grid_id": grid.info.id, "cells": cells})
    return Response(body, media_type="application/json")


@router.get("/cells/{code}", summary="单元网格 One cell as GeoJSON")
def cell(code: str = Path(..., description="14- or 15-digit cell code", max_length=32),
         crs: str = Query("EPSG:4326", description="output CRS: " + CRS_HELP),
         _=Depends(STAFF), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return lgrid.cell_by_code(conn, city, code, _crs(crs, "crs"))


@router.get("/cells", summary="单元网格 Cells in a bounding box as GeoJSON")
def cells(bbox: str = Query(..., description="minx,miny,maxx,maxy (in bbox-crs)", examples=["121.16,31.88,121.18,31.90"]),
          bbox_crs: str = Query("EPSG:4326", alias="bbox-crs", description="CRS of bbox: " + CRS_HELP),
          crs: str = Query("EPSG:4326", description="output CRS: " + CRS_HELP),
          limit: int = Query(1000, ge=1, le=settings.api().max_cells_per_request),
          offset: int = Query(0, ge=0, le=MAX_OFFSET),
          _=Depends(STAFF), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    cap = settings.api().max_cells_per_request
    if limit > cap:
        raise HTTPException(422, f"limit {limit} is above the maximum {cap}: page with offset")
    try:
        box = tuple(float(v) for v in bbox.split(","))
    except ValueError:
        raise HTTPException(422, f"bbox '{bbox}' is not four numbers minx,miny,maxx,maxy") from None
    if len(box) != 4:
        raise HTTPException(422, f"bbox needs four numbers minx,miny,maxx,maxy; got {len(box)}")
    return lgrid.cells_in_bbox(conn, city, box, _crs(bbox_crs, "bbox-crs"), _crs(crs, "crs"), limit, offset)
