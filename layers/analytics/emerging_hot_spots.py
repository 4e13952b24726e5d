"""Emerging hot spots: the space-time cube of the rollup's counts over N periods, classified by
``gis.hotspots.emerging_hotspots`` (new, consecutive, intensifying … hot and cold spots).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from sqlalchemy import Connection

from gis import hotspots as ghot
from layers.analytics import rollups
from layers.analytics.cache import cells_geojson, grid_arrays, weights
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
             categories=None) -> dict:
    """Emerging hot spots over ``steps`` periods of ``step_days`` days ending on ``end``."""
    if not (3 <= steps <= 60) or not (1 <= step_days <= 31):
        raise InputError("steps must be 3..60 and step_days 1..31")
    arr = grid_arrays(conn, city)
    start = end - dt.timedelta(days=steps * step_days - 1)
    ids, day, n = rollups.cell_day_counts(conn, city, start, end, categories=categories)
    pos = arr.positions(ids)
    ok = pos >= 0
    cube = np.zeros((steps, arr.n))
    np.add.at(cube, (day[ok] // step_days, pos[ok]), n[ok])
    W = weights(arr, "queen")
    cats = ghot.emerging_hotspots(cube, W)
    return {"categories": cats, "start": start, "arrays": arr}


def emerging_geojson(conn, city, end, *, steps=12, step_days=7, categories=None, dst="EPSG:4326") -> dict:
    e = emerging(conn, city, end, steps=steps, step_days=step_days, categories=categories)
    cats = e["categories"]
    sel = np.flatnonzero(cats != ghot.NO_PATTERN)
    fc = cells_geojson(e["arrays"], city, sel, [{"category": cats[i], "label": f"{EMERGING_ZH.get(cats[i], '')} "
                                                 f"{cats[i]}"} for i in sel], dst)
    names, counts = np.unique(cats[sel], return_counts=True) if sel.size else ([], [])
    fc.update(summary={str(k): int(v) for k, v in zip(names, counts, strict=True)}, start=str(e["start"]),
              end=str(end), steps=steps, step_days=step_days)
    return fc
