"""Case rollups: counts per cell × local day × class × channel (table ``case_rollup``).

Kept current by statement-level triggers on ``case_file`` (migration 0005): every INSERT, UPDATE
(cell, class, channel, time or 并单 changed) or DELETE adjusts the counts set-based through transition
tables, in the same transaction as the change. Every window and filter of the supervisors' view is
answered from here, never by scanning ``case_file``. :func:`rebuild` recomputes a city's rollup from
scratch (repair, or after changing the city's time zone).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from sqlalchemy import Connection, text

from layers.core.city import CityInfo
from layers.core.errors import InputError

MAX_DAYS = 3 * 366


def set_timezone(conn: Connection, city: CityInfo, tz: str) -> None:
    """Set the zone whose calendar days the rollup counts in, and rebuild the city's rollup."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"unknown time zone '{tz}' (e.g. Asia/Shanghai, America/Los_Angeles)") from None
    conn.execute(text("""INSERT INTO analytics_city (city_id, timezone) VALUES (:c, :tz)
                         ON CONFLICT (city_id) DO UPDATE SET timezone = EXCLUDED.timezone"""),
                 {"c": city.id, "tz": tz})
    rebuild(conn, city)


def timezone(conn: Connection, city: CityInfo) -> str:
    tz = conn.execute(text("SELECT timezone FROM analytics_city WHERE city_id = :c"), {"c": city.id}).scalar()
    return tz or "Asia/Shanghai"


def rebuild(conn: Connection, city: CityInfo) -> int:
    """Recompute the city's rollup from case_file; returns the number of rollup rows. Bumps the
    city's epoch so that in-process caches reload everything."""
    conn.execute(text("""INSERT INTO analytics_city (city_id, epoch) VALUES (:c, 1)
                         ON CONFLICT (city_id) DO UPDATE SET epoch = analytics_city.epoch + 1"""), {"c": city.id})
    conn.execute(text("DELETE FROM case_rollup WHERE city_id = :c"), {"c": city.id})
    return conn.execute(text("""
        INSERT INTO case_rollup (city_id, cell_id, day, category_code, channel, n)
        SELECT f.city_id, COALESCE(f.cell_id, 0),
               (f.received_at AT TIME ZONE COALESCE(ac.timezone, 'Asia/Shanghai'))::date,
               f.category_code, f.channel, count(*)
        FROM case_file f LEFT JOIN analytics_city ac ON ac.city_id = f.city_id
        WHERE f.city_id = :c AND f.merged_into IS NULL
        GROUP BY 1, 2, 3, 4, 5"""), {"c": city.id}).rowcount


def check_window(start: dt.date, end: dt.date) -> None:
    if end < start:
        raise InputError(f"the window ends ({end}) before it starts ({start})")
    if (end - start).days + 1 > MAX_DAYS:
        raise InputError(f"the window is longer than {MAX_DAYS} days")


def _filters(categories, channels) -> tuple[str, dict]:
    sql, params = "", {}
    if categories:
        sql += " AND category_code = ANY(:cats)"
        params["cats"] = list(categories)
    if channels:
        sql += " AND channel = ANY(:chans)"
        params["chans"] = list(channels)
    return sql, params


def cell_counts(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, *, categories=None,
                channels=None) -> tuple[np.ndarray, np.ndarray]:
    """(cell ids, counts) of cases received on days start..end (inclusive), cells with ≥ 1 case."""
    check_window(start, end)
    f, p = _filters(categories, channels)
    rows = conn.execute(text(f"""
        SELECT cell_id, sum(n) FROM case_rollup
        WHERE city_id = :c AND day BETWEEN :a AND :b AND cell_id <> 0 {f}
        GROUP BY cell_id"""), {"c": city.id, "a": start, "b": end, **p}).all()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    n = np.array([r[1] for r in rows], dtype=np.float64)
    return ids, n


def cell_day_counts(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, *, categories=None,
                    channels=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell ids, day index from ``start``, counts): sparse cell × day triples."""
    check_window(start, end)
    f, p = _filters(categories, channels)
    rows = conn.execute(text(f"""
        SELECT cell_id, day - CAST(:a AS date), sum(n) FROM case_rollup
        WHERE city_id = :c AND day BETWEEN :a AND :b AND cell_id <> 0 {f}
        GROUP BY 1, 2"""), {"c": city.id, "a": start, "b": end, **p}).all()
    return (np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.int64),
            np.array([r[2] for r in rows], dtype=np.int64))


def class_day_counts(conn: Connection, city: CityInfo, start: dt.date, end: dt.date) -> dict[str, np.ndarray]:
    """class → counts per day start..end (all cells, with or without a cell)."""
    check_window(start, end)
    ndays = (end - start).days + 1
    out: dict[str, np.ndarray] = {}
    for cat, d, n in conn.execute(text("""
            SELECT category_code, day - CAST(:a AS date), sum(n) FROM case_rollup
            WHERE city_id = :c AND day BETWEEN :a AND :b GROUP BY 1, 2"""),
            {"c": city.id, "a": start, "b": end}):
        out.setdefault(cat, np.zeros(ndays, dtype=np.int64))[d] = n
    return out


def totals(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, by: str) -> list[dict]:
    """Counts grouped by 'day', 'category' or 'channel' over the window."""
    check_window(start, end)
    col = {"day": "day", "category": "category_code", "channel": "channel"}.get(by)
    if col is None:
        raise InputError("by must be one of day, category, channel")
    rows = conn.execute(text(f"""
        SELECT {col}, sum(n) FROM case_rollup WHERE city_id = :c AND day BETWEEN :a AND :b
        GROUP BY 1 ORDER BY {'1' if by == 'day' else '2 DESC, 1'}"""), {"c": city.id, "a": start, "b": end}).all()
    return [{"key": str(k), "n": int(n)} for k, n in rows]
