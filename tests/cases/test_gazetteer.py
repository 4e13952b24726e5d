"""Locating cases from their address: the gazetteer, confidence, the needs-location queue."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from layers.cases import gazetteer
from tests.cases.conftest import working_point
from tests.conftest import auth


def test_address_matching_and_queue(client, tokens, engine, haimen, clock):
    poi = f"测试中学{uuid.uuid4().hex[:4]}"
    road = f"测试大道{uuid.uuid4().hex[:4]}"
    p = working_point(haimen, 121.22, 31.92)
    from shapely.geometry import LineString

    line = LineString([(p.x - 500, p.y), (p.x + 500, p.y)])
    with engine.begin() as conn:
        assert gazetteer.add_places(conn, haimen, [poi, road], ["poi", "road"], [p, line], source="test") == 2
    op = auth(tokens["operator"])
    base = {"category_code": "E10101", "channel": "电话", "description": "垃圾堆放"}
    r = client.post("/api/v1/cases", json={**base, "address": f"海门区{poi}东门口"}, headers=op)
    assert r.status_code == 201 and not r.json()["needs_location"]
    with engine.connect() as conn:
        src, conf, dist = conn.execute(text("""
            SELECT location_source, location_confidence, ST_Distance(location, ST_SetSRID(ST_MakePoint(:x, :y), 4549))
            FROM case_file WHERE id = :i"""), {"i": r.json()["id"], "x": p.x, "y": p.y}).one()
    assert src == "gazetteer" and conf == 0.95 and dist < 1e-6
    # A road: its middle point, lower confidence (still above the threshold).
    r = client.post("/api/v1/cases", json={**base, "address": f"{road}88号"}, headers=op)
    assert not r.json()["needs_location"]
    # Only the street office's name: too coarse, the case waits for an operator.
    street = client.get("/api/v1/cases/needs-location", headers=op)
    with engine.connect() as conn:
        street_name = conn.execute(text("""SELECT regexp_replace(name, ' \\(made up\\)$', '') FROM admin_area
                                           WHERE city_id = :c AND level = 'street' LIMIT 1"""),
                                   {"c": haimen.id}).scalar_one()
    r = client.post("/api/v1/cases", json={**base, "address": f"{street_name}某处"}, headers=op)
    assert r.json()["needs_location"]
    queue = client.get("/api/v1/cases/needs-location", headers=op, params={"limit": 1000}).json()
    assert r.json()["id"] in [c["id"] for c in queue["cases"]]
    assert street.status_code == 200
    assert gazetteer.index  # the index is cached per city and refreshed when places change
    assert gazetteer.normalise(" 海门 路（东） ") == "海门路东"


def test_inspectors_see_checks_in_their_area(client, tokens, make_user, clock, departments, spot, engine):
    op = auth(tokens["operator"])
    lon, lat = spot()
    c = client.post("/api/v1/cases", json={"category_code": "E10301", "channel": "督查员", "source": "inspector",
                                           "description": "道路不洁", "location": {"x": lon, "y": lat}}, headers=op).json()
    street = c["cell_code"][:9]
    _, mine = make_user("inspector", area_code=street)
    _, other = make_user("inspector", area_code="320614999")
    ids = lambda h: [x["id"] for x in client.get("/api/v1/cases", headers=h, params={"limit": 1000}).json()["cases"]]  # noqa: E731
    assert c["id"] in ids(mine) and c["id"] not in ids(other)
    assert client.get(f"/api/v1/cases/{c['id']}", headers=other).status_code == 403
    # Departments see only their own cases.
    _, dep = make_user("department", department="sanitation")
    assert c["id"] not in ids(dep)
    client.post(f"/api/v1/cases/{c['id']}/actions/accept", json={}, headers=op)
    client.post(f"/api/v1/cases/{c['id']}/actions/dispatch", json={"department": "sanitation",
                                                                    "override_reason": "环卫负责"}, headers=op)
    assert c["id"] in ids(dep)
    assert c["id"] not in ids(mine)  # dispatched: no longer an inspector's task
