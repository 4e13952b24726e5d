"""Urban assets (部件): class catalogs, create/read/update/retire with history, and admin imports."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse
from pydantic import Field
from sqlalchemy import Connection

from api import errors as api_errors
from api.deps import ADMIN, PUBLIC, STAFF, Allow, get_city, get_conn
from api.uploads import save_upload
from api.validation import INT32_MAX, MAX_OFFSET, Body
from gis import crs as gcrs
from layers.assets import imports as limp
from layers.assets import registry as la
from layers.core.city import CityInfo
from layers.core.users import User

router = APIRouter(prefix="/api/v1", tags=["assets 部件"])

EDITORS = Allow("admin", "department")
CRS_HELP = "EPSG:4326 (default), EPSG:4490, the working CRS, GCJ-02 or BD-09"


class AssetIn(Body):
    class_code: str = Field(..., description="4-digit small class (小类), e.g. 0101 上水井盖", max_length=4)
    geometry: dict[str, Any] = Field(..., description="GeoJSON geometry in `crs`")
    crs: str = Field("EPSG:4326", description="CRS of the geometry: " + CRS_HELP)
    name: str | None = Field(None, max_length=200)
    status: str = Field("完好", description="完好/破损/丢失/占用/其他")
    dept_code1: str | None = Field(None, max_length=200, description="主管部门 department in charge")
    dept_code2: str | None = Field(None, max_length=200, description="权属单位 owner")
    dept_code3: str | None = Field(None, max_length=200, description="养护单位 maintainer")
    installed_on: str | None = Field(None, description="初始日期 YYYY-MM-DD")
    source: str | None = Field(None, max_length=200, description="数据来源 data source")
    photo: str | None = Field(None, max_length=200)
    note: str | None = Field(None, max_length=2000)


class AssetPatch(Body):
    model_config = {"extra": "forbid"}
    class_code: str | None = Field(None, max_length=4)
    geometry: dict[str, Any] | None = None
    crs: str = "EPSG:4326"
    name: str | None = Field(None, max_length=200)
    status: str | None = None
    dept_code1: str | None = Field(None, max_length=200)
    dept_code2: str | None = Field(None, max_length=200)
    dept_code3: str | None = Field(None, max_length=200)
    installed_on: str | None = None
    photo: str | None = Field(None, max_length=200)
    note: str | None = Field(None, max_length=2000)
    version: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = Field(None, description="the version you edited (optimistic lock)")


class RetireIn(Body):
    reason: str | None = Field(None, max_length=2000)


def _actor(user: User) -> str:
    return f"{user.name} ({user.role})"


@router.get("/asset-classes", summary="部件/事件分类 The class catalogs (components or events)")
def asset_classes(kind: str = Query("component", pattern="^(component|event)$"), _=Depends(PUBLIC),
                  conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return {"kind": kind, "big_classes": la.catalog_tree(conn, city, kind)}


@router.get("/assets", summary="部件列表 Assets as GeoJSON (filter by class, cell, bbox)")
def list_assets(class_code: str | None = Query(None, alias="class", max_length=4),
                cell: str | None = Query(None, max_length=15), bbox: str | None = Query(None),
                crs: str = Query("EPSG:4326", description="output CRS: " + CRS_HELP),
                include_retired: bool = False, limit: int = Query(100, ge=1, le=5000), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                _=Depends(STAFF), conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    from layers.publish.catalog import build_filters

    box = build_filters(city, bbox=bbox).bbox_working if bbox else None
    return la.list_assets(conn, city, class_code=class_code, cell_code=cell,
                          bbox_working=box.bounds if box is not None else None, include_retired=include_retired,
                          limit=limit, offset=offset, dst=gcrs.parse_crs(crs))


@router.post("/assets", status_code=201, summary="新增部件 Create an asset (its 16-digit code is allocated)")
def create_asset(body: AssetIn, user: User = Depends(EDITORS), conn: Connection = Depends(get_conn, scope="function"),
                 city: CityInfo = Depends(get_city)):
    values = body.model_dump(exclude={"geometry", "crs"})
    return la.create_asset(conn, city, values, body.geometry, actor=_actor(user), crs=body.crs)


@router.get("/assets/{code}", summary="部件 One asset as GeoJSON")
def get_asset(code: str, crs: str = Query("EPSG:4326"), _=Depends(STAFF), conn: Connection = Depends(get_conn, scope="function"),
              city: CityInfo = Depends(get_city)):
    return la.get_asset(conn, city, code, gcrs.parse_crs(crs))


@router.patch("/assets/{code}", summary="修改部件 Change an asset's fields or geometry (history kept)")
def patch_asset(code: str, body: AssetPatch, user: User = Depends(EDITORS), conn: Connection = Depends(get_conn, scope="function"),
                city: CityInfo = Depends(get_city)):
    values = body.model_dump(exclude_unset=True, exclude={"geometry", "crs", "version"})
    return la.update_asset(conn, city, code, values, body.geometry, actor=_actor(user), crs=body.crs,
                           expected_version=body.version)


@router.post("/assets/{code}/retire", summary="注销部件 Retire an asset (kept, with its history)")
def retire_asset(code: str, body: RetireIn | None = None, user: User = Depends(EDITORS),
                 conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    return la.retire_asset(conn, city, code, actor=_actor(user), reason=body.reason if body else None)


@router.get("/assets/{code}/history", summary="部件变更记录 Who changed what and when")
def asset_history(code: str, _=Depends(STAFF), conn: Connection = Depends(get_conn, scope="function"),
                  city: CityInfo = Depends(get_city)):
    return {"code": code, "history": la.history(conn, city, code)}


@router.post("/admin/assets/import", summary="导入部件 Import assets from a GIS file with a mapping (report per row)")
def import_assets(file: UploadFile = File(..., description="GeoPackage, zipped Shapefile, GeoJSON, KML or CSV"),
                  mapping: UploadFile = File(..., description="mapping file (JSON)"),
                  atomic: bool = Form(False, description="write nothing unless every row passes"),
                  crs: str | None = Form(None, description="the file's CRS if it has none: " + CRS_HELP),
                  user: User = Depends(ADMIN), conn: Connection = Depends(get_conn, scope="function"),
                  city: CityInfo = Depends(get_city)):
    with tempfile.TemporaryDirectory(prefix="citygrid-assets-") as tmp:
        data = save_upload(file, Path(tmp), limp.FORMATS)
        mdir = Path(tmp) / "mapping"
        mdir.mkdir()
        mpath = save_upload(mapping, mdir, {".json"})
        try:
            return limp.import_assets(conn, city, data, mpath, actor=_actor(user), atomic=atomic, crs=crs)
        except limp.ImportRejected as e:  # raised before anything is written
            return JSONResponse({**api_errors.coded_body(e), "report": e.report}, status_code=422)
