"""Health, the caller, and the cities served."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import PUBLIC, STAFF
from layers import city as lcity
from layers import grid as lgrid
from layers.errors import NotFound
from layers.models import ROLE_LABELS

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


@router.get("/me", summary="当前用户 The caller")
def me(user=Depends(STAFF)):
    return {"name": user.name, "role": user.role, "role_label": ROLE_LABELS[user.role],
            "department": user.department, "area_code": user.area_code}
