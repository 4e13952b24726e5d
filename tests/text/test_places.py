"""The place in the text: the gazetteer loaded from GIS/POI files (GeoJSON, CSV) by the CLI, a hand-made
text placed in the right cell, the needs-location queue's proposals and the operator's confirmation."""

from __future__ import annotations

import json

import numpy as np
import shapely
from sqlalchemy import text

from gis import crs as gcrs
from layers.cases.workflow import snap_one
from layers.text import places
from tests.conftest import auth

# Made-up places in Haimen (WGS-84): a community (polygon) and a road passing 100 m south of it,
# far enough from the demo's own names; a landmark given by a CSV row.
COMMUNITY = [[121.1745, 31.8945], [121.1755, 31.8945], [121.1755, 31.8955], [121.1745, 31.8955], [121.1745, 31.8945]]
ROAD = [[121.170, 31.8940], [121.180, 31.8940]]
LANDMARK = (121.150, 31.870)


def _working(city, lon, lat):
    x, y = gcrs.transform_xy(np.array([lon]), np.array([lat]), "EPSG:4326", city.working_crs)
    return shapely.Point(float(x[0]), float(y[0]))


def _load(cli, tmp_path, capsys):
    gj = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "青檀苑", "kind": "小区"},
         "geometry": {"type": "Polygon", "coordinates": [COMMUNITY]}},
        {"type": "Feature", "properties": {"name": "梧桐大道", "kind": "road"},
         "geometry": {"type": "LineString", "coordinates": ROAD}},
        {"type": "Feature", "properties": {"name": None, "kind": "road"},
         "geometry": {"type": "LineString", "coordinates": ROAD}}]}
    (tmp_path / "places.geojson").write_text(json.dumps(gj, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "poi.csv").write_text(f"name,kind,lon,lat\n紫藤文化广场,地标,{LANDMARK[0]},{LANDMARK[1]}\n",
                                      encoding="utf-8")
    assert cli(["gazetteer", "load", str(tmp_path / "places.geojson"), "--city", "haimen"]) == 0
    assert "2 places loaded (community 1, road 1), 1 rows skipped" in capsys.readouterr().out
    assert cli(["gazetteer", "load", str(tmp_path / "poi.csv"), "--city", "haimen"]) == 0
    assert "1 places loaded (poi 1)" in capsys.readouterr().out
    (tmp_path / "bad.csv").write_text("name,kind,lon,lat\n某地,星球,121.1,31.8\n", encoding="utf-8")
    assert cli(["gazetteer", "load", str(tmp_path / "bad.csv"), "--city", "haimen"]) == 2
    assert "unknown place kind '星球'" in capsys.readouterr().err


def test_gazetteer_from_files_and_a_text_placed_in_the_right_cell(cli, engine, haimen, tmp_path, capsys):
    _load(cli, tmp_path, capsys)
    msg = "青檀苑小区南门外的梧桐大道边上垃圾堆了一个星期，没人清运，江苏省南通市的市民反映。"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM gazetteer WHERE name = '某地'")).scalar() == 0
        found = places.find(conn, haimen, msg)
        comm = shapely.Polygon([_working(haimen, *p) for p in COMMUNITY])
        want_cell = snap_one(conn, haimen, comm.point_on_surface())[1]
        best_cell = snap_one(conn, haimen, shapely.Point(found[0]["x"], found[0]["y"]))[1]
    first, second = found[0], found[1]
    assert (first["name"], first["kind"], first["text"]) == ("青檀苑", "community", "青檀苑")
    assert msg[first["span"][0]:first["span"][1]] == "青檀苑"
    assert best_cell == want_cell
    # the road agrees (within 500 m): both raised; the community (0.8) stays above the road (0.75)
    assert second["name"] == "梧桐大道" and first["confidence"] == 0.85 and second["confidence"] == 0.8
    assert first["admin"]["adcode"].startswith("3206")  # cpca read 江苏省南通市: the city's prefecture
    # another prefecture named in the text lowers the confidence
    with engine.connect() as conn:
        far = places.find(conn, haimen, "浙江省杭州市西湖区青檀苑门口有垃圾")
    assert far[0]["name"] == "青檀苑" and far[0]["confidence"] < 0.7
    # an address the gazetteer does not know is a mention with no location
    with engine.connect() as conn:
        m = places.find(conn, haimen, "东风路18号门口路灯不亮")
    assert m[0]["kind"] == "mention" and m[0]["text"] == "东风路18号" and "x" not in m[0]


def test_needs_location_queue_proposes_and_the_operator_confirms(client, tokens, engine, haimen, tmp_path, cli, capsys):
    with engine.connect() as conn:
        have = conn.execute(text("SELECT count(*) FROM gazetteer WHERE name = '紫藤文化广场'")).scalar()
    if not have:
        _load(cli, tmp_path, capsys)
    op = auth(tokens["operator"])
    r = client.post("/api/v1/cases", headers=op, json={
        "category_code": "E10101", "description": "紫藤文化广场东侧绿化带里有人乱倒生活垃圾，气味很大。",
        "address": "不详"})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert r.json()["needs_location"] is True
    q = client.get("/api/v1/text/needs-location", headers=op, params={"limit": 200})
    assert q.status_code == 200, q.text
    assert q.json()["total_exact"] is True and q.json()["total"] >= 1  # the list's count fields, passed on
    case = next(c for c in q.json()["cases"] if c["id"] == cid)
    prop = case["proposals"][0]
    assert (prop["name"], prop["kind"], prop["confidence"]) == ("紫藤文化广场", "poi", 0.95)
    assert case["text"][prop["span"][0]:prop["span"][1]] == "紫藤文化广场"
    with engine.connect() as conn:
        want = snap_one(conn, haimen, _working(haimen, *LANDMARK))[1]
    assert prop["cell_code"] == want
    # a name that is not in the text is refused, nothing written
    bad = client.post(f"/api/v1/text/cases/{cid}/place", headers=op, json={"name": "青檀苑", "kind": "community"})
    assert bad.status_code == 409 and "not a place found in the text" in bad.text
    assert client.post(f"/api/v1/text/cases/{cid}/place", headers=auth(tokens["planner"]),
                       json={"name": "紫藤文化广场", "kind": "poi"}).status_code == 403
    with engine.connect() as conn:
        assert conn.execute(text("SELECT location IS NULL FROM case_file WHERE id = :i"), {"i": cid}).scalar()
    ok = client.post(f"/api/v1/text/cases/{cid}/place", headers=op, json={"name": "紫藤文化广场", "kind": "poi"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["cell_code"] == want
    with engine.connect() as conn:
        row = conn.execute(text("""SELECT cell_code, location_source, (SELECT data->>'source' FROM case_event
                                   WHERE case_id = f.id AND kind = 'located') FROM case_file f WHERE id = :i"""),
                           {"i": cid}).one()
    assert row == (want, "text", "text")
    q2 = client.get("/api/v1/text/needs-location", headers=op, params={"limit": 200}).json()
    assert cid not in [c["id"] for c in q2["cases"]]

