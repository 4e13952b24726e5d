"""Heat: the quartic KDE of a window's cases on the grid (count per km²), from the rollup, as GeoJSON
cells or dissolved classes, and as vector tiles. Statistics: ``gis/heat.py``; the grid and the counts:
``layers/analytics/cache.py``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict

import numpy as np
import shapely
from sqlalchemy import Connection, text

from gis import crs as gcrs
from gis import heat as gheat
from layers.analytics import rollups
from layers.analytics.cache import (
    cells_geojson,
    dense_counts,
    dissolved_geojson,
    grid_arrays,
    rollup_fingerprint,
)
from layers.core.city import CityInfo
from layers.core.errors import InputError

HEAT_BANDS = (0.02, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9)  # lower edges of the 8 heat classes (share of max)


# ----------------------------------------------------------------------------------------------
# Heat
# ----------------------------------------------------------------------------------------------

def heat(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, *, categories=None, channels=None,
         bandwidth: float | None = None, area: str | None = None) -> dict:
    """Quartic KDE of the window's cases on the grid (count per km²), from the rollup.

    Bandwidth default: the ArcGIS spatial Silverman rule on the weighted cell centres
    (``gis.heat.default_bandwidth``), never below one cell. On a regular grid the kernel stencil is
    normalised, so each case keeps its whole mass at any bandwidth; the city edge is not corrected
    (the kernel's share outside the city is lost: densities near the boundary are biased low).
    Returns {"bandwidth", "total", "density" (grid order), "arrays"}.
    """
    if bandwidth is not None and not (10 <= bandwidth <= 20000):
        raise InputError("bandwidth must be between 10 and 20000 m")
    arr = grid_arrays(conn, city)
    x = dense_counts(conn, city, arr, start, end, categories, channels)
    mask = rollups.area_mask(arr.grid.codes, area)
    if mask is not None:
        x = np.where(mask, x, 0.0)
    pos = np.flatnonzero(x)
    n = x[pos]
    g = arr.grid
    if n.sum() == 0:
        return {"bandwidth": bandwidth, "total": 0, "density": np.zeros(arr.n), "arrays": arr}
    if bandwidth is None:
        bandwidth = gheat.default_bandwidth(arr.cx[pos], arr.cy[pos], n)
        floor = g.info.cell_size or float(np.sqrt(np.median(shapely.area(g.geoms))))
        bandwidth = max(bandwidth, floor)
    if g.info.kind == "regular":
        dens = gheat.quartic_kde_regular(g.cols[pos], g.rows[pos], n, g.info.cell_size, bandwidth,
                                         out_cols=g.cols, out_rows=g.rows)
    else:
        dens = gheat.quartic_kde_grid(arr.cx[pos], arr.cy[pos], n, arr.cx, arr.cy, bandwidth)
    return {"bandwidth": float(bandwidth), "total": int(n.sum()), "density": dens, "arrays": arr}


def heat_geojson(conn: Connection, city: CityInfo, start, end, *, categories=None, channels=None,
                 bandwidth=None, area=None, min_share: float = 0.02, max_cells: int = 20000, dst="EPSG:4326",
                 dissolve: bool = False) -> dict:
    """Cells whose density is at least ``min_share`` of the maximum (at most ``max_cells``); with
    ``dissolve`` the 8 heat classes (HEAT_BANDS) as one polygon each."""
    h = heat(conn, city, start, end, categories=categories, channels=channels, bandwidth=bandwidth, area=area)
    d = h["density"]
    arr = h["arrays"]
    if h["total"] == 0:
        return {"type": "FeatureCollection", "features": [], "bandwidth_m": h["bandwidth"], "total": 0,
                "max_density": 0.0}
    top = float(d.max())
    sel = np.flatnonzero(d >= min_share * top)
    if sel.size > max_cells:
        sel = sel[np.argsort(-d[sel])[:max_cells]]
    if dissolve:
        sel = np.flatnonzero(d >= HEAT_BANDS[0] * top)
        band = np.searchsorted(np.array(HEAT_BANDS), d[sel] / top, side="right") - 1
        fc = dissolved_geojson(arr, city, sel, band, {k: {"level": HEAT_BANDS[k],
                                                          "density_from": round(HEAT_BANDS[k] * top, 3)}
                                                      for k in range(len(HEAT_BANDS))}, dst)
    else:
        fc = cells_geojson(arr, city, sel, [{"density": round(float(d[i]), 3), "level": round(float(d[i] / top), 4)}
                                            for i in sel], dst)
    fc.update(bandwidth_m=round(h["bandwidth"], 1), total=h["total"], max_density=round(top, 3),
              unit="件/km² cases per km²", edge_corrected=False,
              edge="未做边缘校正：城市边界附近密度偏低 no edge correction: densities near the city boundary are "
                   "biased low")
    return fc


# ----------------------------------------------------------------------------------------------
# Heat as vector tiles
# ----------------------------------------------------------------------------------------------

WEB_MERCATOR_HALF = 20037508.342789244


def tile_bounds_3857(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """Bounds of XYZ tile (z, x, y) in EPSG:3857; InputError for a tile that does not exist."""
    if not (0 <= z <= 22) or not (0 <= x < 2 ** z) or not (0 <= y < 2 ** z):
        raise InputError(f"no tile {z}/{x}/{y}: z must be 0–22 and x, y within 0–{2 ** max(z, 0) - 1}")
    size = 2 * WEB_MERCATOR_HALF / 2 ** z
    minx = -WEB_MERCATOR_HALF + x * size
    maxy = WEB_MERCATOR_HALF - y * size
    return minx, maxy - size, minx + size, maxy


#: Cells drawn smaller than this many pixels (of a 256-px tile) are merged per heat class in a tile.
DISSOLVE_BELOW_PX = 6.0
_HEAT_CACHE: OrderedDict = OrderedDict()
_HEAT_CACHE_SIZE = 12
_heat_lock = threading.Lock()


def heat_for_tiles(conn: Connection, city: CityInfo, start, end, *, categories=None, channels=None,
                   bandwidth=None, area=None) -> dict:
    """:func:`heat`, remembered in the process for the tiles of one view (a map asks for a dozen
    tiles of the same heat): keyed by the window, the filters, the grid version and the rollup's
    change-log fingerprint (any committed change of cases anywhere moves it, in any process). A
    transaction that has written computes afresh."""
    clean = conn.execute(text("SELECT pg_current_xact_id_if_assigned() IS NULL")).scalar()
    if not clean:
        return heat(conn, city, start, end, categories=categories, channels=channels, bandwidth=bandwidth, area=area)
    arr = grid_arrays(conn, city)
    key = (city.id, arr.grid.info.id, arr.grid.info.version, start, end, tuple(categories or ()),
           tuple(channels or ()), area, bandwidth, rollup_fingerprint(conn, city))
    with _heat_lock:
        hit = _HEAT_CACHE.get(key)
        if hit is not None:
            _HEAT_CACHE.move_to_end(key)
            return hit
    h = heat(conn, city, start, end, categories=categories, channels=channels, bandwidth=bandwidth, area=area)
    with _heat_lock:
        _HEAT_CACHE[key] = h
        while len(_HEAT_CACHE) > _HEAT_CACHE_SIZE:
            _HEAT_CACHE.popitem(last=False)
    return h


def _cells_tile(arr, city: CityInfo, bounds, keep: np.ndarray, classes: np.ndarray, class_props: dict,
                cell_props, layer: str) -> bytes:
    """A Mapbox Vector Tile of the grid's cells where ``keep``: one polygon per cell (``cell_props(i)``),
    or, where cells are drawn smaller than ``DISSOLVE_BELOW_PX`` pixels, one polygon per class
    (``class_props[k]`` and ``cells``). Cells are picked by their centres with a margin, then clipped."""
    import mapbox_vector_tile

    box = gcrs.transform_geometry(shapely.segmentize(shapely.box(*bounds), (bounds[2] - bounds[0]) / 8),
                                  "EPSG:3857", city.working_crs)
    bx0, by0, bx1, by1 = box.bounds
    size = arr.grid.info.cell_size or float(np.sqrt(np.median(shapely.area(arr.grid.geoms))))
    pad = size * 1.5
    sel = np.flatnonzero(keep & (arr.cx >= bx0 - pad) & (arr.cx <= bx1 + pad) & (arr.cy >= by0 - pad)
                         & (arr.cy <= by1 + pad))
    features = []
    if sel.size and size / ((bx1 - bx0) / 256) < DISSOLVE_BELOW_PX:
        cls = classes[sel]
        for k in sorted(set(cls.tolist())):
            part = sel[cls == k]
            geom = shapely.coverage_union_all(arr.grid.geoms[part]) if arr.grid.info.kind == "regular" \
                else shapely.union_all(arr.grid.geoms[part])
            g = shapely.clip_by_rect(gcrs.transform_geometry(geom, city.working_crs, "EPSG:3857"), *bounds)
            if not g.is_empty and g.area > 0:
                features.append({"geometry": g, "properties": {**class_props[int(k)], "cells": int(part.size)}})
    elif sel.size:
        geoms = gcrs.transform_geometry(arr.grid.geoms[sel], city.working_crs, "EPSG:3857")
        for i, g in zip(sel, shapely.clip_by_rect(geoms, *bounds), strict=True):
            if not g.is_empty and g.area > 0:
                features.append({"geometry": g, "properties": {"code": str(arr.grid.codes[i]), **cell_props(int(i))}})
    return mapbox_vector_tile.encode([{"name": layer, "features": features}],
                                     default_options={"quantize_bounds": bounds, "extents": 4096})


def heat_tile(conn: Connection, city: CityInfo, start, end, z: int, x: int, y: int, *, categories=None,
              channels=None, bandwidth=None, area=None, min_share: float = HEAT_BANDS[0]) -> bytes:
    """The heat of the window as a Mapbox Vector Tile: layer ``heat``, one polygon per cell whose
    density is at least ``min_share`` of the maximum, with ``density`` (cases/km²) and ``level``
    (share of the maximum). Where cells are drawn smaller than ``DISSOLVE_BELOW_PX`` pixels (a whole
    city in one tile), one polygon per heat class instead (``level`` = the class's lower edge,
    HEAT_BANDS; ``density`` = its lower edge in cases/km²; ``cells``), which draws the same colours."""
    bounds = tile_bounds_3857(z, x, y)
    h = heat_for_tiles(conn, city, start, end, categories=categories, channels=channels, bandwidth=bandwidth,
                       area=area)
    arr = h["arrays"]
    if not h["total"]:
        return _cells_tile(arr, city, bounds, np.zeros(arr.n, dtype=bool), np.zeros(arr.n, dtype=int), {}, None,
                           "heat")
    d = h["density"]
    top = float(d.max())
    band = np.searchsorted(np.array(HEAT_BANDS), d / top, side="right") - 1
    return _cells_tile(arr, city, bounds, d >= min_share * top, band,
                       {k: {"level": HEAT_BANDS[k], "density": round(HEAT_BANDS[k] * top, 3)}
                        for k in range(len(HEAT_BANDS))},
                       lambda i: {"density": round(float(d[i]), 3), "level": round(float(d[i]) / top, 4)}, "heat")


#: Classes of the cases-per-cell layer: lower edges of the counts (the page colours them alike).
COUNT_CLASSES = (1, 2, 5)


def cases_tile(conn: Connection, city: CityInfo, start, end, z: int, x: int, y: int, *, categories=None,
               channels=None, area=None) -> bytes:
    """The window's cases per cell as a Mapbox Vector Tile: layer ``cases``, one polygon per cell with
    cases (``count``), or one per count class (``count_from`` = 1, 2, 5; ``cells``) where cells are a
    few pixels. Counts under the supervisors' one definition (``layers.analytics.rollups``)."""
    from layers.analytics import rollups

    bounds = tile_bounds_3857(z, x, y)
    arr = grid_arrays(conn, city)
    ids, n = rollups.cell_counts(conn, city, start, end, categories=categories, channels=channels, area=area)
    pos = arr.positions(ids)
    ok = pos >= 0
    cnt = np.zeros(arr.n)
    np.add.at(cnt, pos[ok], n[ok])
    cls = np.searchsorted(np.array(COUNT_CLASSES), cnt, side="right") - 1
    return _cells_tile(arr, city, bounds, cnt > 0, cls, {k: {"count_from": v, "class": k}
                                                         for k, v in enumerate(COUNT_CLASSES)},
                       lambda i: {"count": int(cnt[i])}, "cases")
