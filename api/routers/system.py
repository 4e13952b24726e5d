"""Health, the caller, and the cities served."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import PUBLIC, STAFF, get_conn
from layers.core import city as lcity
from layers.core import grid as lgrid
from layers.core.errors import NotFound
from layers.core.models import ROLE_LABELS

router = APIRouter(prefix="/api/v1", tags=["system 系统"])


@router.get("/health", summary="健康检查 Health: database, PostGIS, cities and grids")
def health(request: Request, _=Depends(PUBLIC)):
    try:
        with request.app.state.engine.connect() as conn:
            postgis = conn.execute(text("SELECT postgis_lib_version()")).scalar_one()
            server = conn.execute(text("SHOW server_version")).scalar_one()
            cities = []
            for c in lcity.list_cities(conn):
                entry = {"slug": c.slug, "name": c.name, "name_en": c.name_en, "adcode": c.adcode,
                         "working_crs": c.working_crs, "grid": None}
                try:
                    g = lgrid.active_grid(conn, c)
                    entry["grid"] = {"id": g.id, "name": g.name, "kind": g.kind, "cell_size": g.cell_size,
                                     "cells": g.cell_count}
                except NotFound:
                    pass
                cities.append(entry)
    except Exception as e:  # the database is down: say so, with 503
        return JSONResponse({"status": "unavailable", "database": f"error: {type(e).__name__}"}, status_code=503)
    return {"status": "ok", "database": f"PostgreSQL {server}", "postgis": postgis, "cities": cities}


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
    return {"default_city": api.default_city, "basemap_url": api.basemap_url,
            "basemap_attribution": api.basemap_attribution, "cities": cities}


@router.get("/me", summary="当前用户 The caller")
def me(user=Depends(STAFF)):
    return {"name": user.name, "role": user.role, "role_label": ROLE_LABELS[user.role],
            "department": user.department, "area_code": user.area_code}
