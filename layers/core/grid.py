"""Queries on the unit grid: the active grid, cells by code or bbox, and point → cell snapping.

Two snapping paths:

* in process (:func:`snapper`): the grid is loaded once into a :mod:`gis.snap` index (arithmetic for
  a regular grid, a bucketed polygon index for an imported one), cached per grid;
* in PostGIS (:func:`bulk_snap_table`): for points already in a table. For a regular grid the plan is
  a hash join on ``(floor(x/size), floor(y/size)) = (col, row)`` — no index probe per point — and an
  exact ``ST_Intersects`` only for points that fall into a clipped boundary cell.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import shapely
from sqlalchemy import Connection, text

from gis import crs as gcrs
from gis import grid as ggrid
from gis import snap as gsnap
from layers.core.city import CityInfo
from layers.core.errors import InputError, NotFound


@dataclass(frozen=True)
class GridInfo:
    id: int
    city_id: int
    name: str
    kind: str
    cell_size: float | None
    srid: int
    cell_count: int
    version: str  # changes whenever the grid's cells may have changed


def active_grid(conn: Connection, city: CityInfo) -> GridInfo:
    row = conn.execute(text("""
        SELECT id, city_id, name, kind, cell_size, srid, cell_count, created_at::text
        FROM grid WHERE city_id = :c AND active"""), {"c": city.id}).first()
    if row is None:
        raise NotFound(f"city '{city.slug}' has no active grid")
    return GridInfo(*row)


class LoadedGrid:
    """A grid's cells in memory with its index: codes in cell order and ``locate``."""

    def __init__(self, info: GridInfo, ids, codes, cols, rows, partial, geoms):
        self.info = info
        self.ids = ids
        self.codes = codes
        self.cols = cols
        self.rows = rows
        self.geoms = geoms
        if info.kind == "regular":
            self.index = gsnap.RegularGridIndex(cols, rows, info.cell_size, geoms, partial)
        else:
            self.index = gsnap.PolygonGridIndex(geoms)

    def locate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.index.locate(x, y)


_cache: dict[tuple[str, int], LoadedGrid] = {}
_cache_lock = threading.Lock()
_load_locks: dict[tuple[str, int], threading.Lock] = {}


def load_grid(conn: Connection, info: GridInfo) -> LoadedGrid:
    rows = conn.execute(text("""
        SELECT id, code, col, "row", partial, ST_AsBinary(geom) FROM grid_cell
        WHERE grid_id = :g ORDER BY id"""), {"g": info.id}).all()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    codes = np.array([r[1] for r in rows], dtype=object)
    geoms = shapely.from_wkb([bytes(r[5]) for r in rows])
    if info.kind == "regular":
        cols = np.array([r[2] for r in rows], dtype=np.int64)
        rws = np.array([r[3] for r in rows], dtype=np.int64)
    else:
        cols = rws = None
    partial = np.array([r[4] for r in rows], dtype=bool)
    return LoadedGrid(info, ids, codes, cols, rws, partial, geoms)


def snapper(conn: Connection, city: CityInfo) -> LoadedGrid:
    """The city's active grid, loaded and indexed once per process (rebuilt when the grid changes)."""
    info = active_grid(conn, city)
    key = (info.version, info.id)
    with _cache_lock:
        hit = _cache.get(key)
        load_lock = _load_locks.setdefault(key, threading.Lock())
    if hit is not None:
        return hit
    with load_lock:  # one thread loads a grid; the others wait for it instead of loading it too
        with _cache_lock:
            hit = _cache.get(key)
        if hit is not None:
            return hit
        loaded = load_grid(conn, info)
    with _cache_lock:
        for k in [k for k in _cache if k[1] == info.id or len(_cache) > 8]:
            _cache.pop(k, None)
        _cache[key] = loaded
    return loaded


def snap_points(conn: Connection, city: CityInfo, x, y, src_crs: str, *, invalid: str = "reject") -> list[dict]:
    """Snap points given in ``src_crs``; one dict per point, in order.

    ``{"code", "col", "row"}`` for a point in a cell, ``{"code": None, "reason": ...}`` otherwise.
    Invalid coordinates (NaN, out of range, swapped lon/lat) raise InputError naming them when
    ``invalid="reject"``; with ``invalid="report"`` they get a reason like points outside the city.
    """
    src = gcrs.parse_crs(src_crs)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    reasons = np.full(n, None, dtype=object)
    geographic = gcrs.is_geographic(src) or src in (gcrs.GCJ02, gcrs.BD09)
    if geographic:
        bad = gcrs.validate_lonlat(x, y)
        if bad is not None:
            reasons[:] = bad
    else:
        reasons[~(np.isfinite(x) & np.isfinite(y))] = "not a number"
    ok = reasons == None  # noqa: E711 - object array
    if invalid == "reject" and not ok.all():
        bad = np.flatnonzero(~ok)
        listed = "; ".join(f"points[{i}] {[x[i], y[i]]}: {reasons[i]}" for i in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise InputError(f"{len(bad)} invalid point(s): {listed}{more}")
    grid = snapper(conn, city)
    wx = np.full(n, np.nan)
    wy = np.full(n, np.nan)
    if ok.any():
        wx[ok], wy[ok] = gcrs.transform_xy(x[ok], y[ok], src, city.working_crs)
    idx = grid.locate(wx, wy)
    outside = ok & (idx < 0)
    if outside.any():
        reasons[outside] = "outside the city"
        if geographic:  # a swapped pair that would land inside deserves a hint
            sx, sy = x[outside], y[outside]
            fine = gcrs.validate_lonlat(sy, sx)
            fine = np.ones(len(sx), bool) if fine is None else (fine == None)  # noqa: E711
            if fine.any():
                tx, ty = np.full(len(sx), np.nan), np.full(len(sx), np.nan)
                tx[fine], ty[fine] = gcrs.transform_xy(sy[fine], sx[fine], src, city.working_crs)
                swapped_in = grid.locate(tx, ty) >= 0
                where = np.flatnonzero(outside)[swapped_in]
                reasons[where] = "outside the city (lon/lat swapped? the swapped point is inside)"
    out: list[dict] = []
    codes = grid.codes
    cols, rows = grid.cols, grid.rows
    for i in range(n):
        j = idx[i]
        if j >= 0:
            d = {"code": codes[j]}
            if cols is not None:
                d["col"] = int(cols[j])
                d["row"] = int(rows[j])
            out.append(d)
        else:
            out.append({"code": None, "reason": reasons[i] or "outside the city"})
    return out


_CELL_SELECT = """
    SELECT c.code, c.col, c."row", c.partial, c.area_m2, c.responsible, ST_AsBinary(c.geom),
           com.code, com.name, st.code, st.name, g.id, g.kind
    FROM grid_cell c
    JOIN grid g ON g.id = c.grid_id
    LEFT JOIN admin_area com ON com.id = c.area_id
    LEFT JOIN admin_area st ON st.id = com.parent_id
"""


def _feature(row, city: CityInfo, dst: str) -> dict:
    geom = gcrs.transform_geometry(shapely.from_wkb(bytes(row[6])), city.working_crs, dst)
    props = {"code": row[0], "col": row[1], "row": row[2], "partial": row[3], "area_m2": round(row[4], 2),
             "responsible": row[5], "community_code": row[7], "community": row[8], "street_code": row[9],
             "street": row[10], "district_code": city.adcode, "grid_id": row[11], "grid_kind": row[12]}
    return {"type": "Feature", "id": row[0], "geometry": shapely.geometry.mapping(geom), "properties": props}


def cell_by_code(conn: Connection, city: CityInfo, code: str, dst: str = "EPSG:4326") -> dict:
    try:
        code = ggrid.validate_cell_code(code)
    except ValueError as e:
        raise InputError(str(e)) from None
    info = active_grid(conn, city)
    row = conn.execute(text(_CELL_SELECT + " WHERE c.grid_id = :g AND c.code = :code"),
                       {"g": info.id, "code": code}).first()
    if row is None:
        raise NotFound(f"no cell '{code}' in the active grid of {city.slug}")
    return _feature(row, city, gcrs.parse_crs(dst))


def cells_in_bbox(conn: Connection, city: CityInfo, bbox: tuple[float, float, float, float], bbox_crs: str,
                  dst: str, limit: int, offset: int = 0) -> dict:
    minx, miny, maxx, maxy = bbox
    if not all(np.isfinite(bbox)):
        raise InputError("bbox values must be finite numbers")
    if not (minx < maxx and miny < maxy):
        raise InputError("bbox must be minx,miny,maxx,maxy with minx < maxx and miny < maxy")
    src = gcrs.parse_crs(bbox_crs)
    if gcrs.is_geographic(src) or src in (gcrs.GCJ02, gcrs.BD09):
        bad = gcrs.validate_lonlat(np.array([minx, maxx]), np.array([miny, maxy]))
        if bad is not None:
            raise InputError(f"bbox is not a valid lon/lat box: {next(b for b in bad if b)}")
    # The box's outline, densified, in the working CRS (a lon/lat box is curved there).
    ring = shapely.segmentize(shapely.box(minx, miny, maxx, maxy), max(maxx - minx, maxy - miny) / 16)
    box = gcrs.transform_geometry(ring, src, city.working_crs)
    info = active_grid(conn, city)
    params = {"g": info.id, "wkb": shapely.to_wkb(box, hex=True), "srid": city.srid}
    where = " WHERE c.grid_id = :g AND ST_Intersects(c.geom, ST_SetSRID(ST_GeomFromWKB(decode(:wkb, 'hex')), :srid))"
    matched = conn.execute(text("SELECT count(*) FROM grid_cell c" + where), params).scalar_one()
    rows = conn.execute(text(_CELL_SELECT + where + " ORDER BY c.code LIMIT :lim OFFSET :off"),
                        {**params, "lim": limit, "off": offset}).all()
    dst = gcrs.parse_crs(dst)
    return {"type": "FeatureCollection", "numberMatched": matched, "numberReturned": len(rows),
            "crs": dst, "features": [_feature(r, city, dst) for r in rows]}


def bulk_snap_table(conn: Connection, grid: GridInfo, table: str, *, id_col: str = "id", geom_col: str = "geom",
                    cell_col: str = "cell_id") -> int:
    """Set ``table.cell_col`` to the containing cell for every row, set-based. Returns rows updated.

    ``table`` must be a trusted identifier (called by importers, never with user input). Geometries must
    be in the grid's SRID. Rows outside the grid are not touched (their cell stays NULL).
    """
    if grid.kind == "regular":
        sql = f"""
        UPDATE {table} t SET {cell_col} = c.id
        FROM grid_cell c
        WHERE c.grid_id = :g
          AND c.col = floor(ST_X(t.{geom_col}) / :size)::int
          AND c."row" = floor(ST_Y(t.{geom_col}) / :size)::int
          AND (NOT c.partial OR ST_Intersects(c.geom, t.{geom_col}))"""
        params = {"g": grid.id, "size": grid.cell_size}
    else:
        # Spatial join; a point on a shared edge takes the cell holding the point nudged north-east
        # (the rule of gis.snap), then the lowest cell id.
        sql = f"""
        UPDATE {table} t SET {cell_col} = s.cell
        FROM (SELECT DISTINCT ON (p.{id_col}) p.{id_col} AS pid, c.id AS cell
              FROM {table} p JOIN grid_cell c
                ON c.grid_id = :g AND ST_Intersects(c.geom, p.{geom_col})
              ORDER BY p.{id_col},
                       ST_Intersects(c.geom, ST_Translate(p.{geom_col}, 1e-6, 0.618e-6)) DESC, c.id) s
        WHERE t.{id_col} = s.pid"""
        params = {"g": grid.id}
    return conn.execute(text(sql), params).rowcount
