"""Base maps for the pages: the configured sources, offline MBTiles tiles, the reference map's labels and
the city's outline; the public place search (gazetteer) of the /public page; the favicon.

The sources come from ``CITYGRID_BASEMAP_…`` (:class:`citygrid.settings.BasemapSettings`, see
``api/basemaps.py``); ``static/common/map.js`` draws them with a layer switcher.
"""

from __future__ import annotations

from pathlib import Path as FsPath

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import Connection, text

from api import basemaps as lbase
from api.deps import PUBLIC, get_city, get_conn
from api.limits import RateLimit
from gis import crs as gcrs
from layers.cases import gazetteer
from layers.core.city import CityInfo

router = APIRouter(tags=["basemaps 底图"])

#: Names and outlines change when a city's areas are re-imported: every page of every visitor asks for
#: them, so browsers keep them an hour instead of a query per page view.
PLACES_CACHE = "public, max-age=3600"
FAVICON = FsPath(__file__).resolve().parents[2] / "static" / "favicon.ico"



@router.get("/api/v1/basemaps", summary="底图 The base maps the pages offer (the first is shown on opening)")
def basemaps(_=Depends(PUBLIC)):
    try:
        sources = lbase.sources()
    except (ValueError, OSError) as e:
        raise HTTPException(500, f"底图配置有误 the base-map settings are wrong: {e}") from None
    return {"default": sources[0]["name"], "sources": sources}


@router.get("/api/v1/basemaps/{name}/{z}/{x}/{y}", summary="离线底图瓦片 A tile of an offline (MBTiles) base map, XYZ",
            response_class=Response, responses={200: {"content": {"image/png": {}, "image/jpeg": {}}},
                                                 204: {"description": "the file has no tile here"}})
def mbtiles_tile(name: str = Path(..., max_length=60), z: int = Path(..., ge=0, le=24),
                 x: int = Path(..., ge=0, le=2**24 - 1), y: str = Path(..., max_length=20), _=Depends(PUBLIC)):
    files = lbase.mbtiles_files()
    if name not in files:
        raise HTTPException(404, f"没有该离线底图 no offline base map '{name}'"
                                 + (f"; configured: {', '.join(sorted(files))}" if files else ""))
    stem = y.rsplit(".", 1)[0] if "." in y else y
    if not stem.isdigit():
        raise HTTPException(422, f"y must be a tile row (an integer), not '{y}'")
    yi = int(stem)
    if x >= (1 << z) or yi >= (1 << z):
        raise HTTPException(404, f"no tile {z}/{x}/{yi}: x and y run from 0 to {(1 << z) - 1} at zoom {z}")
    if not files[name].is_file():
        raise HTTPException(404, f"离线底图文件不存在 the file of base map '{name}' is missing")
    tile = lbase.read_tile(files[name], z, x, yi)
    if tile is None:
        return Response(status_code=204, headers={"Cache-Control": "public, max-age=3600"})
    headers = {"Cache-Control": "public, max-age=86400"}
    if tile.data[:2] == b"\x1f\x8b":
        headers["Content-Encoding"] = "gzip"
    return Response(tile.data, media_type=tile.media, headers=headers)


@router.get("/api/v1/basemaps/reference/labels", summary="参考图注记 Names and label points of the district, streets "
                                                   "and communities (WGS-84)")
def reference_labels(response: Response, _=Depends(PUBLIC), conn: Connection = Depends(get_conn, scope="function"),
                     city: CityInfo = Depends(get_city)):
    response.headers["Cache-Control"] = PLACES_CACHE
    rows = conn.execute(text("""
        SELECT level, regexp_replace(name, ' \\(made up\\)$', ''), ST_X(p), ST_Y(p)
        FROM (SELECT level, name, ST_Transform(ST_PointOnSurface(geom), 4326) AS p
              FROM admin_area WHERE city_id = :c) a
        WHERE p IS NOT NULL ORDER BY level, name"""), {"c": city.id}).all()
    return {"city": city.slug, "labels": [{"level": r[0], "name": r[1], "lon": round(r[2], 6), "lat": round(r[3], 6)}
                                          for r in rows]}


@router.get("/api/v1/basemaps/outline", summary="城市轮廓 The city's outline (GeoJSON, WGS-84, simplified to ~5 m)")
def outline(response: Response, _=Depends(PUBLIC), conn: Connection = Depends(get_conn, scope="function"),
            city: CityInfo = Depends(get_city)):
    response.headers["Cache-Control"] = PLACES_CACHE
    import json

    row = conn.execute(text("""
        SELECT name, ST_AsGeoJSON(ST_Transform(ST_SimplifyPreserveTopology(boundary, 5), 4326), 6)
        FROM city WHERE id = :c"""), {"c": city.id}).one()
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": row[0], "city": city.slug}, "geometry": json.loads(row[1])}]}


@router.get("/api/v1/public/places", summary="地址搜索 Search a place by name or address (names and points only)",
            responses={429: {"description": "too many look-ups from your address: retry after Retry-After s"}})
def search_places(request: Request, q: str = Query(..., min_length=1, max_length=100, description="地名或地址"),
                  crs: str = Query("EPSG:4326", max_length=20, description="EPSG:4326 or GCJ-02"),
                  limit: int = Query(8, ge=1, le=20), _=Depends(PUBLIC), _limit=Depends(RateLimit("lookup")),
                  conn: Connection = Depends(get_conn, scope="function"), city: CityInfo = Depends(get_city)):
    dst = gcrs.parse_crs(crs)
    if dst not in ("EPSG:4326", gcrs.GCJ02, "EPSG:4490"):
        raise HTTPException(422, f"crs must be EPSG:4326 or GCJ-02, not '{crs}'")
    found = gazetteer.search(conn, city, q, limit=limit)
    if not found:
        return {"places": []}
    xs, ys = gcrs.transform_xy([p.x for p in found], [p.y for p in found], city.working_crs, dst)
    return {"crs": dst, "places": [{"name": p.name, "kind": gazetteer.KIND_LABELS.get(p.kind, "地名"),
                                    "lon": round(float(x), 7), "lat": round(float(y), 7)}
                                   for p, x, y in zip(found, xs, ys, strict=True)]}


@router.get("/favicon.ico", include_in_schema=False)
def favicon():
    return FileResponse(FAVICON, media_type="image/x-icon", headers={"Cache-Control": "public, max-age=604800"})
