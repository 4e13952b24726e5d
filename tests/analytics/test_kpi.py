"""KPIs read from case_event equal a hand-computed month; the assessment follows the config file."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from layers.analytics import assessment as lassess
from layers.analytics import kpi as lkpi
from tests.analytics.helpers import at, cell_xy, insert


def _month(conn, city):
    d1, d2 = [conn.execute(text("""INSERT INTO department (city_id, code, name) VALUES (:c, :code, :name)
                                    RETURNING id"""), {"c": city.id, "code": f"KPI-{k}", "name": f"测试部门{k}"}).scalar_one()
              for k in (1, 2)]
    D = dt.timedelta
    T = lambda day, h=10: at(2026, 10, day, h)  # noqa: E731
    iso = lambda t: t.isoformat()  # noqa: E731
    cases = {}  # name -> list of (at, kind, dep, data)
    cases["A"] = [(T(3), "received", None, {"close_deadline": iso(T(8))}), (T(3, 11), "accepted", None, {}),
                  (T(3, 12), "dispatched", d1, {}), (T(3, 13), "started", d1, {}),
                  (T(4), "feedback", d1, {"met": True}), (T(4, 12), "verify_ok", None, {}),
                  (T(4, 13), "closed", None, {"close_met": True}), (T(5), "rated", None, {"rating": "satisfied"})]
    cases["B"] = [(T(5), "received", None, {}), (T(5, 11), "accepted", None, {}), (T(5, 12), "dispatched", d1, {}),
                  (T(5, 15), "returned", d1, {}), (T(6), "dispatched", d2, {}), (T(9), "feedback", d2, {"met": False}),
                  (T(9, 12), "verify_fail", None, {}), (T(10), "feedback", d2, {"met": True}),
                  (T(10, 12), "verify_ok", None, {}), (T(10, 13), "closed", None, {"close_met": False}),
                  (T(11), "rated", None, {"rating": "unsatisfied"})]
    cases["C"] = [(T(6), "received", None, {}), (T(6, 11), "rejected", None, {})]
    cases["D"] = [(T(7), "received", None, {}), (T(7, 11), "accepted", None, {}), (T(7, 12), "dispatched", d2, {}),
                  (T(8), "deferred", d2, {})]
    cases["E"] = [(T(8), "received", None, {}), (T(8, 11), "accepted", None, {}), (T(8, 12), "dispatched", d2, {}),
                  (T(9), "extended", d2, {}), (T(10), "feedback", d2, {"deadline": iso(T(11))}),
                  (T(12), "closed", None, {"close_deadline": iso(T(11))}),
                  (T(13), "rated", None, {"rating": "basic"})]
    cases["F"] = [(T(12), "received", None, {"close_deadline": iso(T(20))}), (T(12, 11), "accepted", None, {}),
                  (T(12, 12), "dispatched", d1, {})]
    cases["G"] = [(at(2026, 9, 30, 10), "received", None, {}), (T(1), "accepted", None, {}),
                  (T(1, 12), "closed", None, {"close_met": True})]
    cases["H"] = [(T(31, 23), "received", None, {"close_deadline": iso(T(31, 23) + D(days=5))}),
                  (T(31, 23) + D(minutes=10), "accepted", None, {}),
                  (T(31, 23) + D(minutes=30), "dispatched", d1, {}),
                  (at(2026, 11, 1, 10), "feedback", d1, {"met": True}),
                  (at(2026, 11, 2, 10), "closed", None, {"close_met": True})]
    cases["I"] = [(T(14), "received", None, {}), (T(14, 11), "accepted", None, {}), (T(14, 12), "dispatched", d1, {}),
                  (T(15), "feedback", d1, {"met": True})]
    for k in range(3):
        cases["I"] += [(T(16 + k), "verify_fail", None, {}), (T(16 + k, 15), "feedback", d1, {})]
    cases["I"] += [(T(20), "verify_ok", None, {}), (T(20, 12), "closed", None, {"close_met": True})]
    names = list(cases)
    x, y, _ = cell_xy(conn, city, [3] * len(names), list(range(len(names))))
    events = [(i, t, kind, None, None, dep, data) for i, n in enumerate(names) for (t, kind, dep, data) in cases[n]]
    insert(conn, city, x, y, [cases[n][0][0] for n in names], ["K1"] * 5 + ["K2"] * 4, events=events, prefix="KPI")
    return d1, d2


def test_kpis_equal_a_hand_computed_month(conn, acity):
    d1, d2 = _month(conn, acity)
    start, end = lkpi.month_bounds("2026-10")
    f = lkpi.facts(conn, acity, start, end)["all"]
    expect = dict(received=8, accepted=7, rejected=1, dispatched=7, dispatch_ok=6, returned=1, handled=4,
                  handled_on_time=3, closed=4, closed_on_time=2, reworked=2, rework_times=4, extended=1,
                  deferred=1, visited=3, satisfied=2, unsatisfied=1, overdue=3)
    assert {k: f[k] for k in expect} == expect
    k = lkpi.kpis(conn, acity, start, end)["all"]
    want = {"受理量": 8, "立案率": 7 / 8, "派遣准确率": 6 / 7, "按期处置率": 3 / 6, "结案率": 4 / 6, "按期结案率": 2 / 6,
            "返工率": 2 / 4, "延期率": 1 / 7, "回访率": 3 / 4, "满意率": 2 / 3}
    for name, v in want.items():
        assert k[name]["value"] == pytest.approx(v, abs=1e-12), name
    # by department (of the last dispatch) and by class
    dep = lkpi.kpis(conn, acity, start, end, by="department")
    assert dep[str(d1)]["受理量"]["value"] == 4 and dep[str(d1)]["结案率"]["num"] == 2  # A and I closed, H not yet, F open
    assert dep[str(d2)]["结案率"]["num"] == 2 and dep[str(d2)]["结案率"]["den"] == 2  # B, E; D deferred
    cat = lkpi.kpis(conn, acity, start, end, by="category")
    assert cat["K1"]["受理量"]["value"] == 5 and cat["K2"]["受理量"]["value"] == 3  # G is September's
    # a later as_of sees H closed
    late = lkpi.facts(conn, acity, start, end, as_of=at(2026, 11, 30))["all"]
    assert late["closed"] == 5 and late["handled"] == 5


def test_assessment_scores_deductions_grades(conn, acity):
    _month(conn, acity)
    start, end = lkpi.month_bounds("2026-10")
    rows = lassess.assess(conn, acity, start, end, by="street")
    row = next(r for r in rows if r["unit"] == "320699001")
    # 按期结案率 1/3: 50 − (70 − 33.33) = 13.333; 按期处置率 0.5 × 20 = 10; 满意率 2/3 × 30 = 20
    assert row["points"] == pytest.approx(50 - (70 - 100 / 3) + 10 + 20, abs=1e-3)
    # overdue 3 × 0.2 + rework (B once: 0.2; I three times: 3 × 0.5) + unsatisfied 1 × 0.1 = 2.4
    assert row["deduction"] == pytest.approx(2.4, abs=1e-9)
    assert row["score"] == pytest.approx(43.3333 - 2.4, abs=1e-2) and row["grade"] == "D" and row["rank"] == 1
    ranked = lassess.rank({"a": {"score": 80}, "b": {"score": 90}, "c": {"score": 80}, "d": {"score": 10}})
    assert [(r["unit"], r["rank"]) for r in ranked] == [("b", 1), ("a", 2), ("c", 2), ("d", 4)]


def test_bad_periods(conn, acity):
    from layers.core.errors import InputError

    for bad in ("2026-13", "26-10", "{month}", "2026"):
        with pytest.raises(InputError):
            lkpi.month_bounds(bad)
    with pytest.raises(InputError):
        lkpi.facts(conn, acity, dt.date(2026, 2, 1), dt.date(2026, 1, 1))
    with pytest.raises(InputError):
        lkpi.facts(conn, acity, dt.date(2026, 1, 1), dt.date(2026, 2, 1), by="nope")
