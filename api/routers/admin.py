"""Administration: users and tokens, city boundaries, generated and imported grids."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi import Body as BodyParam
from fastapi import Path as PathParam
from pydantic import Field
from sqlalchemy import Connection, text

from api.deps import ADMIN, get_city, get_conn
from api.uploads import save_upload
from api.validation import Body, json_problem
from citygrid import settings
from layers.core import city as lcity
from layers.core import users as lusers
from layers.core.errors import Conflict, InputError
from layers.core.files import VECTOR_SUFFIXES
from layers.core.models import ROLE_LABELS, ROLES

router = APIRouter(prefix="/api/v1/admin", tags=["admin 管理"])


_DAYS = Field(None, ge=1, le=lusers.MAX_TOKEN_DAYS,
              description="days the token is valid (default: the setting CITYGRID_AUTH_TOKEN_DAYS)")


class NewUser(Body):
    name: str = Field(..., min_length=1, max_length=80)
    role: str = Field(..., description="one of " + ", ".join(ROLES))
    department: str | None = None
    area_code: str | None = None
    expires_in_days: int | None = _DAYS
    password: str | None = Field(None, min_length=1, max_length=lusers.MAX_PASSWORD_CHARS,
                                 description="密码 a password for signing in at /login (never shown again)")


class NewToken(Body):
    expires_in_days: int | None = _DAYS


class NewPassword(Body):
    password: str = Field(..., min_length=1, max_length=lusers.MAX_PASSWORD_CHARS, description="新密码 the new password")


class UserChange(Body):
    role: str | None = Field(None, description="one of " + ", ".join(ROLES))
    department: str | None = Field(None, max_length=80)
    area_code: str | None = Field(None, max_length=15)
    clear: list[Literal["department", "area_code"]] = Field(default_factory=list,
                                                            description="fields to empty (department, area_code)")


@router.get("/users", summary="用户 List users with their tokens' state, expiry and last use (never the tokens)")
def list_users(_=Depends(ADMIN), conn: Connection = Depends(get_conn, scope="function")):
    return lusers.accounts(conn)


@router.post("/users", status_code=201, summary="新建用户 Create a user; its token is shown once")
def add_user(body: NewUser, _=Depends(ADMIN), conn: Connection = Depends(get_conn, scope="function")):
    user, token = lusers.add_user(conn, body.name, body.role, department=body.department,
                                  area_code=body.area_code, expires_in_days=body.expires_in_days,
                                  password=body.password)
    return {**lusers.account(conn, user.id), "token": token}


_UID = PathParam(..., ge=1, le=2**31 - 1)


def _not_self(user_id: int, admin, what_zh: str, what_en: str) -> None:
    if user_id == admin.id:  # the last admin must not lock themselves out by a click
        raise Conflict(f"不能在此{what_zh}自己的账号 you cannot {what_en} your own account here "
                       "(use 'citygrid users' on the server)")


@router.patch("/users/{user_id}", summary="修改用户 Change a user's role, department or area (a new role ends their sessions)")
def change_user(body: UserChange, user_id: int = _UID, admin=Depends(ADMIN),
                conn: Connection = Depends(get_conn, scope="function")):
    if body.role is not None and body.role != "admin":
        _not_self(user_id, admin, "降低", "demote")
    return lusers.update_user(conn, user_id, role=body.role, department=body.department, area_code=body.area_code,
                              clear=frozenset(body.clear))


@router.post("/users/{user_id}/password", summary="重置密码 Set a user's password (their open sessions end)")
def reset_password(body: NewPassword, user_id: int = _UID, _=Depends(ADMIN),
                   conn: Connection = Depends(get_conn, scope="function")):
    return lusers.set_password(conn, user_id, body.password)


@router.post("/users/{user_id}/disable", summary="停用用户 Disable a user: token, password and sessions stop working")
def disable_user(user_id: int = _UID, admin=Depends(ADMIN), conn: Connection = Depends(get_conn, scope="function")):
    _not_self(user_id, admin, "停用", "disable")
    return lusers.set_active(conn, user_id, False)


@router.post("/users/{user_id}/enable", summary="启用用户 Enable a disabled user again")
def enable_user(user_id: int = _UID, _=Depends(ADMIN), conn: Connection = Depends(get_conn, scope="function")):
    return lusers.set_active(conn, user_id, True)


@router.get("/roles", summary="角色 The roles and what they are called")
def roles(_=Depends(ADMIN)):
    return {"roles": [{"role": r, "label": ROLE_LABELS[r]} for r in ROLES]}


@router.get("/areas", summary="行政区划 The city's district, streets and communities (for a user's area)")
def areas(_=Depends(ADMIN), conn: Connection = Depends(get_conn, scope="function"),
          city: lcity.CityInfo = Depends(get_city)):
    rows = conn.execute(text("""SELECT a.code, a.name, a.level, p.code AS parent FROM admin_area a
                                LEFT JOIN admin_area p ON p.id = a.parent_id
                                WHERE a.city_id = :c ORDER BY a.code"""), {"c": city.id}).mappings().all()
    return {"city": city.slug, "areas": [dict(r) for r in rows]}


@router.post("/users/{user_id}/revoke", summary="吊销令牌 Revoke a user's token now")
def revoke_token(user_id: int = PathParam(..., ge=1, le=2**31 - 1), admin=Depends(ADMIN),
                 conn: Connection = Depends(get_conn, scope="function")):
    if user_id == admin.id:  # the last admin must not lock themselves out by a click
        raise Conflict("不能在此吊销自己的令牌 you cannot revoke your own token here: issue yourself a new one "
                       f"(POST /api/v1/admin/users/{user_id}/token) or use 'citygrid users revoke'")
    return lusers.revoke(conn, user_id)


@router.post("/users/{user_id}/token", status_code=201,
             summary="重发令牌 Issue a new token (shown once); the old one stops working, a revocation is lifted")
def issue_token(body: NewToken | None = None, user_id: int = PathParam(..., ge=1, le=2**31 - 1), _=Depends(ADMIN),
                conn: Connection = Depends(get_conn, scope="function")):
    acc, token = lusers.issue_token(conn, user_id, expires_in_days=body.expires_in_days if body else None)
    return {**acc, "token": token}


@router.post("/cities", status_code=201, summary="导入城市边界 Import a city boundary and generate its grid")
def import_city(file: UploadFile = File(..., description="boundary: GeoJSON, GeoPackage or zipped Shapefile"),
                slug: str = Form(..., pattern=r"^[a-z][a-z0-9_-]{0,39}$"),
                name: str = Form(..., min_length=1, max_length=100),
                adcode: str = Form(..., pattern=r"^[0-9]{6}$"),
                crs: str | None = Form(None, description="EPSG:4326, EPSG:4490, GCJ-02, BD-09 … "
                                                         "(default: the file's own)"),
                name_en: str | None = Form(None),
                working_epsg: int | None = Form(None, ge=1, le=999_999),
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




@router.post("/calendar/years", status_code=201,
             summary="导入节假日安排 Load a year of the working-time calendar (State Council notice)")
def load_calendar_year(body: dict = BodyParam(..., examples=[{
        "year": 2027, "source": {"title": "国务院办公厅关于2027年部分节假日安排的通知", "document_no": "国办发明电〔…〕…号",
                                 "date": "YYYY-MM-DD"},
        "holidays": ["2027-01-01"], "workdays": []}]),
        user=Depends(ADMIN), conn: Connection = Depends(get_conn, scope="function")):
    """Stores the year for every worker (table calendar_year; replaces a stored year) and gives open cases
    whose deadline was recorded as unknown their deadline. 422 says what is wrong with the file."""
    from layers.cases import calendar as lcal

    refused = json_problem(body)
    if refused is not None:
        raise InputError(f"{refused[0]}: {refused[1]}")
    return lcal.import_year(conn, body, loaded_by=f"admin:{user.name}")


@router.get("/calendar", summary="工作日历 Configured calendar years and their sources")
def calendar_years(_=Depends(ADMIN), conn: Connection = Depends(get_conn, scope="function")):
    from layers.cases import calendar as lcal

    cal = lcal.build(lcal.database_years(conn))
    return {"years": {y: cal.sources.get(y) for y in sorted(cal.years)}, "first_year": cal.first_year,
            "last_year": cal.last_year,
            "not_configured": {y: why for y, why in lcal.base_config().get("not_configured", {}).items()
                               if int(y) not in cal.years},
            "before_first_year": "weekends only (no holidays known): clocks flagged calendar_complete=false"}
