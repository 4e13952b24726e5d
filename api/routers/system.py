"""Health, the caller, and the cities served."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import PUBLIC, STAFF, get_apool, get_conn
from layers.core import users as lusers
from layers.core.models import ROLE_LABELS

router = APIRouter(prefix="/api/v1", tags=["system 系统"])


_CITIES = """
    SELECT c.id, c.slug, c.name, c.name_en, c.adcode, c.working_srid, g.id, g.name, g.kind, g.cell_size, g.cell_count
    FROM city c LEFT JOIN grid g ON g.city_id = c.id AND g.active ORDER BY c.id"""


@router.get("/health", summary="健康检查 Health: database, cities and grids (server versions: staff only)")
async def health(request: Request, _=Depends(PUBLIC), authorization: str | None = Header(None, include_in_schema=False)):
    """Anonymous callers learn whether the service and its database answer, and the cities served; the
    PostgreSQL and PostGIS versions (what an attacker looks up vulnerabilities by) only staff with a
    valid token. On the event loop with the asyncpg pool, in one round trip (two for staff): a health
    check that waited for a worker thread would measure the thread pool, not the server."""
    from citygrid import settings

    try:
        pool = await get_apool(request)
        async with pool.acquire() as conn:
            staff = False
            scheme, _, token = (authorization or "").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                staff = await conn.fetchval("SELECT true FROM app_user WHERE token_hash = $1 AND active",
                                            lusers.hash_token(token.strip())) is not None
            rows = await conn.fetch(_CITIES)
            versions = (await conn.fetchrow("SELECT postgis_lib_version(), current_setting('server_version')")
                        if staff else None)
    except Exception as e:  # the database is down: say so, with 503
        return JSONResponse({"status": "unavailable", "database": f"error: {type(e).__name__}"}, status_code=503,
                            headers={"Retry-After": str(settings.api().db_retry_after_s)})
    cities = []
    for r in rows:
        cities.append({"slug": r[1], "name": r[2], "name_en": r[3], "adcode": r[4], "working_crs": f"EPSG:{r[5]}",
                       "grid": None if r[6] is None else {"id": r[6], "name": r[7], "kind": r[8], "cell_size": r[9],
                                                          "cells": r[10]}})
    if versions is None:
        return {"status": "ok", "database": "ok", "cities": cities}
    return {"status": "ok", "database": f"PostgreSQL {versions[1]}", "postgis": versions[0], "cities": cities}


@router.get("/config", summary="页面配置 What the pages need: cities with their extent, the base map")
def config(_=Depends(PUBLIC), conn=Depends(get_conn, scope="function")):
    from citygrid import settings

    api = settings.api()
    rows = conn.execute(text("""
        SELECT slug, name, name_en, adcode, working_srid,
               ST_XMin(b), ST_YMin(b), ST_XMax(b), ST_YMax(b)
        FROM (SELECT *, ST_Transform(boundary, 4326) AS b FROM city) c ORDER BY id""")).all()
    cities = [{"slug": r[0], "name": r[1], "name_en": r[2], "adcode": r[3], "working_crs": f"EPSG:{r[4]}",
               "bbox": [round(v, 6) for v in r[5:9]],
               "center": [round((r[5] + r[7]) / 2, 6), round((r[6] + r[8]) / 2, 6)]} for r in rows]
    return {"default_city": api.default_city, "basemaps": "/api/v1/basemaps", "cities": cities}


@router.get("/me", summary="当前用户 The caller")
def me(user=Depends(STAFF)):
    return {"name": user.name, "role": user.role, "role_label": ROLE_LABELS[user.role],
            "department": user.department, "area_code": user.area_code}
