"""Case rollups: counts per cell × local day × class × channel (table ``case_rollup``).

**Received in the window** (the one definition behind the supervisors' map, KPIs and charts): a case
whose ``received_at`` falls on a local day start..end of the city's time zone (= ``[start 00:00,
end + 1 day 00:00)`` local time), that is not a merged duplicate (并单: a merged call is counted once,
in its original case). Filters: classes, channels and an administrative area (district 6 / street 9 /
community 12 digits) matched by the code of the case's cell; a case without a cell has no area and
is counted city-wide only (the map cannot place it: ``window_counts`` says how many).

Kept current by statement-level triggers on ``case_file`` (migration 0005): every INSERT, UPDATE
(cell, class, channel, time or 并单 changed) or DELETE adjusts the counts set-based through transition
tables, in the same transaction as the change. Every window and filter of the supervisors' view is
answered from here, never by scanning ``case_file``. :func:`rebuild` recomputes a city's rollup from
scratch (repair, or after changing the city's time zone).
"""

from __future__ import annotations

import datetime as dt
import re
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


_AREA = re.compile(r"^[0-9]{6}([0-9]{3}([0-9]{3})?)?$")

DEFINITION = ("受理量口径：受理时间（本地日）在所选起止日之间（含首尾日）的案件；重复诉求并单后只计原案一次；"
              "按类别、渠道、区域筛选。地图、指标卡和图表使用同一口径。")
DEFINITION_EN = ("Received in the window: cases whose received time falls on a local day from the first to the "
                 "last day (both included); merged duplicates (并单) count once, in their original case; the same "
                 "class, channel and area filters apply to the map, the KPI cards and the charts.")


def check_area(area: str | None) -> str | None:
    """An administrative area code (district 6, street 9, community 12 digits), or None."""
    if area is None or area == "":
        return None
    if not _AREA.match(area):
        raise InputError(f"area must be a district (6 digits), street (9) or community (12) code, got '{area[:20]}'")
    return area


def filter_sql(categories, channels, area=None, prefix: str = "") -> tuple[str, dict]:
    """SQL conditions of the supervisors' filters on a table with category_code, channel and cell_id
    (``prefix``: the table's alias with its dot)."""
    sql, params = "", {}
    if categories:
        sql += f" AND {prefix}category_code = ANY(:cats)"
        params["cats"] = list(categories)
    if channels:
        sql += f" AND {prefix}channel = ANY(:chans)"
        params["chans"] = list(channels)
    if check_area(area):
        sql += f" AND {prefix}cell_id IN (SELECT id FROM grid_cell WHERE code LIKE :area_prefix)"
        params["area_prefix"] = area + "%"
    return sql, params


def area_mask(codes, area: str | None) -> np.ndarray | None:
    """Cells (in the given code order) inside the area, by the same rule as the SQL filter (the cell
    code starts with the area code); None without an area."""
    if not check_area(area):
        return None
    return np.fromiter((str(c).startswith(area) for c in codes), dtype=bool, count=len(codes))


def local_bounds(conn: Connection, city: CityInfo, start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start 00:00, end + 1 day 00:00) in the city's time zone: the instants of local days start..end."""
    tz = ZoneInfo(timezone(conn, city))
    e1 = end + dt.timedelta(days=1)
    return (dt.datetime(start.year, start.month, start.day, tzinfo=tz), dt.datetime(e1.year, e1.month, e1.day, tzinfo=tz))


def window_counts(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, *, categories=None,
                  channels=None, area=None) -> dict:
    """The window's cases under the one definition: ``received`` (all, as the KPI 受理量 and the
    charts count them), ``located`` (in a cell: what the map shows), ``unlocated`` (no cell), and
    ``merged`` (duplicates merged into another case, not counted)."""
    check_window(start, end)
    f, p = filter_sql(categories, channels, area)
    row = conn.execute(text(f"""
        SELECT COALESCE(sum(n), 0), COALESCE(sum(n) FILTER (WHERE cell_id <> 0), 0) FROM case_rollup
        WHERE city_id = :c AND day BETWEEN :a AND :b {f}"""), {"c": city.id, "a": start, "b": end, **p}).one()
    t0, t1 = local_bounds(conn, city, start, end)
    f2, p2 = filter_sql(categories, channels, area, "f.")
    merged = conn.execute(text(f"""
        SELECT count(*) FROM case_file f WHERE f.city_id = :c AND f.received_at >= :t0 AND f.received_at < :t1
        AND f.merged_into IS NOT NULL {f2}"""), {"c": city.id, "t0": t0, "t1": t1, **p2}).scalar_one()
    return {"received": int(row[0]), "located": int(row[1]), "unlocated": int(row[0]) - int(row[1]),
            "merged": int(merged)}


def cell_counts(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, *, categories=None,
                channels=None, area=None) -> tuple[np.ndarray, np.ndarray]:
    """(cell ids, counts) of cases received on days start..end (inclusive), cells with ≥ 1 case."""
    check_window(start, end)
    f, p = filter_sql(categories, channels, area)
    rows = conn.execute(text(f"""
        SELECT cell_id, sum(n) FROM case_rollup
        WHERE city_id = :c AND day BETWEEN :a AND :b AND cell_id <> 0 {f}
        GROUP BY cell_id"""), {"c": city.id, "a": start, "b": end, **p}).all()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    n = np.array([r[1] for r in rows], dtype=np.float64)
    return ids, n


def cell_day_counts(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, *, categories=None,
                    channels=None, area=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell ids, day index from ``start``, counts): sparse cell × day triples."""
    check_window(start, end)
    f, p = filter_sql(categories, channels, area)
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


def totals(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, by: str, *, categories=None,
           channels=None, area=None) -> list[dict]:
    """Counts grouped by 'day', 'category' or 'channel' over the window (cases with or without a
    cell), under the supervisors' filters."""
    check_window(start, end)
    col = {"day": "day", "category": "category_code", "channel": "channel"}.get(by)
    if col is None:
        raise InputError("by must be one of day, category, channel")
    f, p = filter_sql(categories, channels, area)
    rows = conn.execute(text(f"""
        SELECT {col}, sum(n) FROM case_rollup WHERE city_id = :c AND day BETWEEN :a AND :b {f}
        GROUP BY 1 ORDER BY {'1' if by == 'day' else '2 DESC, 1'}"""),
        {"c": city.id, "a": start, "b": end, **p}).all()
    return [{"key": str(k), "n": int(n)} for k, n in rows]
