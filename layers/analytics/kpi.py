"""KPIs from the audit log (``case_event`` only) per district, street, department, class and period.

The cohort of a period is the cases *received* in it under the one definition of
``layers.analytics.rollups`` (``received_at`` in [start, end) local days, merged duplicates 并单 not
counted, the same class/channel/area filters as the map and the charts); their facts are read from their events up to ``as_of`` (default: the end of the
period; a bulletin made later may pass a later date). Facts per case:

=================  =====================================================================
received           received in the period (the cohort; its 'received' event has the same time)
accepted/rejected  an 'accepted' / 'rejected' event (立案 / 不予立案)
dispatched         a 'dispatched' event; dispatch_ok = dispatched and never 'returned' (回退)
handled            a 'feedback' event; handled_on_time = the first feedback met its step
                   deadline (``data.met``, else ``at <= data.deadline``)
closed             a 'closed' event; closed_on_time = the first one met the close deadline
                   (``data.close_met``, else ``at <= data.close_deadline``)
reworked           a 'verify_fail' event (返工); rework_times = how many
extended/deferred  an 'extended' (延期) / 'deferred' (缓办) event
visited            a 'rated' event (回访); satisfied = rating satisfied or basic; unsatisfied
overdue            accepted, not deferred, and not closed on time: closed late, or still open
                   at ``as_of`` past its close deadline (the latest one in the events' data)
=================  =====================================================================

Grouping: 'all', 'district' (6 digits of the case's area code), 'street' (9), 'department' (the
department of the case's last 'dispatched' event), 'category'. KPI definitions and denominators
come from ``data/assessment.json`` (configuration, not code).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, text

from layers.analytics import rollups
from layers.cases.classes import catalog
from layers.cases.workflow import RECEIPT_LEAD
from layers.core.city import CityInfo
from layers.core.errors import InputError

CONFIG = Path(__file__).resolve().parent / "data" / "assessment.json"

FACTS = ("received", "accepted", "rejected", "dispatched", "dispatch_ok", "returned", "handled",
         "handled_on_time", "closed", "closed_on_time", "reworked", "rework_times", "extended", "deferred",
         "visited", "satisfied", "unsatisfied", "overdue")
GROUPS = {
    "all": "'all'",
    "district": "substr(f.area_code, 1, 6)",
    "street": "substr(f.area_code, 1, 9)",
    "department": "e.last_dep::text",
    "category": "f.category_code",
}


@lru_cache(maxsize=4)
def _load(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def config(path: Path | None = None) -> dict:
    cfg = _load(str(path or CONFIG))
    for name, k in cfg["kpis"].items():
        used = [k.get("count"), k.get("num"), *k.get("den", {}).get("plus", []), *k.get("den", {}).get("minus", [])]
        bad = [u for u in used if u is not None and u not in FACTS]
        if bad:
            raise InputError(f"KPI {name}: unknown fact(s) {bad}; facts are {', '.join(FACTS)}")
    return cfg


def month_bounds(month: str) -> tuple[dt.date, dt.date]:
    """'2026-10' → (2026-10-01, 2026-11-01). ASCII digits only, four and two of them (a full-width
    '２０２６-１０' or '2026-1' is refused, as the bulletin's file names are)."""
    if not isinstance(month, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}", month):
        raise InputError(f"month must be YYYY-MM, got '{str(month)[:20]}'")
    try:
        y, m = (int(v) for v in month.split("-"))
        start = dt.date(y, m, 1)
    except (ValueError, TypeError):
        raise InputError(f"month must be YYYY-MM, got '{month}'") from None
    if not (2000 <= y <= 2100):
        raise InputError(f"month out of range: '{month}'")
    end = dt.date(y + (m == 12), m % 12 + 1, 1)
    return start, end


def _local_midnight(d: dt.date, tz: str) -> dt.datetime:
    return dt.datetime(d.year, d.month, d.day, tzinfo=ZoneInfo(tz))


FACTS_SQL = """
WITH cohort AS (
    SELECT f.id AS case_id FROM case_file f
    WHERE f.city_id = :city AND f.received_at >= :t0 AND f.received_at < :t1 AND f.merged_into IS NULL {filters}
), ev AS (
    SELECT e.* FROM case_event e JOIN cohort c ON c.case_id = e.case_id WHERE e.at < :asof
        -- No event of a case is older than its receipt less workflow.RECEIPT_LEAD: the bound lets the
        -- monthly partitions of case_event before the window be pruned (each case's look-up probed every
        -- month's index).
        AND e.at >= :t0_events
), per AS (
    SELECT case_id,
        bool_or(kind = 'accepted') AS accepted,
        bool_or(kind = 'rejected') AS rejected,
        bool_or(kind = 'dispatched') AS dispatched,
        bool_or(kind = 'returned') AS returned,
        bool_or(kind = 'feedback') AS handled,
        (array_agg(COALESCE((data->>'met')::boolean, at <= (data->>'deadline')::timestamptz) ORDER BY at, id)
            FILTER (WHERE kind = 'feedback'))[1] AS handled_on_time,
        bool_or(kind = 'closed') AS closed,
        (array_agg(COALESCE((data->>'close_met')::boolean, at <= (data->>'close_deadline')::timestamptz)
            ORDER BY at, id) FILTER (WHERE kind = 'closed'))[1] AS closed_on_time,
        count(*) FILTER (WHERE kind = 'verify_fail') AS rework_times,
        bool_or(kind = 'extended') AS extended,
        bool_or(kind = 'deferred') AS deferred,
        bool_or(kind = 'rated') AS visited,
        bool_or(kind = 'rated' AND data->>'rating' IN ('satisfied', 'basic')) AS satisfied,
        bool_or(kind = 'rated' AND data->>'rating' = 'unsatisfied') AS unsatisfied,
        (array_agg(COALESCE(data->>'new_close_deadline', data->>'close_deadline') ORDER BY at DESC, id DESC)
            FILTER (WHERE COALESCE(data->>'new_close_deadline', data->>'close_deadline') IS NOT NULL))[1]
            ::timestamptz AS close_deadline,
        (array_agg(department_id ORDER BY at DESC, id DESC) FILTER (WHERE kind = 'dispatched'))[1] AS last_dep
    FROM ev GROUP BY case_id
)
SELECT {group} AS grp,
    count(*) AS received,
    count(*) FILTER (WHERE e.accepted) AS accepted,
    count(*) FILTER (WHERE e.rejected) AS rejected,
    count(*) FILTER (WHERE e.dispatched) AS dispatched,
    count(*) FILTER (WHERE e.dispatched AND NOT e.returned) AS dispatch_ok,
    count(*) FILTER (WHERE e.returned) AS returned,
    count(*) FILTER (WHERE e.handled) AS handled,
    count(*) FILTER (WHERE e.handled_on_time) AS handled_on_time,
    count(*) FILTER (WHERE e.closed) AS closed,
    count(*) FILTER (WHERE e.closed_on_time) AS closed_on_time,
    count(*) FILTER (WHERE e.rework_times > 0) AS reworked,
    COALESCE(sum(e.rework_times), 0) AS rework_times,
    count(*) FILTER (WHERE e.extended) AS extended,
    count(*) FILTER (WHERE e.deferred) AS deferred,
    count(*) FILTER (WHERE e.visited) AS visited,
    count(*) FILTER (WHERE e.satisfied) AS satisfied,
    count(*) FILTER (WHERE e.unsatisfied) AS unsatisfied,
    count(*) FILTER (WHERE e.accepted AND NOT e.deferred AND NOT COALESCE(e.closed_on_time, false)
                     AND (e.closed OR e.close_deadline < :asof)) AS overdue,
    -- for the deductions: reworks counted the configured way, per case
    COALESCE(sum(CASE WHEN e.rework_times >= :heavy THEN :heavy_pc * e.rework_times
                      WHEN e.rework_times > 0 THEN :light_pc ELSE 0 END), 0) AS rework_deduction
FROM per e JOIN case_file f ON f.id = e.case_id
GROUP BY 1 ORDER BY 1
"""


def facts(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, by: str = "all",
          as_of: dt.datetime | None = None, cfg: dict | None = None, *, categories=None, channels=None,
          area=None) -> dict[str, dict]:
    """group key → fact counts, for cases received on local days start ≤ day < end (optionally of
    the given classes, channels and area only)."""
    if by not in GROUPS:
        raise InputError(f"by must be one of {', '.join(GROUPS)}")
    if end <= start:
        raise InputError("the period is empty: end must be after start")
    cfg = cfg or config()
    tz = rollups.timezone(conn, city)
    t0, t1 = _local_midnight(start, tz), _local_midnight(end, tz)
    rw = next((d for d in cfg["assessment"]["deductions"] if d["fact"] == "rework_times"), {})
    fsql, fparams = rollups.filter_sql(categories, channels, area, "f.")
    rows = conn.execute(text(FACTS_SQL.format(group=GROUPS[by], filters=fsql)), {
        **fparams, "city": city.id, "t0": t0, "t1": t1, "asof": as_of or t1, "t0_events": t0 - RECEIPT_LEAD,
        "heavy": int(rw.get("heavy_from", 10**6)), "heavy_pc": float(rw.get("heavy_per_case", 0)),
        "light_pc": float(rw.get("per_case", 0))}).mappings().all()
    out = {}
    for r in rows:
        d = dict(r)
        key = d.pop("grp")
        out[str(key) if key is not None else "(none)"] = {k: (float(v) if k == "rework_deduction" else int(v))
                                                        for k, v in d.items()}
    return out


def kpis_from_facts(f: dict, cfg: dict | None = None) -> dict[str, dict]:
    """KPI name → {value (rate 0..1 or count), num, den, en}; value None when the denominator is 0."""
    cfg = cfg or config()
    out = {}
    for name, k in cfg["kpis"].items():
        if "count" in k:
            out[name] = {"value": f[k["count"]], "num": f[k["count"]], "den": None, "en": k["en"], "kind": "count"}
            continue
        num = f[k["num"]]
        den = sum(f[x] for x in k["den"].get("plus", [])) - sum(f[x] for x in k["den"].get("minus", []))
        out[name] = {"value": (num / den) if den > 0 else None, "num": num, "den": den, "en": k["en"],
                     "kind": "rate"}
    return out


def kpis(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, by: str = "all",
         as_of: dt.datetime | None = None, *, categories=None, channels=None, area=None) -> dict[str, dict]:
    """group → KPI name → {value, num, den}."""
    cfg = config()
    return {g: kpis_from_facts(f, cfg) for g, f in facts(conn, city, start, end, by, as_of, cfg, categories=categories,
                                                        channels=channels, area=area).items()}


def group_names(conn: Connection, city: CityInfo, by: str) -> dict[str, str]:
    if by in ("district", "street"):
        rows = conn.execute(text("SELECT code, name FROM admin_area WHERE city_id = :c AND level = :l"),
                            {"c": city.id, "l": by}).all()
    elif by == "department":
        rows = conn.execute(text("SELECT id::text, name FROM department WHERE city_id = :c"), {"c": city.id}).all()
    elif by == "category":
        # The class catalog's names, then any other name a case was filed under (imported classes).
        rows = [(code, c["name"]) for code, c in catalog().items() if c.get("name")]
        rows += conn.execute(text("""SELECT DISTINCT ON (category_code) category_code, category_name FROM case_file
                                     WHERE city_id = :c AND category_name IS NOT NULL"""), {"c": city.id}).all()
    else:
        rows = [("all", "全市 Whole city")]
    return {str(k): v for k, v in rows}
