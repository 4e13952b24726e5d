"""Heat, significant hot spots, emerging hot spots and burst alerts over the database.

Cell counts come from the rollup (layers/analytics/rollups.py); the statistics are the pure ones of
``gis/heat.py``, ``gis/exact_hotspots.py`` (hot spots: exact test, chosen scale, FDR) and ``gis/bursts.py``. The grid (cell order, col/row, centroids)
and its spatial weights are cached per grid version, so a request costs one rollup query plus the
arithmetic.

Layers are returned as GeoJSON of *cells* (never case points): heat = cells with their density,
hotspots = significant cells with the p, z and confidence bin of their analysis unit, and the scale used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import shapely
from sqlalchemy import Connection, text

from gis import bursts as gbursts
from gis import crs as gcrs
from gis import heat as gheat
from gis import hotspots as ghot
from layers.analytics import rollups
from layers.core import grid as lgrid
from layers.core.city import CityInfo
from layers.core.errors import InputError

HOT_LABELS = {3: "热点 99% Hot spot 99%", 2: "热点 95% Hot spot 95%", 1: "热点 90% Hot spot 90%",
              -1: "冷点 90% Cold spot 90%", -2: "冷点 95% Cold spot 95%", -3: "冷点 99% Cold spot 99%"}
EMERGING_ZH = {
    "New Hot Spot": "新增热点", "Consecutive Hot Spot": "连续热点", "Intensifying Hot Spot": "加强热点",
    "Persistent Hot Spot": "持续热点", "Diminishing Hot Spot": "减弱热点", "Sporadic Hot Spot": "零星热点",
    "Oscillating Hot Spot": "振荡热点", "Historical Hot Spot": "历史热点",
    "New Cold Spot": "新增冷点", "Consecutive Cold Spot": "连续冷点", "Intensifying Cold Spot": "加强冷点",
    "Persistent Cold Spot": "持续冷点", "Diminishing Cold Spot": "减弱冷点", "Sporadic Cold Spot": "零星冷点",
    "Oscillating Cold Spot": "振荡冷点", "Historical Cold Spot": "历史冷点",
}


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
        if fingerprint[1] > CHANGE_LOG_COMPACT_AT:
            compact_change_log(conn, city)
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


HEAT_BANDS = (0.02, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9)  # lower edges of the 8 heat classes (share of max)


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


# ----------------------------------------------------------------------------------------------
# Heat
# ----------------------------------------------------------------------------------------------

def heat(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, *, categories=None, channels=None,
         bandwidth: float | None = None) -> dict:
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
                 bandwidth=None, min_share: float = 0.02, max_cells: int = 20000, dst="EPSG:4326",
                 dissolve: bool = False) -> dict:
    """Cells whose density is at least ``min_share`` of the maximum (at most ``max_cells``); with
    ``dissolve`` the 8 heat classes (HEAT_BANDS) as one polygon each."""
    h = heat(conn, city, start, end, categories=categories, channels=channels, bandwidth=bandwidth)
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
# Hot spots
# ----------------------------------------------------------------------------------------------

def hotspots(conn: Connection, city: CityInfo, start, end, *, categories=None, channels=None,
             unit_m: float | None = None, fdr: bool = True) -> dict:
    """Significant hot/cold spots by the exact conditional test at a chosen scale
    (``gis.exact_hotspots``: binomial given the window's total and the neighbourhood's share of the
    city's area, BH-FDR, bins ±1..3). Returns per-cell arrays (grid order; every cell carries the
    result of its analysis unit), the ``report`` (scale, cases, units) and ``too_few`` (fewer than
    30 cases: no analysis, every bin 0)."""
    arr = grid_arrays(conn, city)
    x = dense_counts(conn, city, arr, start, end, categories, channels)
    return hotspots_of_counts(arr, x, unit_m=unit_m, fdr=fdr)


def hotspots_of_counts(arr: GridArrays, x: np.ndarray, *, unit_m: float | None = None, fdr: bool = True) -> dict:
    from gis import exact_hotspots as gex

    cols, rows, size = analysis_keys(arr)
    k = None
    if unit_m is not None:
        if not (size <= unit_m <= 10_000):
            raise InputError(f"unit must be between {size:g} and 10000 m (a multiple of the {size:g} m cell)")
        k = max(1, int(round(unit_m / size)))
    zero = np.zeros(arr.n)
    try:
        r = gex.exact_hotspots(x, cols, rows, arr.cx, arr.cy, size, base=cell_areas(arr), fdr=fdr, k=k)
    except gex.TooFewCases as e:
        return {"z": zero, "p": np.ones(arr.n), "bins": np.zeros(arr.n, dtype=np.int8), "counts": x, "arrays": arr,
                "too_few": True, "report": {"cases": e.n, "min_cases": e.need}, "unit": None, "result": None}
    u = r.scale.unit
    return {"z": r.z[u], "p": r.p[u], "bins": r.bins[u], "counts": x, "arrays": arr, "too_few": False,
            "report": r.report, "unit": u, "result": r}


def analysis_keys(arr: GridArrays) -> tuple[np.ndarray, np.ndarray, float]:
    """(cols, rows, cell size) of the cells: the grid keys of a regular grid; for an irregular grid
    the keys of a square lattice of the median cell size laid over the centroids."""
    g = arr.grid
    if g.info.kind == "regular":
        return g.cols, g.rows, float(g.info.cell_size)
    size = float(np.sqrt(np.median(cell_areas(arr))))
    return np.floor(arr.cx / size).astype(np.int64), np.floor(arr.cy / size).astype(np.int64), size


def cell_areas(arr: GridArrays) -> np.ndarray:
    """Area (m²) of every cell as drawn (boundary cells are clipped), cached with the grid."""
    a = arr.weights.get("area")
    if a is None:
        a = arr.weights["area"] = shapely.area(arr.grid.geoms)
    return a


TOO_FEW = "案件过少，无法做热点分析 Too few cases for a hot-spot analysis"


def _scale_doc(h: dict) -> dict:
    rep = h["report"]
    if h["too_few"]:
        return {"status": "too_few_cases", "message": f"{TOO_FEW}: {rep['cases']} 件 cases in the window, "
                f"at least {rep['min_cases']} needed", "cases": rep["cases"]}
    return {"status": "ok", "cases": rep["cases"],
            "scale": {"unit_m": rep["unit_m"], "cells_per_unit_edge": rep["k"], "units": rep["units"],
                      "neighbours": rep["neighbours"], "expected_per_neighbourhood": rep["expected_per_neighbourhood"],
                      "reason": rep["reason"], "tried": rep.get("tried", [])},
            "method": "精确二项检验 exact binomial test of each neighbourhood's count given the window's total "
                      "and its share of the city's area; Benjamini-Hochberg FDR",
            "message": f"分析单元 {rep['unit_m']:g} m（{rep['units']} 个单元），{rep['cases']} 件案件 "
                       f"analysis unit {rep['unit_m']:g} m ({rep['units']} units), {rep['cases']} cases"}


def _unit_geoms(arr: GridArrays, r, units: np.ndarray):
    """Polygons of analysis units of ``r.scale`` (or of ``r``, a Scale), cached per grid and unit size."""
    from gis import exact_hotspots as gex

    scale = getattr(r, "scale", r)
    cache = arr.weights.setdefault(("unit_geom", scale.k), {})
    return gex.unit_geometries(scale, arr.grid.geoms, units, cache)


def _geojson_of(geoms, city: CityInfo, dst: str, props: list[dict]) -> dict:
    geoms = _to_crs(np.asarray(geoms, dtype=object), city.working_crs, dst)
    geoms = shapely.set_precision(geoms, 1e-6 if gcrs.is_geographic(dst) or dst in (gcrs.GCJ02, gcrs.BD09) else 0.01)
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": g, "properties": p}
        for g, p in zip(shapely.to_geojson(geoms).tolist(), props, strict=True)]}


def hotspots_geojson(conn: Connection, city: CityInfo, start, end, *, categories=None, channels=None,
                     unit_m=None, fdr=True, dst="EPSG:4326", dissolve: bool = False) -> dict:
    """The significant analysis units as polygons (one feature per unit: its p, z, observed and
    expected neighbourhood counts, its cells), or with ``dissolve`` one (multi)polygon per bin."""
    h = hotspots(conn, city, start, end, categories=categories, channels=channels, unit_m=unit_m, fdr=fdr)
    b, x = h["bins"], h["counts"]
    if h["too_few"]:
        fc = {"type": "FeatureCollection", "features": []}
    else:
        r, arr = h["result"], h["arrays"]
        sel = np.flatnonzero(r.bins != 0)
        ncell = np.bincount(r.scale.unit, minlength=r.scale.m)
        ucount = np.bincount(r.scale.unit, weights=x, minlength=r.scale.m)
        geoms = _unit_geoms(arr, r, sel)
        if dissolve:
            levels = sorted(set(r.bins[sel].tolist()))
            fc = _geojson_of([shapely.coverage_union_all(geoms[r.bins[sel] == k]) for k in levels], city, dst,
                             [{"bin": int(k), "label": HOT_LABELS[int(k)], "class": int(k),
                               "units": int((r.bins[sel] == k).sum()),
                               "cells": int(ncell[sel][r.bins[sel] == k].sum())} for k in levels])
        else:
            fc = _geojson_of(geoms, city, dst, [
                {"unit": int(u), "z": round(float(r.z[u]), 4), "p": float(f"{r.p[u]:.4g}"), "bin": int(r.bins[u]),
                 "label": HOT_LABELS[int(r.bins[u])], "count": int(ucount[u]), "observed": int(r.observed[u]),
                 "expected": round(float(r.expected[u]), 3), "cells": int(ncell[u])} for u in sel])
    fc.update(summary={HOT_LABELS[k]: int((b == k).sum()) for k in (3, 2, 1, -1, -2, -3)},
              total=int(x.sum()), fdr=fdr, **_scale_doc(h))
    if not h["too_few"]:
        r = h["result"]
        fc["units_summary"] = {HOT_LABELS[k]: int((r.bins == k).sum()) for k in (3, 2, 1, -1, -2, -3)}
    return fc


def emerging(conn: Connection, city: CityInfo, end: dt.date, *, steps: int = 12, step_days: int = 7,
             categories=None) -> dict:
    """Emerging hot spots over ``steps`` periods of ``step_days`` days ending on ``end``, on the
    exact test (``gis.exact_hotspots.exact_emerging``)."""
    from gis import exact_hotspots as gex

    if not (3 <= steps <= 60) or not (1 <= step_days <= 31):
        raise InputError("steps must be 3..60 and step_days 1..31")
    arr = grid_arrays(conn, city)
    start = end - dt.timedelta(days=steps * step_days - 1)
    ids, day, n = rollups.cell_day_counts(conn, city, start, end, categories=categories)
    pos = arr.positions(ids)
    ok = pos >= 0
    cube = np.zeros((steps, arr.n))
    np.add.at(cube, (day[ok] // step_days, pos[ok]), n[ok])
    cols, rows, size = analysis_keys(arr)
    try:
        cats, scale, rep = gex.exact_emerging(cube, cols, rows, arr.cx, arr.cy, size, base=cell_areas(arr))
    except gex.TooFewCases as e:
        return {"categories": np.full(arr.n, ghot.NO_PATTERN, dtype=object), "start": start, "arrays": arr,
                "too_few": True, "report": {"cases": e.n, "min_cases": e.need}, "scale": None, "unit_categories": None}
    return {"categories": cats[scale.unit], "start": start, "arrays": arr, "too_few": False, "report": rep,
            "scale": scale, "unit_categories": cats}


def emerging_geojson(conn, city, end, *, steps=12, step_days=7, categories=None, dst="EPSG:4326") -> dict:
    """One feature per analysis unit with a pattern; ``summary`` counts cells per category."""
    e = emerging(conn, city, end, steps=steps, step_days=step_days, categories=categories)
    cats = e["categories"]
    sel = np.flatnonzero(cats != ghot.NO_PATTERN)
    if e["too_few"]:
        fc = {"type": "FeatureCollection", "features": []}
    else:
        uc, scale = e["unit_categories"], e["scale"]
        us = np.flatnonzero(uc != ghot.NO_PATTERN)
        ncell = np.bincount(scale.unit, minlength=scale.m)
        fc = _geojson_of(_unit_geoms(e["arrays"], scale, us), city, dst, [
            {"unit": int(u), "category": uc[u], "label": f"{EMERGING_ZH.get(uc[u], '')} {uc[u]}",
             "cells": int(ncell[u])} for u in us])
    names, counts = np.unique(cats[sel], return_counts=True) if sel.size else ([], [])
    fc.update(summary={str(k): int(v) for k, v in zip(names, counts, strict=True)}, start=str(e["start"]),
              end=str(end), steps=steps, step_days=step_days)
    rep = e["report"]
    if e["too_few"]:
        fc.update(status="too_few_cases", cases=rep["cases"],
                  message=f"{TOO_FEW}: {rep['cases']} 件 cases, at least {rep['min_cases']} needed")
    else:
        fc.update(status="ok", cases=rep["cases"], scale={"unit_m": rep["unit_m"], "units": rep["units"],
                                                           "reason": rep["reason"]})
    return fc


# ----------------------------------------------------------------------------------------------
# Bursts and alerts (舆情专报, 信访苗头)
# ----------------------------------------------------------------------------------------------

def _signature(*parts) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:20]


ALERTS_CONFIG = Path(__file__).with_name("data") / "alerts.json"


def alert_config() -> dict:
    """The alert thresholds (``data/alerts.json``): min_recurrence_days (default 365: one
    false alert a year per city for a daily scan), analysis_interval_days, n_sim."""
    import json

    cfg = json.loads(ALERTS_CONFIG.read_text(encoding="utf-8"))
    return {"min_recurrence_days": float(cfg.get("min_recurrence_days", 365)),
            "analysis_interval_days": float(cfg.get("analysis_interval_days", 1)), "n_sim": int(cfg.get("n_sim", 999))}


def recurrence_words(days: float | None, at_least: bool = False) -> str | None:
    """The recurrence interval in words, zh-CN first."""
    if days is None:
        return None
    n = f"{days:,.0f}"
    if at_least:
        return (f"在没有聚集的城市里，这样强的聚集至少约 {n} 天才偶然出现一次 "
                f"(in a city without clusters, a cluster this strong appears by chance at most once in {n} days)")
    return (f"在没有聚集的城市里，这样强的聚集约 {n} 天偶然出现一次 "
            f"(in a city without clusters, a cluster this strong appears by chance once in {n} days)")


def scan_day(conn: Connection, city: CityInfo, day: dt.date, *, category: str | None = None,
             study_days: int = 28, max_window: int = 7, n_sim: int | None = None, alpha: float | None = None,
             min_recurrence_days: float | None = None, max_radius: float = 1000.0, max_cells: int = 50,
             seed: int | None = None, store: bool = True) -> list[dict]:
    """The daily prospective space-time permutation scan for ``day`` (study period: the previous
    ``study_days`` days up to it). A cluster is an alert when its recurrence interval is at least
    ``min_recurrence_days`` (default from ``alerts.json``: 365 days, one false alert a year), or,
    when ``alpha`` is given instead, when p ≤ alpha. Alerts are stored when ``store``."""
    cfg = alert_config()
    n_sim = cfg["n_sim"] if n_sim is None else n_sim
    interval = cfg["analysis_interval_days"]
    ri_min = cfg["min_recurrence_days"] if min_recurrence_days is None else float(min_recurrence_days)
    if not (7 <= study_days <= 365) or not (1 <= max_window <= 14) or not (9 <= n_sim <= 9999):
        raise InputError("study_days 7..365, max_window 1..14, n_sim 9..9999")
    if alpha is None and (n_sim + 1) * interval < ri_min:
        raise InputError(f"n_sim must be at least {int(np.ceil(ri_min / interval)) - 1} to reach a recurrence "
                         f"interval of {ri_min:g} days (the Monte Carlo p is at least 1/(n_sim + 1))")
    arr = grid_arrays(conn, city)
    start = day - dt.timedelta(days=study_days - 1)
    ids, d, n = rollups.cell_day_counts(conn, city, start, day, categories=[category] if category else None)
    pos = arr.positions(ids)
    ok = pos >= 0
    if not ok.any():
        return []
    used = np.unique(pos[ok])
    loc = np.searchsorted(used, pos[ok])
    mat = sp.csr_matrix((n[ok], (loc, d[ok])), shape=(used.size, study_days))
    if seed is None:
        seed = int(_signature(city.id, day, category)[:8], 16)
    clusters = gbursts.space_time_permutation_scan(mat, arr.cx[used], arr.cy[used], max_window=max_window,
                                                   n_sim=n_sim, seed=seed, max_radius=max_radius,
                                                   max_cells=max_cells, analysis_interval_days=interval)
    out = []
    for c in clusters:
        if (c.p_value > alpha) if alpha is not None else (c.recurrence_days < ri_min * (1 - 1e-12)):
            continue
        cells = used[c.cells]
        floor = c.p_value <= 1.0 / (n_sim + 1) * (1 + 1e-9)  # no replicate as strong: RI is a lower bound
        a = {"kind": "scan", "detected_on": day, "category_code": category,
             "window_start": start + dt.timedelta(days=c.start_day), "window_end": day,
             "cell_ids": [int(arr.grid.ids[i]) for i in cells], "cell_codes": [str(arr.grid.codes[i]) for i in cells],
             "observed": c.observed, "expected": c.expected, "p_value": c.p_value, "llr": c.llr,
             "recurrence_days": c.recurrence_days,
             "details": {"radius_m": round(c.radius, 1), "n_sim": n_sim, "study_days": study_days,
                         "center": str(arr.grid.codes[used[c.center]]), "recurrence_at_least": bool(floor),
                         "recurrence_text": recurrence_words(c.recurrence_days, floor),
                         "threshold": ({"alpha": alpha} if alpha is not None
                                       else {"min_recurrence_days": ri_min})}}
        a["signature"] = _signature(category, a["window_start"], arr.grid.codes[used[c.center]])
        out.append(a)
    if store:
        _store(conn, city, _continuing(conn, city, out))
    return out


def _continuing(conn: Connection, city: CityInfo, alerts: list[dict]) -> list[dict]:
    """A prospective scan keeps seeing a cluster for as long as its days stay in the window: a
    cluster that overlaps (in time and in cells) one already signalled in the last 7 days is
    the same event: that alert is updated (last seen, counts), not raised again."""
    import json

    fresh = []
    for a in alerts:
        prev = conn.execute(text("""
            SELECT id FROM analytics_alert WHERE city_id = :c AND kind = 'scan' AND window_end >= :ws
              AND detected_on < :d AND detected_on >= :d - 7 AND cell_ids && CAST(:cells AS bigint[])
              AND category_code IS NOT DISTINCT FROM :cat
            ORDER BY detected_on DESC LIMIT 1"""), {"c": city.id, "ws": a["window_start"], "d": a["detected_on"],
                                                    "cells": a["cell_ids"], "cat": a["category_code"]}).scalar()
        if prev is None:
            fresh.append(a)
            continue
        conn.execute(text("""
            UPDATE analytics_alert SET details = details || CAST(:upd AS jsonb),
                   observed = GREATEST(observed, :obs) WHERE id = :id"""),
            {"id": prev, "obs": a["observed"], "upd": json.dumps(
                {"last_seen": str(a["detected_on"]), "last_p_value": a["p_value"], "last_observed": a["observed"],
                 "last_expected": round(a["expected"], 3)})})
        a["id"] = prev
        a["continued"] = True
    return fresh


def surge_day(conn: Connection, city: CityInfo, day: dt.date, *, weeks: int = 8, min_count: int = 5,
              factor: float = 2.0, n_sd: float = 3.0, store: bool = True) -> list[dict]:
    """Per-class surge rule: the day's count against the same weekday of the previous ``weeks``."""
    if not (1 <= weeks <= 52):
        raise InputError("weeks must be 1..52")
    start = day - dt.timedelta(days=7 * weeks)
    series = rollups.class_day_counts(conn, city, start, day)
    if not series:
        return []
    cats = sorted(series)
    mat = np.array([series[c] for c in cats])  # (K, days)
    today = mat[:, -1]
    base = mat[:, -1 - 7 * np.arange(1, weeks + 1)].T  # (weeks, K)
    flags = gbursts.surge_rule(today, base, min_count=min_count, factor=factor, n_sd=n_sd)
    out = []
    for k in np.flatnonzero(flags):
        out.append({"kind": "surge", "detected_on": day, "category_code": cats[k], "window_start": day,
                    "window_end": day, "cell_ids": [], "cell_codes": [], "observed": int(today[k]),
                    "expected": float(base[:, k].mean()), "p_value": None, "llr": None, "recurrence_days": None,
                    "details": {"baseline": base[:, k].tolist(), "weeks": weeks, "factor": factor, "n_sd": n_sd},
                    "signature": _signature(cats[k])})
    if store:
        _store(conn, city, out)
    return out


def petition_risks(conn: Connection, city: CityInfo, day: dt.date, *, days: int = 30, same_caller: int = 3,
                   same_place: int = 3, store: bool = True) -> list[dict]:
    """信访苗头: the same caller (case_contact.phone, compared inside the database and never returned)
    with ≥ ``same_caller`` cases in ``days`` days up to ``day``, or the same cell and class with
    ≥ ``same_place`` cases. The alert carries case numbers, cells and classes only."""
    start = day - dt.timedelta(days=days - 1)
    tz = rollups.timezone(conn, city)
    rows = conn.execute(text("""
        WITH w AS (
            SELECT f.id, f.case_no, f.cell_id, f.cell_code, f.category_code, c.phone
            FROM case_file f LEFT JOIN case_contact c ON c.case_id = f.id
            WHERE f.city_id = :c AND f.merged_into IS NULL
              AND (f.received_at AT TIME ZONE :tz)::date BETWEEN :a AND :b)
        SELECT 'caller' AS why, md5(phone) AS grp, array_agg(case_no ORDER BY id), array_agg(DISTINCT category_code),
               array_agg(DISTINCT cell_code) FILTER (WHERE cell_code IS NOT NULL), count(*)
        FROM w WHERE phone IS NOT NULL AND phone <> '' GROUP BY phone HAVING count(*) >= :nc
        UNION ALL
        SELECT 'place', cell_code || '/' || category_code, array_agg(case_no ORDER BY id),
               array[category_code], array[cell_code], count(*)
        FROM w WHERE cell_code IS NOT NULL GROUP BY cell_code, category_code HAVING count(*) >= :np"""),
        {"c": city.id, "tz": tz, "a": start, "b": day, "nc": same_caller, "np": same_place}).all()
    out = []
    for why, grp, case_nos, cats, cells, cnt in rows:
        out.append({"kind": "petition", "detected_on": day, "category_code": cats[0] if len(cats) == 1 else None,
                    "window_start": start, "window_end": day, "cell_ids": [], "cell_codes": list(cells or []),
                    "observed": int(cnt), "expected": 0.0, "p_value": None, "llr": None, "recurrence_days": None,
                    "details": {"reason": "同一来电人反复投诉 same caller, repeated" if why == "caller"
                                else "同一地点同类问题反复 same place and class, repeated",
                                "case_nos": list(case_nos), "categories": list(cats)},
                    # the caller group is a hash of a hash: stable across reruns, not reversible to the phone
                    "signature": _signature(why, grp)})
    if store:
        fresh = []
        for a in out:  # the same group flagged in the last ``days`` days: update that alert, not a new one
            prev = conn.execute(text("""
                SELECT id FROM analytics_alert WHERE city_id = :c AND kind = 'petition' AND signature = :s
                  AND detected_on < :d AND detected_on > :d - :days ORDER BY detected_on DESC LIMIT 1"""),
                {"c": city.id, "s": a["signature"], "d": day, "days": days}).scalar()
            if prev is None:
                fresh.append(a)
                continue
            import json

            conn.execute(text("""UPDATE analytics_alert SET observed = :o, window_end = :d,
                                 details = details || CAST(:upd AS jsonb) WHERE id = :id"""),
                         {"id": prev, "o": a["observed"], "d": day,
                          "upd": json.dumps({"last_seen": str(day), "case_nos": a["details"]["case_nos"]},
                                            ensure_ascii=False)})
            a["id"], a["continued"] = prev, True
        _store(conn, city, fresh)
    return out


def _store(conn: Connection, city: CityInfo, alerts: list[dict]) -> None:
    import json

    for a in alerts:
        a["id"] = conn.execute(text("""
            INSERT INTO analytics_alert (city_id, kind, detected_on, category_code, window_start, window_end,
                cell_ids, cell_codes, observed, expected, p_value, llr, recurrence_days, signature, details)
            VALUES (:city, :kind, :detected_on, :category_code, :window_start, :window_end, :cell_ids, :cell_codes,
                    :observed, :expected, :p_value, :llr, :recurrence_days, :signature, CAST(:details AS jsonb))
            ON CONFLICT (city_id, kind, detected_on, signature) DO UPDATE SET observed = EXCLUDED.observed,
                expected = EXCLUDED.expected, p_value = EXCLUDED.p_value, llr = EXCLUDED.llr,
                recurrence_days = EXCLUDED.recurrence_days, cell_ids = EXCLUDED.cell_ids,
                cell_codes = EXCLUDED.cell_codes, details = EXCLUDED.details
            RETURNING id"""), {**{k: v for k, v in a.items() if k != "id"}, "city": city.id,
                               "details": json.dumps(a["details"], ensure_ascii=False, default=str)}).scalar_one()


def run_daily(conn: Connection, city: CityInfo, day: dt.date, *, n_sim: int | None = None) -> dict:
    """Everything the daily job does: scan (all classes), surge per class, petition risks."""
    return {"scan": scan_day(conn, city, day, n_sim=n_sim), "surge": surge_day(conn, city, day),
            "petition": petition_risks(conn, city, day)}


def alert_feed(conn: Connection, city: CityInfo, *, since: dt.date | None = None, until: dt.date | None = None,
               kind: str | None = None, limit: int = 100) -> list[dict]:
    if kind is not None and kind not in ("scan", "surge", "petition"):
        raise InputError("kind must be scan, surge or petition")
    if not (1 <= limit <= 1000):
        raise InputError("limit must be 1..1000")
    rows = conn.execute(text("""
        SELECT id, kind, detected_on, category_code, window_start, window_end, cell_codes, observed, expected,
               p_value, llr, recurrence_days, details
        FROM analytics_alert WHERE city_id = :c AND (CAST(:k AS text) IS NULL OR kind = :k)
          AND (CAST(:s AS date) IS NULL OR detected_on >= :s) AND (CAST(:u AS date) IS NULL OR detected_on <= :u)
        ORDER BY detected_on DESC, kind, observed DESC LIMIT :lim"""),
        {"c": city.id, "k": kind, "s": since, "u": until, "lim": limit}).mappings().all()
    kinds = {"scan": "时空聚集 Space-time cluster", "surge": "类别激增 Class surge", "petition": "信访苗头 Petition risk"}
    out = []
    for r in rows:
        d = dict(r)
        d["label"] = kinds[d["kind"]]
        for k in ("detected_on", "window_start", "window_end"):
            d[k] = str(d[k])
        d["expected"] = round(d["expected"], 3)
        d["cells"] = len(d["cell_codes"])
        det = d.get("details") or {}
        d["recurrence_text"] = recurrence_words(d["recurrence_days"], bool(det.get("recurrence_at_least")))
        out.append(d)
    return out


# ----------------------------------------------------------------------------------------------
# folium
# ----------------------------------------------------------------------------------------------

LEAFLET_JS = "/static/vendor/leaflet/leaflet.js"
LEAFLET_CSS = "/static/vendor/leaflet/leaflet.css"


def folium_map(heat_fc: dict, hot_fc: dict, *, title: str = "") -> str:
    """A folium map (HTML) of the heat and hot-spot cell layers with a layer control; Leaflet comes
    from the vendored copy (no CDN, no tile server: the page works offline)."""
    import json

    import folium

    m = folium.Map(tiles=None, control_scale=True, prefer_canvas=True)
    m.default_js = [("leaflet", LEAFLET_JS)]
    m.default_css = [("leaflet_css", LEAFLET_CSS)]
    ramp = ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#b10026"]
    bins = {3: "#b2182b", 2: "#ef8a62", 1: "#fddbc7", -1: "#d1e5f0", -2: "#67a9cf", -3: "#2166ac"}

    def parsed(fc):
        return {"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": f["properties"],
             "geometry": json.loads(f["geometry"]) if isinstance(f["geometry"], str) else f["geometry"]}
            for f in fc["features"]]}

    heat = parsed(heat_fc)
    hot = parsed(hot_fc)
    # (a tooltip needs at least one feature to read its fields from)
    folium.GeoJson(heat, name="热力 Heat", style_function=lambda f: {
        "weight": 0.5, "color": ramp[min(7, int(f["properties"]["level"] * 8))], "fillOpacity": 0.7,
        "fillColor": ramp[min(7, int(f["properties"]["level"] * 8))]},
        tooltip=folium.GeoJsonTooltip(["code", "density"], aliases=["网格 Cell", "件/km²"])
        if heat["features"] else None).add_to(m)
    hot_name = "热点 Hot spots"
    if hot_fc.get("status") == "too_few_cases":
        hot_name += " — " + hot_fc["message"]
    elif hot_fc.get("scale"):
        hot_name += f" (单元 unit {hot_fc['scale']['unit_m']:g} m, {hot_fc['cases']} 件 cases, FDR)"
    folium.GeoJson(hot, name=hot_name, style_function=lambda f: {
        "weight": 0.3, "color": "#555", "fillOpacity": 0.75, "fillColor": bins[f["properties"]["bin"]]},
        tooltip=folium.GeoJsonTooltip(["label", "observed", "expected", "p", "cells"],
                                      aliases=["类别 Class", "观测 Observed", "期望 Expected", "p", "网格数 Cells"])
        if hot["features"] else None).add_to(m)
    folium.LayerControl(collapsed=False).add_to(m)
    feats = heat["features"] + hot["features"]
    if feats:
        import shapely

        b = shapely.total_bounds(shapely.from_geojson([json.dumps(f["geometry"]) for f in feats]))
        m.fit_bounds([[b[1], b[0]], [b[3], b[2]]])
    if title:
        m.get_root().html.add_child(folium.Element(f"<title>{title}</title>"))
    return m.get_root().render()


def main_daily(argv: list[str] | None = None) -> int:
    """``citygrid alerts [--city haimen] [--day YYYY-MM-DD]``: the daily scan, surge rule and petition
    check (default day: yesterday); prints counts only (alerts carry no personal data)."""
    import argparse

    from citygrid import settings
    from citygrid.dbcluster import database_url
    from layers.core import city as lcity
    from layers.core.db import make_engine

    ap = argparse.ArgumentParser(prog="citygrid alerts", description="舆情预警 daily burst and petition-risk check")
    ap.add_argument("--city", default=None)
    ap.add_argument("--day", default=None, help="YYYY-MM-DD (default: yesterday)")
    ap.add_argument("--n-sim", type=int, default=None, help="Monte Carlo replicates (default: alerts.json)")
    args = ap.parse_args(argv)
    try:
        day = dt.date.fromisoformat(args.day) if args.day else dt.date.today() - dt.timedelta(days=1)
    except ValueError:
        print(f"error: --day must be YYYY-MM-DD, got '{args.day}'")
        return 2
    engine = make_engine(database_url(log=lambda *_: None))
    with engine.begin() as conn:
        city = lcity.get_city(conn, args.city or settings.api().default_city)
        res = run_daily(conn, city, day, n_sim=args.n_sim)
    engine.dispose()
    print(f"{city.slug} {day}: {len(res['scan'])} space-time clusters, {len(res['surge'])} class surges, "
          f"{len(res['petition'])} petition risks")
    return 0


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


def heat_tile(conn: Connection, city: CityInfo, start, end, z: int, x: int, y: int, *, categories=None,
              channels=None, bandwidth=None, min_share: float = 0.02) -> bytes:
    """The heat of the window as a Mapbox Vector Tile: layer ``heat``, one polygon per cell whose
    density is at least ``min_share`` of the maximum, with ``density`` (cases/km²) and ``level``
    (share of the maximum). Cells are picked by their centres with a one-cell margin, then clipped."""
    import mapbox_vector_tile

    bounds = tile_bounds_3857(z, x, y)
    h = heat(conn, city, start, end, categories=categories, channels=channels, bandwidth=bandwidth)
    features = []
    if h["total"]:
        d, arr = h["density"], h["arrays"]
        top = float(d.max())
        box = gcrs.transform_geometry(shapely.segmentize(shapely.box(*bounds), (bounds[2] - bounds[0]) / 8),
                                      "EPSG:3857", city.working_crs)
        bx0, by0, bx1, by1 = box.bounds
        pad = (arr.grid.info.cell_size or float(np.sqrt(np.median(shapely.area(arr.grid.geoms))))) * 1.5
        sel = np.flatnonzero((d >= min_share * top) & (arr.cx >= bx0 - pad) & (arr.cx <= bx1 + pad)
                             & (arr.cy >= by0 - pad) & (arr.cy <= by1 + pad))
        if sel.size:
            geoms = gcrs.transform_geometry(arr.grid.geoms[sel], city.working_crs, "EPSG:3857")
            clipped = shapely.clip_by_rect(geoms, *bounds)
            for i, g in zip(sel, clipped, strict=True):
                if g.is_empty or g.area == 0:
                    continue
                features.append({"geometry": g, "properties": {
                    "code": str(arr.grid.codes[i]), "density": round(float(d[i]), 3),
                    "level": round(float(d[i]) / top, 4)}})
    return mapbox_vector_tile.encode([{"name": "heat", "features": features}],
                                     default_options={"quantize_bounds": bounds, "extents": 4096})
