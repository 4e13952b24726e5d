"""Patrol tracks of inspectors, key-zone coverage per period, missed zones, per-inspector statistics
and the inspector's worklist.

Coverage rule (see gis.patrol.zone_coverage): for each zone and period (local calendar days,
Asia/Shanghai, inclusive), the tracks that started in the period are buffered by the coverage buffer
(default 30 m); a polygon zone's share is the part of its area inside that swath, a line zone's (a
road: its centreline) the part of its length, a point zone's the part of its points. A visit is a
pass within the buffer; passes less than 10 minutes apart are one visit. The frequency is met when
every day (or ISO week, for weekly rules) of the period had the required number of visits.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import shapely
from sqlalchemy import Connection, text

from gis import crs as gcrs
from gis import patrol as gpatrol
from layers.cases.vocab import STATES
from layers.core import publication
from layers.core.city import CityInfo
from layers.core.errors import InputError
from layers.field import zones as lzones
from layers.field.reports import config

TZ = gpatrol.CHINA_TZ


# -- tracks ---------------------------------------------------------------------------------------

def parse_tracks(data: bytes, fmt: str | None = None) -> tuple[list[gpatrol.Track], str]:
    """Tracks of a GPX or GeoJSON upload (format sniffed when not given)."""
    head = data.lstrip()[:200]
    if fmt is None or fmt == "auto":
        fmt = "gpx" if head.startswith(b"<") else "geojson" if head.startswith(b"{") else None
    if fmt not in ("gpx", "geojson"):
        raise InputError("the track must be GPX 1.1 (XML) or GeoJSON (a LineString with times)")
    try:
        tracks = gpatrol.parse_gpx(data) if fmt == "gpx" else gpatrol.parse_geojson_track(data)
    except ValueError as e:
        raise InputError(f"{fmt}: {e}") from None
    except RecursionError:
        raise InputError(f"{fmt}: nested too deeply") from None
    if not tracks:
        raise InputError(f"the {fmt} file holds no track points")
    return tracks, fmt


def upload_tracks(conn: Connection, city: CityInfo, user, data: bytes, *, crs: str = "EPSG:4326",
                  fmt: str | None = None, max_accuracy: float | None = None) -> dict:
    """Store an inspector's tracks: projected to the working CRS, impossible fixes dropped and counted
    (faster than ``max_speed_mps`` from the last kept fix, less accurate than the gate, invalid or
    out-of-order times). Segments with fewer than 2 kept fixes are not stored (counted)."""
    cfg = config()
    if len(data) > cfg["max_track_bytes"]:
        raise InputError(f"the track file is {len(data):,} bytes; at most {cfg['max_track_bytes']:,}")
    src = gcrs.parse_crs(crs)
    if not (gcrs.is_geographic(src) or src in (gcrs.GCJ02, gcrs.BD09)):
        raise InputError(f"crs {src}: tracks are lon/lat in WGS-84, CGCS2000, GCJ-02 or BD-09")
    tracks, fmt = parse_tracks(data, fmt)
    total = sum(len(t) for t in tracks)
    if total > cfg["max_track_fixes"]:
        raise InputError(f"{total:,} fixes; at most {cfg['max_track_fixes']:,} per upload")
    gate = float(max_accuracy if max_accuracy is not None else cfg["track_accuracy_gate_m"])
    out, dropped_total = [], {"invalid": 0, "accuracy": 0, "time": 0, "speed": 0}
    pending = []
    for k, t in enumerate(tracks):
        x, y = gcrs.transform_xy(t.lon, t.lat, src, city.working_crs)
        mask, counts = gpatrol.clean_track(x, y, t.time, t.accuracy, max_speed=float(cfg["max_speed_mps"]),
                                           max_accuracy=gate)
        for r in dropped_total:
            dropped_total[r] += counts[r]
        entry = {"segment": k, "name": t.name, "fixes": len(t), "kept": counts["kept"],
                 "dropped": {r: counts[r] for r in dropped_total}, "stored": False}
        if counts["kept"] >= 2:
            xs, ys, ts = x[mask], y[mask], t.time[mask]
            line = shapely.LineString(np.column_stack([xs, ys]))
            pending.append((entry, line, ts))
        out.append(entry)
    if not pending:
        raise InputError(f"no segment kept 2 plausible fixes (dropped: {dropped_total}): nothing to store")
    for entry, line, ts in pending:
        tid = conn.execute(text("""
            INSERT INTO patrol_track (city_id, user_id, started_at, ended_at, geom, times, fixes, kept, dropped,
                                      length_m, source_format, source_crs, name)
            VALUES (:c, :u, :s, :e, ST_SetSRID(ST_GeomFromWKB(decode(:w, 'hex')), :srid), :t, :n, :k,
                    CAST(:d AS jsonb), :len, :fmt, :crs, :name) RETURNING id"""),
            dict(c=city.id, u=user.id, s=dt.datetime.fromtimestamp(ts[0], dt.UTC),
                 e=dt.datetime.fromtimestamp(ts[-1], dt.UTC), w=shapely.to_wkb(line, hex=True), srid=city.srid,
                 t=[float(v) for v in ts], n=entry["fixes"], k=entry["kept"],
                 d=json.dumps(entry["dropped"]), len=line.length, fmt=fmt, crs=src,
                 name=(entry["name"] or None) and str(entry["name"])[:200])).scalar_one()
        entry.update(stored=True, id=tid, length_m=round(line.length, 1),
                     started_at=dt.datetime.fromtimestamp(ts[0], dt.UTC).isoformat(),
                     ended_at=dt.datetime.fromtimestamp(ts[-1], dt.UTC).isoformat())
    return {"format": fmt, "crs": src, "fixes": total, "kept": sum(e["kept"] for e in out),
            "dropped": dropped_total, "segments": out, "accuracy_gate_m": gate,
            "max_speed_mps": float(cfg["max_speed_mps"])}


# -- coverage -------------------------------------------------------------------------------------

def _period(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime, list[dt.date]]:
    if end < start:
        raise InputError("the period ends before it starts")
    if (end - start).days > 92:
        raise InputError("a coverage period is at most 93 days")
    t0 = dt.datetime.combine(start, dt.time(), TZ)
    t1 = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), TZ)
    return t0, t1, [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def coverage(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, *, buffer_m: float | None = None,
             area_code: str | None = None, user_id: int | None = None) -> list[dict]:
    """Per zone: share covered, visits, visits per day, and whether the frequency was met."""
    cfg = config()
    buffer_m = float(cfg["coverage_buffer_m"] if buffer_m is None else buffer_m)
    if not (0 < buffer_m <= 500):
        raise InputError("buffer_m must be between 0 and 500 m")
    t0, t1, days = _period(start, end)
    zones = lzones.zone_rows(conn, city, area_code=area_code)
    out = []
    for z in zones:
        rows = conn.execute(text("""
            SELECT ST_AsBinary(t.geom), t.times FROM patrol_track t
            WHERE t.city_id = :c AND t.started_at >= :t0 AND t.started_at < :t1
              AND (CAST(:u AS int) IS NULL OR t.user_id = :u)
              AND ST_DWithin(t.geom, ST_SetSRID(ST_GeomFromWKB(decode(:zw, 'hex')), :s), :b)
            ORDER BY t.started_at, t.id"""),
            {"c": city.id, "t0": t0, "t1": t1, "u": user_id, "zw": shapely.to_wkb(z["geom"], hex=True),
             "s": city.srid, "b": buffer_m}).all()
        lines = [shapely.from_wkb(bytes(r[0])) for r in rows]
        res = gpatrol.zone_coverage(z["geom"], lines, buffer_m, times=[np.asarray(r[1]) for r in rows],
                                    visit_gap_s=float(cfg["visit_gap_s"]))
        per_day = {d: 0 for d in days}
        for d, n in gpatrol.visits_per_day(res["visit_times"], TZ).items():
            if d in per_day:
                per_day[d] += n
        check = gpatrol.frequency_met(per_day, z["frequency"])
        out.append({**{k: v for k, v in z.items() if k != "geom"}, "geom": z["geom"],
                    "share": round(res["share"], 4), "covered": round(res["covered"], 2),
                    "total": round(res["total"], 2), "kind": res["kind"], "visits": res["visits"] or 0,
                    "tracks": len(lines), "visits_per_day": {d.isoformat(): n for d, n in per_day.items()},
                    "required": check.required, "per": check.period, "frequency_met": check.met,
                    "shortfalls": {d.isoformat(): n for d, n in check.shortfalls.items()}})
    return out


def coverage_geojson(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, *, dst: str = "EPSG:4326",
                     buffer_m: float | None = None, area_code: str | None = None, missed_only: bool = False) -> dict:
    """Coverage as a layer (GeoJSON FeatureCollection), for the map and the layer catalog."""
    dst = gcrs.parse_crs(dst)
    rows = coverage(conn, city, start, end, buffer_m=buffer_m, area_code=area_code)
    if missed_only:
        rows = [r for r in rows if not r["frequency_met"]]
        rows.sort(key=lambda r: (r["share"], r["code"]))
    feats = [lzones.feature(r, city, dst) for r in rows]
    return {"type": "FeatureCollection", "crs": dst, "period": {"start": start.isoformat(), "end": end.isoformat()},
            "buffer_m": float(config()["coverage_buffer_m"] if buffer_m is None else buffer_m),
            "numberReturned": len(feats), "features": feats}


def inspector_stats(conn: Connection, city: CityInfo, start: dt.date, end: dt.date) -> list[dict]:
    """Per inspector: tracks, kilometres, hours on patrol, fixes kept/dropped, reports filed."""
    t0, t1, _ = _period(start, end)
    rows = conn.execute(text("""
        WITH t AS (
            SELECT user_id, count(*) AS tracks, sum(length_m) AS length_m,
                   sum(extract(epoch FROM ended_at - started_at)) AS seconds, sum(fixes) AS fixes, sum(kept) AS kept,
                   sum((dropped->>'speed')::int) AS d_speed, sum((dropped->>'accuracy')::int) AS d_acc,
                   sum((dropped->>'time')::int + (dropped->>'invalid')::int) AS d_other
            FROM patrol_track WHERE city_id = :c AND started_at >= :t0 AND started_at < :t1 GROUP BY user_id),
        r AS (
            SELECT user_id, count(*) AS reports, count(*) FILTER (WHERE 'accuracy_over_gate' = ANY(flags)) AS over_gate
            FROM field_report WHERE city_id = :c AND received_at >= :t0 AND received_at < :t1 GROUP BY user_id)
        SELECT u.id, u.name, u.area_code, coalesce(t.tracks, 0), coalesce(t.length_m, 0), coalesce(t.seconds, 0),
               coalesce(t.fixes, 0), coalesce(t.kept, 0), coalesce(t.d_speed, 0), coalesce(t.d_acc, 0),
               coalesce(t.d_other, 0), coalesce(r.reports, 0), coalesce(r.over_gate, 0)
        FROM app_user u LEFT JOIN t ON t.user_id = u.id LEFT JOIN r ON r.user_id = u.id
        WHERE t.user_id IS NOT NULL OR r.user_id IS NOT NULL ORDER BY u.name"""),
        {"c": city.id, "t0": t0, "t1": t1}).all()
    return [{"user_id": r[0], "name": r[1], "area_code": r[2], "tracks": r[3], "km": round(r[4] / 1000, 3),
             "hours": round(float(r[5]) / 3600, 2), "fixes": r[6], "kept": r[7],
             "dropped": {"speed": r[8], "accuracy": r[9], "other": r[10]}, "reports": r[11],
             "reports_over_accuracy_gate": r[12]} for r in rows]


# -- coverage as a catalog layer ------------------------------------------------------------------
# The catalog's layers are SQL selects; the coverage arithmetic is the Python above. The layer
# ``zone_coverage`` (layers/publish/field_layers.py) reads the table ``zone_coverage`` (migration 0014), which
# this refresh fills with :func:`coverage` for the current period. The catalog calls the refresh before
# every read of the layer (export, export job, OGC API, tiles); it recomputes only when the period, the
# buffer, the zones or the period's tracks changed (a stamp of them is kept in zone_coverage_state).

COVERAGE_LOCK = 0x43_47_5A_43  # advisory lock class of the coverage refresh ('CGZC')


def coverage_layer_period(today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The layer's current period: this ISO week so far (Monday … today, Asia/Shanghai), the period
    the worklist counts weekly rules in; daily rules are checked on every day of it."""
    if today is None:
        from layers.cases import calendar as lcal

        today = lcal.now().astimezone(TZ).date()  # the workflow's clock, as the worklist's today
    return today - dt.timedelta(days=today.weekday()), today


def _coverage_stamp(conn: Connection, city: CityInfo, start: dt.date, end: dt.date,
                    buffer_m: float) -> tuple[str, str | None]:
    """(stamp now, stamp the table was computed from — None before the first computation). The stamp
    says what the coverage of the period is computed from: the period, the settings, every key zone of
    the city (id and row version) and every track started in the period."""
    t0, t1, _ = _period(start, end)
    return tuple(conn.execute(text("""
        SELECT md5(concat_ws('|', CAST(:s AS text), CAST(:e AS text), CAST(:b AS text), CAST(:g AS text),
            (SELECT string_agg(id || ':' || xmin::text, ',' ORDER BY id) FROM key_zone WHERE city_id = :c),
            (SELECT string_agg(id || ':' || xmin::text, ',' ORDER BY id) FROM patrol_track
             WHERE city_id = :c AND started_at >= :t0 AND started_at < :t1))),
            (SELECT stamp FROM zone_coverage_state WHERE city_id = :c)"""),
        {"c": city.id, "s": start.isoformat(), "e": end.isoformat(), "b": repr(buffer_m),
         "g": repr(float(config()["visit_gap_s"])), "t0": t0, "t1": t1}).one())


def refresh_coverage_layer(conn: Connection, city: CityInfo, *, today: dt.date | None = None,
                           force: bool = False) -> bool:
    """Bring the city's ``zone_coverage`` rows up to date for the current period; True when they were
    recomputed. The check runs on ``conn``; a recomputation runs and commits in a transaction of its own
    (under an advisory lock, so concurrent readers compute once), so that readers on other connections
    (export jobs) see it too."""
    start, end = coverage_layer_period(today)
    buffer_m = float(config()["coverage_buffer_m"])
    if not force:
        stamp, known = _coverage_stamp(conn, city, start, end, buffer_m)
        if known == stamp:
            return False
    with conn.engine.begin() as own:
        own.execute(text("SELECT pg_advisory_xact_lock(:k, :c)"), {"k": COVERAGE_LOCK, "c": city.id})
        stamp, known = _coverage_stamp(own, city, start, end, buffer_m)
        if known == stamp and not force:
            return False  # another reader computed it while this one waited
        rows = coverage(own, city, start, end, buffer_m=buffer_m)
        own.execute(text("DELETE FROM zone_coverage WHERE city_id = :c"), {"c": city.id})
        if rows:
            own.execute(text("""
                INSERT INTO zone_coverage (city_id, zone_id, period_start, period_end, buffer_m, kind, share, covered,
                                           total, visits, tracks, required, per, frequency_met, short_periods)
                VALUES (:c, :z, :s, :e, :b, :kind, :share, :covered, :total, :visits, :tracks, :required, :per,
                        :met, :short)"""),
                [{"c": city.id, "z": r["id"], "s": start, "e": end, "b": buffer_m, "kind": r["kind"],
                  "share": r["share"], "covered": r["covered"], "total": r["total"], "visits": r["visits"],
                  "tracks": r["tracks"], "required": r["required"], "per": r["per"], "met": r["frequency_met"],
                  "short": len(r["shortfalls"])} for r in rows])
        own.execute(text("""
            INSERT INTO zone_coverage_state (city_id, period_start, period_end, buffer_m, stamp, zones, computed_at)
            VALUES (:c, :s, :e, :b, :st, :n, now())
            ON CONFLICT (city_id) DO UPDATE SET period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
                buffer_m = EXCLUDED.buffer_m, stamp = EXCLUDED.stamp, zones = EXCLUDED.zones, computed_at = now()"""),
            {"c": city.id, "s": start, "e": end, "b": buffer_m, "st": stamp, "n": len(rows)})
    return True


# -- hot-spot weight of the worklist --------------------------------------------------------------

def worklist_settings():
    from citygrid import settings

    return settings.worklist()


@dataclass
class HotspotWeights:
    """Hot-spot strength (z: normal score of the exact p of the cell's analysis unit, see
    gis.exact_hotspots) and confidence bin of every cell of the active grid over a window of days."""

    key: tuple  # (grid id, grid version, window start, window end)
    fingerprint: tuple  # of the rollup's change log (layers.analytics.cache.DayCache): epoch, count, sum, max
    index_of: dict  # cell id -> position
    cell_ids: np.ndarray  # position -> cell id
    z: np.ndarray
    bins: np.ndarray
    computed_at: dt.datetime
    computed_mono: float
    stale: bool = False
    report: dict | None = None  # the analysis: cases, analysis unit (m), or too few cases

    def of(self, cell_id) -> tuple[float | None, int]:
        pos = self.index_of.get(int(cell_id)) if cell_id is not None else None
        if pos is None:
            return None, 0
        return float(self.z[pos]), int(self.bins[pos])


_hot_cache: dict[int, HotspotWeights] = {}
_hot_locks: dict[int, threading.Lock] = {}
_hot_guard = threading.Lock()
_clock = time.monotonic  # tests move it


def hotspot_weights(conn: Connection, city: CityInfo, today: dt.date) -> HotspotWeights:
    """Hot-spot z and bins of every cell over the ``hotspot_days`` days ending ``today``, computed by the
    supervisors' hot-spot analysis (layers.analytics.hot_spots.hotspots: exact test at the chosen scale, BH-FDR;
    fewer than 30 cases: no hot spots) and
    cached per process per city. Kept while the rollup's change log is unchanged; when new cases move
    it, the cached weights are served (marked stale) until ``hotspot_refresh_minutes`` have passed since
    they were computed. A new window (day), grid or epoch (rollup rebuild) recomputes at once."""
    from layers.analytics import cache as lcache
    from layers.analytics import hot_spots as lhot

    cfg = worklist_settings()
    start = today - dt.timedelta(days=cfg.hotspot_days - 1)
    arr = lcache.grid_arrays(conn, city)
    key = (arr.grid.info.id, arr.grid.info.version, start, today)
    fp = lcache.rollup_fingerprint(conn, city)
    with _hot_guard:
        lock = _hot_locks.setdefault(city.id, threading.Lock())
    with lock:
        hit = _hot_cache.get(city.id)
        if hit is not None and hit.key == key and hit.fingerprint[0] == fp[0]:
            if hit.fingerprint == fp:
                return hit
            if _clock() - hit.computed_mono < cfg.hotspot_refresh_minutes * 60:
                return replace(hit, stale=True)  # the cached object is shared: never marked
        h = lhot.hotspots(conn, city, start, today, unit_m=cfg.hotspot_unit_m)
        w = HotspotWeights(key, fp, arr.index_of, np.asarray(arr.grid.ids, dtype=np.int64), h["z"], h["bins"],
                           dt.datetime.now(dt.UTC), _clock(),
                           report={"cases": h["report"]["cases"], "too_few_cases": h["too_few"],
                                   "unit_m": None if h["too_few"] else h["report"]["unit_m"]})
        # A transaction that has written may see its own uncommitted cases: it must not fill the cache.
        if conn.execute(text("SELECT pg_current_xact_id_if_assigned() IS NULL")).scalar():
            _hot_cache[city.id] = w
        return w


def _weight_doc(z: float | None, b: int) -> dict:
    from layers.analytics.hot_spots import HOT_LABELS

    return {"z": None if z is None else round(z, 3), "bin": b, "label": HOT_LABELS.get(b),
            "weight": round(z, 3) if (z is not None and b > 0) else 0.0}


# -- worklist -------------------------------------------------------------------------------------

def worklist(conn: Connection, city: CityInfo, user, *, today: dt.date | None = None,
             now: dt.datetime | None = None) -> dict:
    """Zones due today in the inspector's area and cases waiting for them on site. Cases: overdue
    first, then by the hot-spot weight of their cell (:func:`hotspot_weights`), then by deadline.
    Zones: most visits to go first, then by the weight of the heaviest hot-spot cell they touch."""
    from layers.cases import calendar as lcal

    now = now or lcal.now()
    today = today or now.astimezone(TZ).date()
    area = getattr(user, "area_code", None)
    # Hot-spot weights of the cells (the z of significant hot spots; other cells weigh 0).
    hot = hotspot_weights(conn, city, today)
    sig = np.flatnonzero(hot.bins > 0)
    cell_ids = hot.cell_ids[sig]
    # Zones: visits today (daily rules) or this ISO week (weekly rules) against the frequency; most
    # visits to go first, then by the heaviest hot-spot cell the zone (with its buffer) touches.
    monday = today - dt.timedelta(days=today.weekday())
    cov = {r["code"]: r for r in coverage(conn, city, monday, today, area_code=area)}
    zones_due = []
    for r in cov.values():
        n, per = r["required"], r["per"]
        done = r["visits_per_day"][today.isoformat()] if per == "day" else sum(r["visits_per_day"].values())
        if done < n:
            zones_due.append({k: v for k, v in r.items() if k not in ("geom", "visits_per_day", "shortfalls")}
                             | {"done": done, "remaining": n - done,
                                "geometry": shapely.geometry.mapping(
                                    gcrs.transform_geometry(r["geom"], city.working_crs, "EPSG:4326"))})
    touched: dict[str, list[int]] = {}
    if zones_due and len(cell_ids):
        for code, cell_id in conn.execute(text("""
                SELECT z.code, gc.id FROM key_zone z
                JOIN grid_cell gc ON gc.id = ANY(CAST(:hid AS bigint[])) AND ST_DWithin(gc.geom, z.geom, z.buffer_m)
                WHERE z.city_id = :c AND z.code = ANY(:codes)"""),
                {"c": city.id, "codes": [z["code"] for z in zones_due], "hid": [int(v) for v in cell_ids]}):
            touched.setdefault(code, []).append(int(cell_id))
    for z in zones_due:
        weights = [hot.of(cid) for cid in touched.get(z["code"], [])]  # (z, bin) of significant cells
        z["hotspot"] = _weight_doc(*max(weights, default=(None, 0))) | {"cells": len(weights)}
    zones_due.sort(key=lambda z: (-z["remaining"], -z["hotspot"]["weight"], z["code"]))
    # Cases: overdue first, then by the hot-spot weight of their cell (cases without a cell weigh 0),
    # then by deadline.
    rows = conn.execute(text("""
        SELECT f.id, f.case_no, f.state, f.category_code, f.category_name, f.description, f.cell_code,
               f.step_deadline_at, f.received_at, ST_X(ST_Transform(f.location, 4326)),
               ST_Y(ST_Transform(f.location, 4326)), f.cell_id
        FROM case_file f
        LEFT JOIN unnest(CAST(:hid AS bigint[]), CAST(:hz AS double precision[])) AS h(cell_id, z)
               ON h.cell_id = f.cell_id
        WHERE f.city_id = :c AND f.state IN ('collected', 'verifying') AND f.merged_into IS NULL
          AND f.location IS NOT NULL
          AND (CAST(:a AS text) IS NULL OR coalesce(f.cell_code, f.area_code, '') LIKE :a || '%')
        ORDER BY coalesce(f.step_deadline_at < :now, false) DESC, coalesce(h.z, 0) DESC,
                 f.step_deadline_at NULLS LAST, f.id
        LIMIT 200"""), {"c": city.id, "a": area, "now": now, "hid": [int(v) for v in cell_ids],
                        "hz": [float(v) for v in hot.z[sig]]}).all()
    cases = [{"id": r[0], "case_no": r[1], "state": r[2], "state_label": STATES.get(r[2], r[2]),
              "task": "核实 verify the report" if r[2] == "collected" else "核查 check the fix",
              "category_code": r[3], "category_name": r[4], "description": r[5], "cell_code": r[6],
              "deadline": r[7].isoformat() if r[7] else None, "overdue": bool(r[7] and r[7] < now),
              "received_at": r[8].isoformat(), "lon": r[9], "lat": r[10], "hotspot": _weight_doc(*hot.of(r[11]))}
             for r in rows]
    cases = publication.staff_cases(conn, cases, getattr(user, "role", None))
    start, end = hot.key[2], hot.key[3]
    return {"date": today.isoformat(), "area_code": area, "zones_due": zones_due, "cases": cases,
            "hotspots": {"start": start.isoformat(), "end": end.isoformat(), "computed_at": hot.computed_at.isoformat(),
                         "stale": hot.stale, "significant_cells": int(sig.size), **(hot.report or {}),
                         "refresh_minutes": worklist_settings().hotspot_refresh_minutes},
            "ordering": "cases: overdue first, then by hot-spot weight (z = normal score of the exact p of the hot "
                        "spot holding the case's cell over the last days of cases, significant hot spots only: "
                        "other cells weigh 0), then by deadline; "
                        "zones: most visits to go first, then by the weight of the heaviest hot-spot cell the zone "
                        "touches"}
