"""Bursts over the DB: the daily scan finds an injected cluster, stays at its stated rate on shuffled
data; the surge rule; petition risks without personal data;
the alert feed."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
from sqlalchemy import text

from layers.analytics import alerts as lalerts
from tests.analytics.helpers import at, cell_xy, insert

STUDY = 28


def _background(rng, n):
    return rng.uniform(620_000, 623_000, n), rng.uniform(3_530_000, 3_532_000, n), rng.integers(0, STUDY, n)


def _put(conn, city, day0, xs, ys, days, cat="S1"):
    times = [at(day0.year, day0.month, day0.day, 9) + dt.timedelta(days=int(d), hours=float(h))
             for d, h in zip(days, np.linspace(0, 10, len(days)), strict=False)]
    insert(conn, city, xs, ys, times, [cat] * len(xs), prefix="B")


def test_scan_finds_injected_cluster_and_stores_alert(conn, acity):
    rng = np.random.default_rng(7)
    day0 = dt.date(2021, 3, 1)
    last = day0 + dt.timedelta(days=STUDY - 1)
    xs, ys, ds = _background(rng, 600)
    cx, cy, cid = cell_xy(conn, acity, [20, 21, 20], [12, 12, 13])
    k = np.arange(18) % 3
    xs = np.concatenate([xs, cx[k]])
    ys = np.concatenate([ys, cy[k]])
    ds = np.concatenate([ds, np.full(18, STUDY - 1 - (np.arange(18) % 2))])  # the last two days
    _put(conn, acity, day0, xs, ys, ds)
    # the default threshold (one false alert a year: recurrence >= 365 days) needs n_sim >= 364
    import pytest

    from layers.core.errors import InputError
    with pytest.raises(InputError, match="n_sim must be at least 364"):
        lalerts.scan_day(conn, acity, last, n_sim=199)
    # a fast configuration: 199 replicates, alerts recurring by chance at most once in 100 days
    alerts = lalerts.scan_day(conn, acity, last, n_sim=199, min_recurrence_days=100)
    assert alerts, "the injected cluster is found"
    top = alerts[0]
    assert set(cid.tolist()) <= set(top["cell_ids"]) and len(top["cell_ids"]) <= 9
    assert top["p_value"] <= 0.01 and top["observed"] >= 18 and top["expected"] < 5
    assert top["window_end"] == last and top["window_start"] >= last - dt.timedelta(days=2)
    assert top["recurrence_days"] == 1 / top["p_value"] >= 100
    assert top["details"]["threshold"] == {"min_recurrence_days": 100}
    assert all(a["recurrence_days"] >= 100 for a in alerts)
    n = f"{top['recurrence_days']:,.0f}"
    assert top["details"]["recurrence_text"].startswith("在没有聚集的城市里，这样强的聚集")
    assert f"{n} 天" in top["details"]["recurrence_text"] and f"once in {n} days" in top["details"]["recurrence_text"]
    feed = lalerts.alert_feed(conn, acity, kind="scan")
    assert feed[0]["id"] == top["id"] and feed[0]["cells"] == len(top["cell_ids"])
    assert feed[0]["recurrence_text"] == top["details"]["recurrence_text"]
    # rerunning the same day updates the same alert instead of duplicating it
    lalerts.scan_day(conn, acity, last, n_sim=199, min_recurrence_days=100)
    assert conn.execute(text("SELECT count(*) FROM analytics_alert WHERE city_id = :c AND kind = 'scan' "
                             "AND detected_on = :d"), {"c": acity.id, "d": last}).scalar() == len(alerts)
    # the next day the cluster is still in the 7-day window: the same alert, seen again, not a new one
    nxt = last + dt.timedelta(days=1)
    again = lalerts.scan_day(conn, acity, nxt, n_sim=199, min_recurrence_days=100)
    assert any(a.get("continued") and a["id"] == top["id"] for a in again), (top, again)
    details = conn.execute(text("SELECT details FROM analytics_alert WHERE id = :i"), {"i": top["id"]}).scalar()
    assert details["last_seen"] == str(nxt)
    assert conn.execute(text("SELECT count(*) FROM analytics_alert WHERE city_id = :c AND kind = 'scan' "
                             "AND detected_on = :d"), {"c": acity.id, "d": nxt}).scalar() == 0


def test_scan_on_shuffled_data_stays_at_its_rate(conn, acity):
    """No space-time interaction (days shuffled independently of places): alerts at p ≤ 0.05 in at most
    the stated share of daily analyses (20 independent days
    5 or more would have probability < 0.3 %)."""
    rng = np.random.default_rng(11)
    runs, alarms = 20, 0
    for r in range(runs):
        day0 = dt.date(2021, 6, 1) + dt.timedelta(days=40 * r)
        xs, ys, _ = _background(rng, 300)
        # a fixed spatial pattern (a hot area) and a fixed daily pattern, combined without interaction
        hot = rng.random(300) < 0.4
        xs[hot] = rng.uniform(620_000, 620_500, hot.sum())
        ds = rng.permutation(np.repeat(np.arange(STUDY), 300 // STUDY + 1)[:300])
        _put(conn, acity, day0, xs, ys, ds, cat=f"N{r}")
        alerts = lalerts.scan_day(conn, acity, day0 + dt.timedelta(days=STUDY - 1), category=f"N{r}", n_sim=99,
                             alpha=0.05, store=False)
        alarms += bool(alerts)
    assert alarms <= 4, alarms


def test_surge_rule_per_class(conn, acity):
    rng = np.random.default_rng(5)
    day = dt.date(2021, 12, 20)  # a Monday; 8 previous Mondays as the baseline
    xs, ys, times, cats = [], [], [], []
    for w in range(1, 9):
        d = day - dt.timedelta(days=7 * w)
        for cat, n in (("U1", 4 + w % 2), ("U2", 10)):
            xs += list(rng.uniform(620_000, 623_000, n))
            ys += list(rng.uniform(3_530_000, 3_532_000, n))
            times += [at(d.year, d.month, d.day, 10)] * n
            cats += [cat] * n
    for cat, n in (("U1", 20), ("U2", 11)):
        xs += list(rng.uniform(620_000, 623_000, n))
        ys += list(rng.uniform(3_530_000, 3_532_000, n))
        times += [at(day.year, day.month, day.day, 10)] * n
        cats += [cat] * n
    insert(conn, acity, xs, ys, times, cats, prefix="SU")
    alerts = lalerts.surge_day(conn, acity, day)
    assert [a["category_code"] for a in alerts] == ["U1"]
    assert alerts[0]["observed"] == 20 and alerts[0]["expected"] == 4.5
    assert lalerts.alert_feed(conn, acity, kind="surge")[0]["category_code"] == "U1"


def test_petition_risk_without_personal_data(conn, acity):
    day = dt.date(2022, 3, 10)
    x, y, _ = cell_xy(conn, acity, [5, 25, 7, 9], [5, 15, 2, 3])
    # the same caller, three times, at different places and classes
    insert(conn, acity, x[:3], y[:3], [at(2022, 3, d) for d in (2, 5, 9)], ["P1", "P2", "P3"],
           phones=["13900001111"] * 3, prefix="PC")
    # the same place and class, four times, different callers
    insert(conn, acity, [x[3]] * 4, [y[3]] * 4, [at(2022, 3, d) for d in (1, 3, 6, 8)], ["P9"] * 4,
           phones=[f"1380000{k:04d}" for k in range(4)], prefix="PP")
    alerts = lalerts.petition_risks(conn, acity, day)
    kinds = sorted(a["details"]["reason"][:4] for a in alerts)
    assert kinds == ["同一地点", "同一来电"]
    caller = next(a for a in alerts if a["details"]["reason"].startswith("同一来电"))
    assert caller["observed"] == 3 and sorted(caller["details"]["categories"]) == ["P1", "P2", "P3"]
    place = next(a for a in alerts if a["details"]["reason"].startswith("同一地点"))
    assert place["observed"] == 4 and place["category_code"] == "P9"
    # the next day the same groups are the same alerts, updated
    nxt = lalerts.petition_risks(conn, acity, day + dt.timedelta(days=1))
    assert len(nxt) == 2 and all(a.get("continued") for a in nxt)
    assert len(lalerts.alert_feed(conn, acity, kind="petition")) == 2
    stored = json.dumps(lalerts.alert_feed(conn, acity, kind="petition"), default=str, ensure_ascii=False)
    assert "1390000" not in stored and "1380000" not in stored
