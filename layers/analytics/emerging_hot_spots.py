"""Emerging hot spots: the space-time cube of the rollup's counts over N periods, classified by
``gis.hotspots.emerging_hotspots`` (new, consecutive, intensifying … hot and cold spots).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from sqlalchemy import Connection

from gis import hotspots as ghot
from layers.analytics import rollups
from layers.analytics.cache import grid_arrays
from layers.analytics.hot_spots import TOO_FEW, _geojson_of, _unit_geoms, analysis_keys, cell_areas
from layers.core.city import CityInfo
from layers.core.errors import InputError

EMERGING_ZH = {
    "New Hot Spot": "新增热点", "Consecutive Hot Spot": "连续热点", "Intensifying Hot Spot": "加强热点",
    "Persistent Hot Spot": "持续热点", "Diminishing Hot Spot": "减弱热点", "Sporadic Hot Spot": "零星热点",
    "Oscillating Hot Spot": "振荡热点", "Historical Hot Spot": "历史热点",
    "New Cold Spot": "新增冷点", "Consecutive Cold Spot": "连续冷点", "Intensifying Cold Spot": "加强冷点",
    "Persistent Cold Spot": "持续冷点", "Diminishing Cold Spot": "减弱冷点", "Sporadic Cold Spot": "零星冷点",
    "Oscillating Cold Spot": "振荡冷点", "Historical Cold Spot": "历史冷点",
}


def emerging(conn: Connection, city: CityInfo, end: dt.date, *, steps: int = 12, step_days: int = 7,
             categories=None, channels=None, area=None) -> dict:
    """Emerging hot spots over ``steps`` periods of ``step_days`` days ending on ``end``, on the
    exact test (``gis.exact_hotspots.exact_emerging``)."""
    from gis import exact_hotspots as gex

    if not (3 <= steps <= 60) or not (1 <= step_days <= 31):
        raise InputError("steps must be 3..60 and step_days 1..31")
    arr = grid_arrays(conn, city)
    start = end - dt.timedelta(days=steps * step_days - 1)
    ids, day, n = rollups.cell_day_counts(conn, city, start, end, categories=categories, channels=channels,
                                             area=area)
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


def emerging_geojson(conn, city, end, *, steps=12, step_days=7, categories=None, channels=None, area=None,
                     dst="EPSG:4326") -> dict:
    """One feature per analysis unit with a pattern; ``summary`` counts cells per category."""
    e = emerging(conn, city, end, steps=steps, step_days=step_days, categories=categories, channels=channels,
                 area=area)
    cats = e["categories"]
    sel = np.flatnonzero(cats != ghot.NO_PATTERN)
    if e["too_few"]:
        fc = {"type": "FeatureCollection", "features": []}
    else:
        uc, scale = e["unit_categories"], e["scale"]
        us = np.flatnonzero(uc != ghot.NO_PATTERN)
        ncell = np.bincount(scale.unit, minlength=scale.m)
        fc = _geojson_of(_unit_geoms(e["arrays"], scale, us), city, dst, [
            {"unit": int(u), "category": uc[u], "name": EMERGING_ZH.get(uc[u], uc[u]),
             "label": f"{EMERGING_ZH.get(uc[u], '')} {uc[u]}",
             "cells": int(ncell[u])} for u in us])
    names, counts = np.unique(cats[sel], return_counts=True) if sel.size else ([], [])
    fc.update(summary={str(k): int(v) for k, v in zip(names, counts, strict=True)},
              legend=[{"category": str(k), "name": EMERGING_ZH.get(str(k), str(k)), "cold": "Cold" in str(k),
                       "cells": int(v)} for k, v in zip(names, counts, strict=True)], start=str(e["start"]),
              end=str(end), steps=steps, step_days=step_days)
    rep = e["report"]
    if e["too_few"]:
        fc.update(status="too_few_cases", cases=rep["cases"],
                  message=f"{TOO_FEW}: {rep['cases']} 件 cases, at least {rep['min_cases']} needed")
    else:
        fc.update(status="ok", cases=rep["cases"], scale={"unit_m": rep["unit_m"], "units": rep["units"],
                                                           "reason": rep["reason"]})
    return fc
