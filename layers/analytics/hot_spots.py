"""Significant hot spots: the exact conditional test of each neighbourhood's count at a scale chosen
from the data, BH-FDR, confidence bins ±1..3 (``gis/exact_hotspots.py``: its docstring says why), as
GeoJSON analysis units with the observed and expected counts; too few cases is an answer, not a map.
"""

from __future__ import annotations

import numpy as np
import shapely
from sqlalchemy import Connection

from gis import crs as gcrs
from gis import exact_hotspots as gex
from layers.analytics import rollups
from layers.analytics.cache import GridArrays, _to_crs, dense_counts, grid_arrays
from layers.core.city import CityInfo
from layers.core.errors import InputError


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

HOT_LABELS = {3: "热点 99% Hot spot 99%", 2: "热点 95% Hot spot 95%", 1: "热点 90% Hot spot 90%",
              -1: "冷点 90% Cold spot 90%", -2: "冷点 95% Cold spot 95%", -3: "冷点 99% Cold spot 99%"}


# ----------------------------------------------------------------------------------------------
# Hot spots
# ----------------------------------------------------------------------------------------------

def hotspots(conn: Connection, city: CityInfo, start, end, *, categories=None, channels=None,
             unit_m: float | None = None, fdr: bool = True, area: str | None = None) -> dict:
    """Significant hot/cold spots by the exact conditional test at a chosen scale
    (``gis.exact_hotspots``: binomial given the window's total and the neighbourhood's share of the
    city's area, BH-FDR, bins ±1..3). Returns per-cell arrays (grid order; every cell carries the
    result of its analysis unit), the ``report`` (scale, cases, units) and ``too_few`` (fewer than
    30 cases: no analysis, every bin 0)."""
    arr = grid_arrays(conn, city)
    x = dense_counts(conn, city, arr, start, end, categories, channels)
    mask = rollups.area_mask(arr.grid.codes, area)
    if mask is not None:
        x = np.where(mask, x, 0.0)
    return hotspots_of_counts(arr, x, unit_m=unit_m, fdr=fdr)


def hotspots_geojson(conn: Connection, city: CityInfo, start, end, *, categories=None, channels=None,
                     unit_m=None, fdr=True, dst="EPSG:4326", dissolve: bool = False, area=None) -> dict:
    """The significant analysis units as polygons (one feature per unit: its p, z, observed and
    expected neighbourhood counts, its cells), or with ``dissolve`` one (multi)polygon per bin."""
    h = hotspots(conn, city, start, end, categories=categories, channels=channels, unit_m=unit_m, fdr=fdr,
                 area=area)
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
            fc = _geojson_of([gex.dissolve_units(geoms[r.bins[sel] == k]) for k in levels], city, dst,
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
