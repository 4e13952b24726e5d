"""考核办法: scores, deductions, grades and rankings from the KPIs, per the configuration file
``data/assessment.json`` (weights, deductions, grade bands).

Component rules:

* ``linear``: points × rate (a rate of None — nothing to judge — gives full points);
* ``threshold``: full points at rate ≥ ``full_at``, minus ``per_point_below`` per percentage point
  below it, never below 0.

Deductions: ``per_case`` × the fact's count; for ``rework_times`` a case reworked fewer than
``heavy_from`` times costs ``per_case`` once, from ``heavy_from`` times on ``heavy_per_case`` for each
time (one city's rule: −0.2 per case sent back, ≥ 3 times −0.5 each). The total deduction is capped at
``max_deduction``. Score = points − deductions, floored at 0; grade = first band whose minimum the
score reaches; rank 1 = best (ties share a rank).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection

from layers.analytics import kpi as lkpi
from layers.core.city import CityInfo


def score_unit(f: dict, cfg: dict) -> dict:
    a = cfg["assessment"]
    k = lkpi.kpis_from_facts(f, cfg)
    comps = []
    points = 0.0
    for c in a["components"]:
        rate = k[c["kpi"]]["value"]
        if rate is None:
            got = float(c["points"])
        elif c["rule"] == "linear":
            got = c["points"] * rate
        elif c["rule"] == "threshold":
            below = max(0.0, (c["full_at"] - rate) * 100)
            got = max(0.0, c["points"] - c["per_point_below"] * below)
        else:
            raise ValueError(f"unknown rule {c['rule']}")
        points += got
        comps.append({"kpi": c["kpi"], "rate": rate, "points": round(got, 4), "max": c["points"]})
    deds = []
    total_d = 0.0
    for d in a["deductions"]:
        if d["fact"] == "rework_times":
            amount = f["rework_deduction"]
            n = f["reworked"]
        else:
            n = f[d["fact"]]
            amount = d["per_case"] * n
        total_d += amount
        deds.append({"fact": d["fact"], "label": d["label"], "cases": n, "points": round(amount, 4)})
    capped = min(total_d, float(a["max_deduction"]))
    score = max(0.0, points - capped)
    grade = next(g for g, lo in a["grades"] if score >= lo - 1e-9)
    return {"points": round(points, 4), "deductions": deds, "deduction": round(capped, 4),
            "score": round(score, 2), "grade": grade, "kpis": k}


def rank(units: dict[str, dict]) -> list[dict]:
    """Units sorted by score (best first) with competition ranks (1, 2, 2, 4 …)."""
    rows = sorted(({"unit": u, **s} for u, s in units.items()), key=lambda r: (-r["score"], r["unit"]))
    prev, r = None, 0
    for i, row in enumerate(rows, 1):
        if row["score"] != prev:
            r, prev = i, row["score"]
        row["rank"] = r
    return rows


def assess(conn: Connection, city: CityInfo, start: dt.date, end: dt.date, by: str = "street",
           as_of: dt.datetime | None = None) -> list[dict]:
    """The ranking of the units (streets, districts, departments …) for the period."""
    cfg = lkpi.config()
    names = lkpi.group_names(conn, city, by)
    # cases without a unit (no area code / never dispatched) are reported in the KPIs, not ranked
    units = {u: score_unit(f, cfg) for u, f in lkpi.facts(conn, city, start, end, by, as_of, cfg).items()
             if u != "(none)"}
    out = rank(units)
    for row in out:
        row["name"] = names.get(row["unit"], row["unit"])
    return out
