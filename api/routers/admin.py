"""Administration: users and tokens, city boundaries, generated and imported grids."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, UploadFile
from pydantic import BaseModel, Field
from sqlalchemy import Connection

from api.deps import ADMIN, get_conn
from api.uploads import save_upload
from citygrid import settings
from layers.core import city as lcity
from layers.core import users as lusers
from layers.core.files import VECTOR_SUFFIXES
from layers.core.models import ROLES

router = APIRouter(prefix="/api/v1/admin", tags=["admin 管理"])


class NewUser(BaseModel):
    name: str = Field(..., min_length=1, max_length=80)
    role: str = Field(..., description="one of " + ", ".join(ROLES))
    department: str | None = None
    area_code: str | None = None


@router.get("/users", summary="用户 List users")
def list_users(_=Depends(ADMIN), conn: Connection = Depends(get_conn, scope="function")):
    return [u.__dict__ for u in lusers.list_users(conn)]


@router.post("/users", status_code=201, summary="新建用户 Create a user; its token is shown once")
def add_user(body: NewUser, _=Depends(ADMIN), conn: Connection = Depends(get_conn, scope="function")):
    user, token = lusers.add_user(conn, body.name, body.role, department=body.department,
                                  area_code=body.area_code)
    return {**user.__dict__, "token": token}


@router.post("/cities", status_code=201, summary="导入城市边界 Import a city boundary and generate its grid")
def import_city(file: UploadFile = File(..., description="boundary: GeoJSON, GeoPackage or zipped Shapefile"),
                slug: str = Form(..., pattern=r"^[a-z][a-z0-9_-]{0,39}$"),
                name: str = Form(..., min_length=1, max_length=100),
                adcode: str = Form(..., pattern=r"^[0-9]{6}$"),
                crs: str | None = Form(None, description="EPSG:4326, EPSG:4490, GCJ-02, BD-09 … "
                                                         "(default: the file's own)"),
                name_en: str | None = Form(None),
                working_epsg: int | None = Form(None),
                cell_size: float = Form(100.0, ge=5, le=5000),
                _=Depends(ADMIN), conn: Connection = Depends(get_conn, scope="function")):
    with tempfile.TemporaryDirectory(prefix="citygrid-up-") as tmp:
        path = save_upload(file, Path(tmp), VECTOR_SUFFIXES)
        boundary, src = lcity.read_boundary(path, crs)
    city = lcity.create_city(conn, slug=slug, name=name, adcode=adcode, boundary=boundary, src_crs=src,
                             name_en=name_en, working_epsg=working_epsg or settings.grid().working_epsg)
    grid_id = lcity.generate_grid(conn, city, size=cell_size)
    return {"slug": city.slug, "working_crs": city.working_crs, "grid_id": grid_id}


@router.post("/cities/{slug}/grids", status_code=201,
             summary="导入正式网格 Import an official (irregular) grid with its cell codes")
def import_grid(slug: str, file: UploadFile = File(...), code_field: str = Form("code"),
                crs: str | None = Form(None), activate: bool = Form(False),
                _=Depends(ADMIN), conn: Connection = Depends(get_conn, scope="function")):
    city = lcity.get_city(conn, slug)
    with tempfile.TemporaryDirectory(prefix="citygrid-up-") as tmp:
        path = save_upload(file, Path(tmp), VECTOR_SUFFIXES)
        grid_id = lcity.import_grid(conn, city, path, code_field=code_field, crs=crs, activate=activate)
    return {"slug": city.slug, "grid_id": grid_id, "active": activate}


