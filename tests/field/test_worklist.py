"""The inspector's worklist ordered by hot-spot weight: cases injected into one cell of Haimen make it
a significant Gi* hot spot; its verification task comes before an equally-due one elsewhere, overdue
tasks still come first, and new cases make the cached weights recomputed (at once with a refresh
interval of 0, after the interval otherwise)."""

from __future__ import annotations

import datetime as dt

import pytest
import shapely
from sqlalchemy import text

from tests.field.conftest import inspector_context

#: Event and hotline small classes: cycled so that no two injected cases of one class fall within the
#: duplicate rule's window (并单 would merge them out of the rollup).
LEAVES = ["E10101", "E10102", "E10201", "E10301", "E20101", "E20102", "E30101", "E40101", "E40201", "E50101",
          "E50201", "E50301", "E50401", "E50501", "H10101", "H10102", "H10201", "H10202", "H20101", "H20102",
          "H90101"]


def _cells(engine, haimen):
    """A cell well inside a street (the hot one), another 1–2 km away in the same street, a third for the
    overdue case, and a fourth for the hot spot added later; each with its centroid."""
    with engine.connect() as c:
        street = c.execute(text("""
            SELECT left(c.code, 9) FROM grid_cell c JOIN grid g ON g.id = c.grid_id AND g.active AND g.city_id = :city
            GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"""), {"city": haimen.id}).scalar()
        hot = c.execute(text("""
            SELECT c.id, c.code, ST_X(ST_Centroid(c.geom)), ST_Y(ST_Centroid(c.geom)) FROM grid_cell c
            JOIN grid g ON g.id = c.grid_id AND g.active AND g.city_id = :city
            WHERE NOT c.partial AND c.code LIKE :st || '%' ORDER BY c.code OFFSET 500 LIMIT 1"""),
            {"city": haimen.id, "st": street}).one()
        others = c.execute(text("""
            SELECT c.id, c.code, ST_X(ST_Centroid(c.geom)), ST_Y(ST_Centroid(c.geom)) FROM grid_cell c
            JOIN grid g ON g.id = c.grid_id AND g.active AND g.city_id = :city
            WHERE NOT c.partial AND c.code LIKE :st || '%'
              AND ST_Distance(ST_Centroid(c.geom), ST_SetSRID(ST_Point(:x, :y), :s)) BETWEEN 1000 AND 2000
            ORDER BY c.code LIMIT 400"""), {"city": haimen.id, "st": street, "x": hot[2], "y": hot[3], "s": haimen.srid}).all()
    # Three of them far from each other (> 500 m), so that none is in another's neighbourhood.
    picked = []
    for r in others:
        if all(shapely.Point(r[2], r[3]).distance(shapely.Point(p[2], p[3])) > 500 for p in picked):
            picked.append(r)
        if len(picked) == 3:
            break
    assert len(picked) == 3
    return hot, *picked


def _inject(engine, haimen, cell, n, now):
    """n cases in one cell (at its centroid), one every 20 hours back from ``now``."""
    from layers.cases import workflow as lwf

    ids = []
    with engine.begin() as conn:
        for i in range(n):
            out = lwf.open_case(conn, haimen, source="hotline", channel="电话", category_code=LEAVES[i % len(LEAVES)],
                                received_at=now - dt.timedelta(hours=20 * i + 1),
                                location=shapely.Point(cell[2] + (i % 5) * 3, cell[3] + (i % 3) * 3))
            ids.append(out.id)
        merged = conn.execute(text("SELECT count(*) FROM case_file WHERE id = ANY(:i) AND merged_into IS NOT NULL"),
                              {"i": ids}).scalar()
    assert merged == 0
    return ids


@pytest.fixture
def counting(monkeypatch):
    """Counts the Gi* computations of the worklist (layers.analytics.hot_spots.hotspots calls)."""
    from layers.analytics import hot_spots as lhot

    real = lhot.hotspots
    calls = []

    def spy(*a, **kw):
        calls.append(a[2:4])
        return real(*a, **kw)

    monkeypatch.setattr(lhot, "hotspots", spy)
    return calls


def test_worklist_by_hotspot_weight(client, engine, haimen, make_inspector, counting, monkeypatch, browser,
                                    live_server):
    import uuid

    from layers.cases import calendar as lcal
    from layers.cases import workflow as lwf
    from layers.field import patrols as lpat
    from layers.field import zones as lzones
    from tests.conftest import auth

    monkeypatch.setenv("CITYGRID_WORKLIST_HOTSPOT_REFRESH_MINUTES", "10")
    # Cell-sized analysis units: the test city holds only the cases of this session's tests, so the scale
    # chosen from the data would be kilometres wide (a unit whose neighbourhood expects 10 cases).
    monkeypatch.setenv("CITYGRID_WORKLIST_HOTSPOT_UNIT_M", "100")
    hot, away, late_cell, later_hot = _cells(engine, haimen)
    street = hot[1][:9]
    _, h = make_inspector(area_code=street)
    now = lcal.now()
    _inject(engine, haimen, hot, 30, now)
    received = now - dt.timedelta(minutes=5)
    with engine.begin() as conn:
        # Equally due: the same class received at the same moment, one in the hot cell, one away.
        in_hot = lwf.open_case(conn, haimen, source="hotline", channel="电话", category_code="H90101",
                               received_at=received, location=shapely.Point(hot[2] - 30, hot[3] - 30))
        elsewhere = lwf.open_case(conn, haimen, source="hotline", channel="电话", category_code="H90101",
                                  received_at=received, location=shapely.Point(away[2], away[3]))
        late = lwf.open_case(conn, haimen, source="hotline", channel="电话", category_code="E20102",
                             received_at=now - dt.timedelta(days=5), location=shapely.Point(late_cell[2], late_cell[3]))
        dl = dict(conn.execute(text("SELECT id, step_deadline_at FROM case_file WHERE id = ANY(:i)"),
                               {"i": [in_hot.id, elsewhere.id, late.id]}).all())
    assert dl[in_hot.id] == dl[elsewhere.id] > now > dl[late.id]
    # Two zones due today (daily, not patrolled), one inside the hot cell, one inside the cell away.
    tag = uuid.uuid4().hex[:6]
    with engine.begin() as conn:
        lzones.upsert_zones(conn, haimen, [
            {"geometry": shapely.Point(c[2], c[3]).buffer(25), "code": f"WL-{name}-{tag}", "name": f"测试{name}",
             "type": "广场", "frequency": "daily"} for name, c in (("away", away), ("hot", hot))],
            haimen.working_crs, source="test")
    lpat._hot_cache.pop(haimen.id, None)

    r = client.get("/api/v1/worklist", headers=h)
    assert r.status_code == 200, r.text
    w = r.json()
    assert len(counting) == 1
    today = now.astimezone(lpat.TZ).date()
    assert w["hotspots"]["end"] == today.isoformat()
    assert w["hotspots"]["start"] == (today - dt.timedelta(days=29)).isoformat()
    assert w["hotspots"]["stale"] is False and w["hotspots"]["significant_cells"] >= 9
    assert w["hotspots"]["unit_m"] == 100 and w["hotspots"]["cases"] >= 30 and not w["hotspots"]["too_few_cases"]
    items = {c["id"]: c for c in w["cases"]}
    ids = [c["id"] for c in w["cases"]]
    # The hot cell is a 99 % hot spot; its weight is its z (the normal score of the exact p of its analysis
    # unit: z > 5 is p < 3e-7). The case away is not significant: weight 0.
    hw = items[in_hot.id]["hotspot"]
    assert hw["bin"] == 3 and hw["z"] > 5 and hw["weight"] == hw["z"] and "99%" in hw["label"]
    aw = items[elsewhere.id]["hotspot"]
    assert aw["bin"] == 0 and aw["weight"] == 0 and aw["z"] is not None and aw["z"] < hw["z"]
    # Overdue first; then the hot cell before the equally-due case elsewhere.
    assert items[late.id]["overdue"] is True and items[late.id]["hotspot"]["weight"] == 0
    assert ids.index(late.id) < ids.index(in_hot.id) < ids.index(elsewhere.id)
    overdue = [c["overdue"] for c in w["cases"]]
    assert overdue == sorted(overdue, reverse=True)
    # Within the not-overdue tasks: weight descending, then deadline.
    rest = [(c["hotspot"]["weight"], c["deadline"]) for c in w["cases"] if not c["overdue"]]
    assert [x[0] for x in rest] == sorted((x[0] for x in rest), reverse=True)
    assert all(c["cell_code"].startswith(street) for c in w["cases"])
    # Zones: equally due (one visit to go); the one in the hot cell first, weighted by that cell's z.
    zones = {z["code"]: z for z in w["zones_due"]}
    zh, za = zones[f"WL-hot-{tag}"], zones[f"WL-away-{tag}"]
    assert zh["remaining"] == za["remaining"] == 1
    assert zh["hotspot"]["bin"] == 3 and zh["hotspot"]["cells"] == 1 and zh["hotspot"]["z"] == pytest.approx(hw["z"])
    assert za["hotspot"] == {"z": None, "bin": 0, "label": None, "weight": 0.0, "cells": 0}
    codes = [z["code"] for z in w["zones_due"]]
    assert codes.index(zh["code"]) < codes.index(za["code"])
    order = [(-z["remaining"], -z["hotspot"]["weight"]) for z in w["zones_due"]]
    assert order == sorted(order)

    # The inspector's page shows the hot-spot badges on the worklist (from the same cached weights).
    ctx, page, errors = inspector_context(browser, h)
    page.goto(f"{live_server}/inspector")
    page.click("#tabs button[data-tab=work]")
    page.wait_for_function("document.querySelectorAll('#cases li').length > 0", timeout=20_000)
    case_items = page.locator("#cases li").all_inner_texts()
    zone_items = page.locator("#zones li").all_inner_texts()
    badge = f"热点 hot spot 99% (z {hw['z']:.1f})"
    assert any(in_hot.case_no in t and badge in t for t in case_items), case_items
    assert not any(elsewhere.case_no in t and "热点" in t for t in case_items), case_items
    assert any("测试hot" in t and badge in t for t in zone_items), zone_items
    assert any("测试away" in t and "热点" not in t for t in zone_items), zone_items
    assert not errors, errors
    ctx.close()
    # Served from the cache while nothing changed.
    again = client.get("/api/v1/worklist", headers=h).json()
    assert len(counting) == 1 and again["hotspots"]["computed_at"] == w["hotspots"]["computed_at"]

    # New cases move the rollup's change log: within the refresh interval the weights are served stale …
    _inject(engine, haimen, later_hot, 30, now)
    w2 = client.get("/api/v1/worklist", headers=h).json()
    assert len(counting) == 1 and w2["hotspots"]["stale"] is True
    new_ids = {c["cell_code"]: c for c in w2["cases"] if c["cell_code"] == later_hot[1]}
    assert new_ids and all(c["hotspot"]["bin"] == 0 for c in new_ids.values())
    # … and recomputed once the interval has passed: the new cluster is now a hot spot.
    t0 = lpat._clock()
    monkeypatch.setattr(lpat, "_clock", lambda: t0 + 601)
    w3 = client.get("/api/v1/worklist", headers=h).json()
    assert len(counting) == 2 and w3["hotspots"]["stale"] is False
    assert w3["hotspots"]["computed_at"] > w["hotspots"]["computed_at"]
    moved = [c for c in w3["cases"] if c["cell_code"] == later_hot[1]]
    assert moved and all(c["hotspot"]["bin"] == 3 for c in moved)
    # With an interval of 0, one new case recomputes at the next request.
    monkeypatch.setenv("CITYGRID_WORKLIST_HOTSPOT_REFRESH_MINUTES", "0")
    same = client.get("/api/v1/worklist", headers=h).json()
    assert len(counting) == 2  # nothing changed: still cached
    assert same["hotspots"]["stale"] is False and same["hotspots"]["computed_at"] == w3["hotspots"]["computed_at"]
    _inject(engine, haimen, away, 1, now)
    w4 = client.get("/api/v1/worklist", headers=h).json()
    assert len(counting) == 3 and w4["hotspots"]["stale"] is False
    # The supervisors' endpoint over the same window gives the same z for the hot cell.
    r = client.get("/api/v1/supervisor/hotspots", headers=auth(_supervisor_token(engine)),
                   params={"start": w4["hotspots"]["start"], "end": w4["hotspots"]["end"], "unit": 100})
    assert r.status_code == 200, r.text
    # (one feature per analysis unit: the one that covers the hot cell's centre)
    import json

    from gis import crs as gcrs
    lon, lat = gcrs.transform_xy(hot[2], hot[3], haimen.working_crs, "EPSG:4326")
    props = [f["properties"] for f in r.json()["features"]
             if shapely.from_geojson(json.dumps(f["geometry"])).covers(shapely.Point(float(lon), float(lat)))]
    assert len(props) == 1, len(props)
    z_w4 = next(c["hotspot"]["z"] for c in w4["cases"] if c["id"] == in_hot.id)
    assert props[0]["z"] == pytest.approx(z_w4, abs=1e-3)


def _supervisor_token(engine):
    import uuid

    from layers.core.users import add_user

    with engine.begin() as conn:
        _, tok = add_user(conn, f"wl_sup_{uuid.uuid4().hex[:8]}", "supervisor")
    return tok
