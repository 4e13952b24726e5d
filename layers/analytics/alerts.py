"""Bursts and alerts (舆情专报, 信访苗头): the daily prospective space-time scan (``gis/bursts.py``), surges
per class, petition risks, their storage (table ``alert``) and feed, and the daily command
(``citygrid alerts``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sqlalchemy import Connection, text

from gis import bursts as gbursts
from layers.analytics import rollups
from layers.analytics.cache import grid_arrays
from layers.core.city import CityInfo
from layers.core.errors import InputError

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

# ----------------------------------------------------------------------------------------------
# Bursts and alerts (舆情专报, 信访苗头)
# ----------------------------------------------------------------------------------------------

def _signature(*parts) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:20]


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
