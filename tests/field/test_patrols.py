"""Key zones, patrol tracks and coverage: a hand-computed case, dropped fixes, CRSs, the missed-zone
list, per-inspector statistics and the worklist."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid

import numpy as np
import pytest
import shapely
from sqlalchemy import text

from gis import crs as gcrs
from tests.conftest import count

CST = dt.timezone(dt.timedelta(hours=8))
DAY = dt.date(2021, 3, 16)  # a day no other test patrols


def _origin(haimen):
    x, y = gcrs.transform_xy(np.array([121.17]), np.array([31.89]), "EPSG:4326", haimen.working_crs)
    return math.floor(x[0]), math.floor(y[0])


def _lonlat(haimen, xs, ys, dst="EPSG:4326"):
    lon, lat = gcrs.transform_xy(np.asarray(xs, float), np.asarray(ys, float), haimen.working_crs, dst)
    return lon, lat


def _gpx(points) -> bytes:
    """points: (lon, lat, datetime, hdop or None)."""
    pts = "".join(
        f'<trkpt lat="{lat:.10f}" lon="{lon:.10f}"><time>{t.isoformat()}</time>'
        + (f"<hdop>{h}</hdop>" if h is not None else "") + "</trkpt>" for lon, lat, t, h in points)
    return (f'<?xml version="1.0"?><gpx version="1.1" creator="test" xmlns="http://www.topografix.com/GPX/1/1">'
            f"<trk><name>patrol</name><trkseg>{pts}</trkseg></trk></gpx>").encode()


@pytest.fixture(scope="module")
def zones(client, engine, haimen, tokens):
    """Two zones imported through the API from GeoJSON in GCJ-02: a 100 m square and a 200 m road."""
    from tests.conftest import auth

    x0, y0 = _origin(haimen)
    tag = uuid.uuid4().hex[:6]
    square = shapely.box(x0, y0, x0 + 100, y0 + 100)
    road = shapely.LineString([(x0, y0 + 300), (x0 + 200, y0 + 300)])
    feats = []
    for code, name, ztype, freq, geom in ((f"SQ-{tag}", "测试广场", "广场", "twice_daily", square),
                                          (f"RD-{tag}", "测试路", "主干道", "daily", road)):
        g = gcrs.transform_geometry(geom, haimen.working_crs, "GCJ-02")
        feats.append({"type": "Feature", "properties": {"code": code, "name": name, "type": ztype, "frequency": freq},
                      "geometry": shapely.geometry.mapping(g)})
    body = json.dumps({"type": "FeatureCollection", "features": feats}).encode()
    r = client.post("/api/v1/zones/import", headers=auth(tokens["supervisor"]), data={"crs": "GCJ-02"},
                    files={"file": ("zones.geojson", body, "application/geo+json")})
    assert r.status_code == 201, r.text
    done = {z["code"]: z for z in r.json()["zones"]}
    # Stored in the working CRS where they were drawn (GCJ-02 converted back within centimetres).
    with engine.connect() as c:
        for code, geom in ((f"SQ-{tag}", square), (f"RD-{tag}", road)):
            wkb = c.execute(text("SELECT ST_AsBinary(geom) FROM key_zone WHERE code = :c"), {"c": code}).scalar()
            assert shapely.hausdorff_distance(shapely.from_wkb(bytes(wkb)), geom) < 0.05
    return {"square": f"SQ-{tag}", "road": f"RD-{tag}", "x0": x0, "y0": y0, "area": done[f"SQ-{tag}"]["area_code"]}


def test_zone_import_rejects_bad_files(client, tokens, engine):
    from tests.conftest import auth

    h = auth(tokens["admin"])
    before = count(engine, "SELECT count(*) FROM key_zone")
    bad = [
        ({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"name": "x", "type": "火星"},
          "geometry": {"type": "Point", "coordinates": [121.17, 31.89]}}]}, "unknown zone type"),
        ({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"name": "x", "type": "广场"},
          "geometry": {"type": "Point", "coordinates": [116.4, 39.9]}}]}, "outside the city"),
        ({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"name": "x", "type": "广场",
          "frequency": "sometimes"}, "geometry": {"type": "Point", "coordinates": [121.17, 31.89]}}]}, "frequency"),
    ]
    for fc, word in bad:
        r = client.post("/api/v1/zones/import", headers=h,
                        files={"file": ("z.geojson", json.dumps(fc).encode(), "application/geo+json")})
        assert r.status_code == 422 and word in r.json()["detail"], r.text
    r = client.post("/api/v1/zones/import", headers=h, files={"file": ("z.txt", b"hello", "text/plain")})
    assert r.status_code == 422
    assert count(engine, "SELECT count(*) FROM key_zone") == before
    assert client.post("/api/v1/zones/import", headers=auth(tokens["inspector"]),
                       files={"file": ("z.geojson", b"{}", "application/json")}).status_code == 403


def test_demo_zones_load(engine, haimen):
    from layers.field.zones import load_demo_zones

    with engine.begin() as conn:
        first = load_demo_zones(conn, haimen)
        again = load_demo_zones(conn, haimen)
    assert len(first) == len(again) >= 8
    assert {z["type"] for z in first} >= {"主干道", "商业大街", "长途汽车站", "广场", "废旧物品收购点", "社区", "主出入口"}
    assert all(z["area_code"] and z["area_code"].startswith("320614") for z in first)
    with engine.connect() as c:
        assert c.execute(text("SELECT bool_and(made_up) FROM key_zone WHERE code LIKE 'HM-%'")).scalar()


def test_coverage_equals_hand_computation(client, make_inspector, zones, haimen, tokens):
    from tests.conftest import auth

    user, h = make_inspector()
    x0, y0 = zones["x0"], zones["y0"]
    t9 = dt.datetime.combine(DAY, dt.time(9), CST)
    # Track 1 (09:00): y = y0 + 50 from x0 - 100 to x0 + 200, 25 m every 5 s; plus a 5 km jump and a
    # 80 m-accuracy fix, both to be dropped.
    xs = np.arange(x0 - 100, x0 + 201, 25.0)
    lon, lat = _lonlat(haimen, xs, np.full(xs.size, y0 + 50.0))
    pts = [(lon[i], lat[i], t9 + dt.timedelta(seconds=5 * i), 5) for i in range(xs.size)]
    jlon, jlat = _lonlat(haimen, [x0 + 5000], [y0 + 50])
    pts.insert(7, (jlon[0], jlat[0], t9 + dt.timedelta(seconds=32), 5))
    pts.insert(9, (lon[7], lat[7] + 1e-7, t9 + dt.timedelta(seconds=37), 80))
    r = client.post("/api/v1/tracks", headers=h, files={"file": ("t1.gpx", _gpx(pts), "application/gpx+xml")})
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["dropped"] == {"invalid": 0, "accuracy": 1, "time": 0, "speed": 1}
    assert out["kept"] == xs.size and out["segments"][0]["length_m"] == pytest.approx(300, abs=0.01)
    # Track 2 (15:00): the same path, sent as GeoJSON in GCJ-02.
    t15 = dt.datetime.combine(DAY, dt.time(15), CST)
    glon, glat = _lonlat(haimen, xs, np.full(xs.size, y0 + 50.0), "GCJ-02")
    gj = {"type": "Feature", "properties": {"times": [(t15 + dt.timedelta(seconds=5 * i)).isoformat()
                                                      for i in range(xs.size)]},
          "geometry": {"type": "LineString", "coordinates": [[float(a), float(b)] for a, b in zip(glon, glat, strict=True)]}}
    r = client.post("/api/v1/tracks", headers=h, data={"crs": "GCJ-02"},
                    files={"file": ("t2.geojson", json.dumps(gj).encode(), "application/geo+json")})
    assert r.status_code == 201 and r.json()["kept"] == xs.size
    # Track 3 (10:00): along the road, 20 m north of it, x0 + 50 … x0 + 150.
    xs3 = np.arange(x0 + 50, x0 + 151, 25.0)
    lon3, lat3 = _lonlat(haimen, xs3, np.full(xs3.size, y0 + 320.0))
    t10 = dt.datetime.combine(DAY, dt.time(10), CST)
    pts3 = [(lon3[i], lat3[i], t10 + dt.timedelta(seconds=10 * i), None) for i in range(xs3.size)]
    assert client.post("/api/v1/tracks", headers=h, files={"file": ("t3.gpx", _gpx(pts3), "x")}).status_code == 201

    sup = auth(tokens["supervisor"])
    r = client.get("/api/v1/zones/coverage", headers=sup, params={"start": DAY.isoformat()})
    assert r.status_code == 200, r.text
    got = {f["id"]: f["properties"] for f in r.json()["features"]}
    sq, rd = got[zones["square"]], got[zones["road"]]
    # Hand computation: the 60 m swath crosses the 100 m square: 100 × 60 = 6,000 of 10,000 m².
    assert sq["kind"] == "area" and sq["total"] == pytest.approx(10_000, abs=0.01)
    assert sq["covered"] == pytest.approx(6_000, abs=1.0) and sq["share"] == pytest.approx(0.6, abs=1e-3)
    assert sq["visits"] == 2 and sq["frequency_met"] is True  # twice a day: 09:00 and 15:00
    # The road: 100 m beside the track plus √(30² − 20²) beyond each end.
    assert rd["kind"] == "length" and rd["total"] == pytest.approx(200, abs=0.01)
    assert rd["covered"] == pytest.approx(100 + 2 * math.sqrt(30**2 - 20**2), abs=0.1)
    assert rd["visits"] == 1 and rd["frequency_met"] is True
    # Over two days, the second without patrols: neither is met; both are on the missed list.
    nxt = (DAY + dt.timedelta(days=1)).isoformat()
    r = client.get("/api/v1/zones/missed", headers=sup, params={"start": DAY.isoformat(), "end": nxt})
    missed = {f["id"]: f["properties"] for f in r.json()["features"]}
    assert missed[zones["square"]]["shortfalls"] == {nxt: 0}
    assert missed[zones["road"]]["visits_per_day"] == {DAY.isoformat(): 1, nxt: 0}
    # Statistics per inspector.
    r = client.get("/api/v1/patrols/stats", headers=sup, params={"start": DAY.isoformat()})
    me = next(s for s in r.json()["inspectors"] if s["user_id"] == user.id)
    assert me["tracks"] == 3 and me["km"] == pytest.approx(0.7, abs=0.001)
    assert me["dropped"] == {"speed": 1, "accuracy": 1, "other": 0}
    assert client.get("/api/v1/zones/coverage", headers=h).status_code == 403


def test_track_bad_input(client, make_inspector, engine):
    _, h = make_inspector()
    before = count(engine, "SELECT count(*) FROM patrol_track")
    t = dt.datetime(2021, 3, 20, 9, tzinfo=CST)
    cases = [
        (b"not xml or json", {}, "GPX"),
        (b"<gpx><trk><trkseg><trkpt lat='95' lon='121'/></trkseg></trk></gpx>", {}, "lat"),
        (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><gpx/>', {}, "DTD"),
        (b'{"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[121.17, 31.89]]}, "properties": {}}',
         {}, "times"),
        (_gpx([(121.17, 31.89, t, None)]), {}, "2 plausible fixes"),
        (_gpx([(121.17, 31.89, t, None), (121.171, 31.89, t + dt.timedelta(seconds=60), None)]),
         {"crs": "EPSG:4549"}, "lon/lat"),
    ]
    for body, data, word in cases:
        r = client.post("/api/v1/tracks", headers=h, data=data, files={"file": ("t", body, "x")})
        assert r.status_code == 422 and word in r.json()["detail"], (body[:60], r.text)
    assert count(engine, "SELECT count(*) FROM patrol_track") == before


def test_worklist(client, make_inspector, engine, haimen, zones):
    from layers.cases import calendar as lcal
    from layers.cases import workflow as lwf

    user, h = make_inspector(area_code=zones["area"])
    x0, y0 = zones["x0"], zones["y0"]
    with engine.begin() as conn:
        fresh = lwf.open_case(conn, haimen, source="hotline", channel="电话", category_code="E10301",
                              received_at=lcal.now(), location=shapely.Point(x0 + 20, y0 - 400))
        late = lwf.open_case(conn, haimen, source="hotline", channel="电话", category_code="E20102",
                             received_at=lcal.now() - dt.timedelta(days=5), location=shapely.Point(x0 - 20, y0 - 500))
    r = client.get("/api/v1/worklist", headers=h)
    assert r.status_code == 200, r.text
    w = r.json()
    due = {z["code"]: z for z in w["zones_due"]}
    assert due[zones["square"]]["remaining"] == 2 and due[zones["road"]]["remaining"] == 1
    assert all(z["area_code"] == zones["area"] for z in w["zones_due"])
    ids = [c["id"] for c in w["cases"]]
    assert late.id in ids and fresh.id in ids and ids.index(late.id) < ids.index(fresh.id)
    assert next(c for c in w["cases"] if c["id"] == late.id)["overdue"] is True
    assert all(c["cell_code"].startswith(zones["area"]) for c in w["cases"])
