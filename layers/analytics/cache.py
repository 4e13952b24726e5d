"""The grid in memory and the day cache of counts, shared by heat, hot spots, emerging hot spots and
alerts: the grid's cell order, col/row and centroids and its spatial weights are cached per grid
version (:func:`grid_arrays`, :func:`weights`); the day counts per cell come from the rollup through a
cache that follows its append-only change log (:class:`DayCache`, :func:`dense_counts`); cells out
as GeoJSON (:func:`cells_geojson`, :func:`dissolved_geojson`, :func:`dump_geojson`) — never case points.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import shapely
from sqlalchemy import Connection, text

from gis import crs as gcrs
from gis import hotspots as ghot
from layers.analytics import rollups
from layers.core import grid as lgrid
from layers.core.city import CityInfo
from layers.core.errors import InputError

# ----------------------------------------------------------------------------------------------
# The grid in memory
# ----------------------------------------------------------------------------------------------

@dataclass
class GridArrays:
    grid: lgrid.LoadedGrid
    index_of: dict  # cell id -> position
    cx: np.ndarray
    cy: np.ndarray
    weights: dict  # (kind, param) -> csr; "area" -> cell areas (m²)

    @property
    def n(self) -> int:
        return len(self.grid.ids)

    def positions(self, cell_ids: np.ndarray) -> np.ndarray:
        """Positions of the given cell ids in grid order (-1 for cells of another grid)."""
        ids = self.grid.ids  # ascending (loaded ORDER BY id)
        cell_ids = np.asarray(cell_ids, dtype=np.int64)
        if ids.size == 0 or cell_ids.size == 0:
            return np.full(cell_ids.size, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(ids, cell_ids), ids.size - 1)
        return np.where(ids[pos] == cell_ids, pos, -1)


_arrays: dict[tuple, GridArrays] = {}
_lock = threading.Lock()


def grid_arrays(conn: Connection, city: CityInfo) -> GridArrays:
    g = lgrid.snapper(conn, city)
    key = (g.info.id, g.info.version)
    with _lock:
        hit = _arrays.get(key)
    if hit is not None and hit.grid is g:
        return hit
    cen = shapely.centroid(g.geoms)
    cx, cy = shapely.get_x(cen), shapely.get_y(cen)
    arr = GridArrays(g, {int(c): i for i, c in enumerate(g.ids.tolist())}, cx, cy, {})
    with _lock:
        for k in [k for k in _arrays if k[0] == g.info.id or len(_arrays) > 8]:
            _arrays.pop(k, None)
        _arrays[key] = arr
    return arr


def weights(arr: GridArrays, kind: str = "queen", distance: float | None = None) -> sp.csr_matrix:
    """Binary spatial weights (zero diagonal) of the grid: queen contiguity (regular grids) or a
    distance band between centroids (any grid; default 1.5 cell widths)."""
    if kind not in ("queen", "distance"):
        raise InputError("weights must be 'queen' or 'distance'")
    g = arr.grid
    if kind == "queen" and g.info.kind != "regular":
        kind = "distance"  # irregular grids: queen contiguity of polygons is not cached; use a band
    if kind == "distance":
        if distance is None:
            size = g.info.cell_size or float(np.sqrt(np.median(shapely.area(g.geoms))))
            distance = 1.5 * size
        if not (0 < distance <= 5000):
            raise InputError("distance must be in (0, 5000] m")
    key = (kind, distance)
    w = arr.weights.get(key)
    if w is None:
        if kind == "queen":
            w = _queen_of_cells(g)
        else:
            w = ghot.distance_band_weights(arr.cx, arr.cy, float(distance))
        arr.weights[key] = w
    return w


def _queen_of_cells(g: lgrid.LoadedGrid) -> sp.csr_matrix:
    """Queen contiguity of the cells as drawn: grid neighbours by col/row, except that a cell clipped
    by the city boundary is a neighbour only where its polygon still touches the other one (this is
    libpysal's Queen on the cell polygons, computed from the arithmetic plus a few exact checks)."""
    w = ghot.queen_weights_regular(g.cols, g.rows)
    partial = getattr(g.index, "partial", None)
    if partial is None or not np.any(partial):
        return w
    up = sp.triu(w, k=1).tocoo()
    i, j = up.row, up.col
    check = partial[i] | partial[j]
    keep = np.ones(i.size, dtype=bool)
    keep[check] = shapely.intersects(g.geoms[i[check]], g.geoms[j[check]])
    i, j = i[keep], j[keep]
    n = len(g.ids)
    w = sp.csr_matrix((np.ones(2 * i.size), (np.concatenate([i, j]), np.concatenate([j, i]))), shape=(n, n))
    w.sort_indices()
    return w


CHANGE_LOG_COMPACT_AT = 20_000


def compact_change_log(conn: Connection, city: CityInfo) -> int:
    """Keep only the newest change of each day (the log is append-only: writers never wait on it).
    Readers then reload the compacted days once, which is correct, merely redundant."""
    return conn.execute(text("""
        DELETE FROM case_rollup_change c
        USING (SELECT day, max(version) AS newest FROM case_rollup_change WHERE city_id = :c GROUP BY day) m
        WHERE c.city_id = :c AND c.day = m.day AND c.version < m.newest"""), {"c": city.id}).rowcount


def rollup_fingerprint(conn: Connection, city: CityInfo) -> tuple[int, int, int, int]:
    """(epoch, count, sum, max) of the city's rollup change log: every statement that adds, moves or
    merges cases appends to the log, a full rebuild bumps the epoch. :class:`DayCache` and the
    worklist's hot-spot weights (layers.field.patrols.hotspot_weights) compare it to know when to reload."""
    row = conn.execute(text("""
        SELECT COALESCE((SELECT epoch FROM analytics_city WHERE city_id = :c), 0),
               count(*), COALESCE(sum(version), 0), COALESCE(max(version), 0)
        FROM case_rollup_change WHERE city_id = :c"""), {"c": city.id}).one()
    return tuple(int(v) for v in row)


class DayCache:
    """Per-cell totals of every day of a city's rollup, in memory (grid positions, counts per day).

    Kept current incrementally: each statement that changes cases appends (city, day, number) rows to
    the change log (``case_rollup_change``, append-only so that writers never wait on each other). A
    read compares a fingerprint of the log (count and sum of the numbers, the city's epoch); when it
    moved, each day's (count, sum) is read and only the days whose pair differs from the one cached are
    reloaded — exact even when a slow writer commits a lower number after a read. A full rebuild of the
    rollup bumps the city's epoch (full reload).
    """

    def __init__(self, key):
        self.key = key
        self.days: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.day_versions: dict = {}
        self.epoch = None
        self.loaded_at = 0.0
        self.fingerprint = None
        self.lock = threading.Lock()

    def refresh(self, conn: Connection, city: CityInfo, arr: GridArrays) -> None:
        import time

        fingerprint = rollup_fingerprint(conn, city)
        epoch = fingerprint[0]
        if fingerprint == self.fingerprint:
            return
        if fingerprint[1] > CHANGE_LOG_COMPACT_AT and conn.execute(text(
                "SELECT current_setting('transaction_read_only') = 'off'")).scalar():
            compact_change_log(conn, city)  # on the primary: a read on the replica leaves it to the next one there
        # Per day, the count and sum of its change numbers: any new change moves them.
        versions = {r[0]: (int(r[1]), int(r[2])) for r in conn.execute(text("""
            SELECT day, count(*), sum(version) FROM case_rollup_change WHERE city_id = :c GROUP BY day"""),
            {"c": city.id})}
        full = epoch != self.epoch
        if full:
            days = None
        else:
            days = [d for d, v in versions.items() if self.day_versions.get(d) != v]
            days += [d for d in self.day_versions if d not in versions]
        sql = "SELECT day, cell_id, sum(n) FROM case_rollup WHERE city_id = :c AND cell_id <> 0"
        params: dict = {"c": city.id}
        if days is not None:
            sql += " AND day = ANY(:days)"
            params["days"] = list(days)
        rows = conn.execute(text(sql + " GROUP BY 1, 2 ORDER BY 1"), params).all() if days != [] else []
        fresh: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if rows:
            d = np.array([r[0].toordinal() for r in rows], dtype=np.int64)
            cid = np.array([r[1] for r in rows], dtype=np.int64)
            n = np.array([r[2] for r in rows], dtype=np.float64)
            pos = arr.positions(cid)
            cut = np.flatnonzero(np.diff(d)) + 1
            for lo, hi in zip(np.r_[0, cut], np.r_[cut, d.size], strict=True):
                ok = pos[lo:hi] >= 0
                fresh[int(d[lo])] = (pos[lo:hi][ok], n[lo:hi][ok])
        if full:
            self.days = fresh
            self.loaded_at = time.monotonic()
        else:
            for day in days:
                self.days.pop(day.toordinal(), None)
            self.days.update(fresh)
        self.day_versions, self.epoch, self.fingerprint = versions, epoch, fingerprint

    def window(self, n_cells: int, start: dt.date, end: dt.date) -> np.ndarray:
        parts = [self.days[o] for o in range(start.toordinal(), end.toordinal() + 1) if o in self.days]
        if not parts:
            return np.zeros(n_cells)
        pos = np.concatenate([p for p, _ in parts])
        n = np.concatenate([c for _, c in parts])
        return np.bincount(pos, weights=n, minlength=n_cells).astype(np.float64)


_day_caches: dict[tuple, DayCache] = {}


def dense_counts(conn: Connection, city: CityInfo, arr: GridArrays, start: dt.date, end: dt.date,
                 categories=None, channels=None) -> np.ndarray:
    """Cases per cell of the active grid (grid order, zeros included) over the window. Without
    filters, in a transaction that has not written, it is served by the in-process day cache; else
    by one rollup query."""
    rollups.check_window(start, end)
    # A transaction that has written may see its own uncommitted cases: it must not fill the cache.
    clean = conn.execute(text("SELECT pg_current_xact_id_if_assigned() IS NULL")).scalar()
    if clean and not categories and not channels:
        key = (city.id, arr.grid.info.id, arr.grid.info.version)
        with _lock:
            cache = _day_caches.get(key)
            if cache is None:
                for k in [k for k in _day_caches if k[0] == city.id]:
                    _day_caches.pop(k)
                cache = _day_caches[key] = DayCache(key)
        with cache.lock:
            cache.refresh(conn, city, arr)
            return cache.window(arr.n, start, end)
    ids, n = rollups.cell_counts(conn, city, start, end, categories=categories, channels=channels)
    x = np.zeros(arr.n)
    pos = arr.positions(ids)
    ok = pos >= 0
    np.add.at(x, pos[ok], n[ok])
    return x


# ----------------------------------------------------------------------------------------------
# GeoJSON of cells
# ----------------------------------------------------------------------------------------------

def _to_crs(geoms, src: str, dst: str):
    if src == dst:
        return geoms

    def f(xy):
        x, y = gcrs.transform_xy(xy[:, 0], xy[:, 1], src, dst)
        return np.column_stack([x, y])

    return shapely.transform(geoms, f)


def cells_geojson(arr: GridArrays, city: CityInfo, positions: np.ndarray, props: list[dict],
                  dst: str = "EPSG:4326") -> dict:
    geoms = _to_crs(arr.grid.geoms[positions], city.working_crs, dst)
    geoms = shapely.set_precision(geoms, 1e-6 if gcrs.is_geographic(dst) or dst in (gcrs.GCJ02, gcrs.BD09)
                                  else 0.01)
    feats = []
    codes = arr.grid.codes
    for k, (p, g) in enumerate(zip(positions.tolist(), shapely.to_geojson(geoms).tolist(), strict=True)):
        feats.append({"type": "Feature", "geometry": g, "properties": {"code": codes[p], **props[k]}})
    return {"type": "FeatureCollection", "features": feats}


def dissolved_geojson(arr: GridArrays, city: CityInfo, positions: np.ndarray, classes: np.ndarray,
                      props: dict, dst: str = "EPSG:4326") -> dict:
    """One (multi)polygon per class: the union of its cells (a light layer for maps; the per-cell
    layer is the same request without ``dissolve``)."""
    feats = []
    for k in sorted(set(classes.tolist())):
        sel = positions[classes == k]
        geom = shapely.coverage_union_all(arr.grid.geoms[sel]) if arr.grid.info.kind == "regular" \
            else shapely.union_all(arr.grid.geoms[sel])
        geom = _to_crs(np.array([geom]), city.working_crs, dst)[0]
        geom = shapely.set_precision(geom, 1e-6 if gcrs.is_geographic(dst) or dst in (gcrs.GCJ02, gcrs.BD09)
                                     else 0.01)
        feats.append({"type": "Feature", "geometry": shapely.to_geojson(geom),
                      "properties": {**props.get(k, {}), "class": int(k), "cells": int(sel.size)}})
    return {"type": "FeatureCollection", "features": feats}


def dump_geojson(fc: dict) -> bytes:
    """GeoJSON bytes; geometries already serialised by shapely are spliced in as they are."""
    import orjson

    parts = [b'{"type":"FeatureCollection"']
    for k, v in fc.items():
        if k not in ("type", "features"):
            parts.append(b"," + orjson.dumps(k) + b":" + orjson.dumps(v))
    feats = []
    for f in fc["features"]:
        g = f["geometry"]
        gb = g.encode() if isinstance(g, str) else orjson.dumps(g)
        feats.append(b'{"type":"Feature","geometry":' + gb + b',"properties":'
                     + orjson.dumps(f["properties"]) + b"}")
    parts.append(b',"features":[' + b",".join(feats) + b"]}")
    return b"".join(parts)
