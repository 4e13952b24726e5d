"""Patrol coverage as a catalog layer (zone_coverage): exported as a GeoPackage and re-read with pyogrio,
its values equal GET /api/v1/zones/coverage for the same period; new tracks recompute it; roles; the OGC
API lists and serves it."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import time
import uuid

import numpy as np
import pyogrio
import pytest
import shapely
from sqlalchemy import text

from gis import crs as gcrs
from tests.conftest import auth


def _origin(haimen):
    x, y = gcrs.transform_xy(np.array([121.23]), np.array([31.86]), "EPSG:4326", haimen.working_crs)
    return math.floor(x[0]), math.floor(y[0])


def _gpx(haimen, xs, ys, t0: dt.datetime, step_s: float = 5) -> bytes:
    lon, lat = gcrs.transform_xy(np.asarray(xs, float), np.asarray(ys, float), haimen.working_crs, "EPSG:4326")
    pts = "".join(f'<trkpt lat="{b:.10f}" lon="{a:.10f}"><time>{(t0 + dt.timedelta(seconds=step_s * i)).isoformat()}'
                  f"</time><hdop>5</hdop></trkpt>" for i, (a, b) in enumerate(zip(lon, lat, strict=True)))
    return (f'<?xml version="1.0"?><gpx version="1.1" creator="test" xmlns="http://www.topografix.com/GPX/1/1">'
            f"<trk><trkseg>{pts}</trkseg></trk></gpx>").encode()


@pytest.fixture(scope="module")
def cov_zones(client, haimen, tokens):
    x0, y0 = _origin(haimen)
    tag = uuid.uuid4().hex[:6]
    square = shapely.box(x0, y0, x0 + 100, y0 + 100)
    road = shapely.LineString([(x0, y0 + 300), (x0 + 200, y0 + 300)])
    feats = []
    for code, ztype, freq, geom in ((f"CSQ-{tag}", "广场", "daily", square),
                                    (f"CRD-{tag}", "主干道", "twice_daily", road)):
        g = gcrs.transform_geometry(geom, haimen.working_crs, "EPSG:4326")
        feats.append({"type": "Feature", "properties": {"code": code, "name": f"覆盖测试 {code}", "type": ztype,
                                                        "frequency": freq},
                      "geometry": shapely.geometry.mapping(g)})
    r = client.post("/api/v1/zones/import", headers=auth(tokens["supervisor"]),
                    files={"file": ("z.geojson", json.dumps({"type": "FeatureCollection", "features": feats}).encode(),
                                    "application/geo+json")})
    assert r.status_code == 201, r.text
    area = {z["code"]: z["area_code"] for z in r.json()["zones"]}[f"CSQ-{tag}"]
    return {"square": f"CSQ-{tag}", "road": f"CRD-{tag}", "x0": x0, "y0": y0, "area": area}


def _export(client, h, tmp_path, name="cov"):
    r = client.get("/api/v1/layers/zone_coverage/export", headers=h, params={"format": "gpkg", "crs": "EPSG:4490"})
    assert r.status_code == 200, r.text
    p = tmp_path / f"{name}.gpkg"
    p.write_bytes(r.content)
    return pyogrio.read_dataframe(p)


def _coverage(client, h, start, end):
    r = client.get("/api/v1/zones/coverage", headers=h, params={"start": start, "end": end, "crs": "EPSG:4490"})
    assert r.status_code == 200, r.text
    return {f["id"]: f for f in r.json()["features"]}


def _same(df, api, codes):
    rows = {row["code"]: row for _, row in df.iterrows()}
    for code in codes:
        got, want = rows[code], api[code]["properties"]
        for k in ("share", "covered", "total"):
            assert float(got[k]) == pytest.approx(want[k], abs=1e-9), (code, k)
        for k in ("visits", "tracks", "required"):
            assert int(got[k]) == want[k], (code, k)
        assert got["per"] == want["per"] and got["measure"] == want["kind"]
        assert bool(got["frequency_met"]) is want["frequency_met"]
        assert got["status"] == ("met" if want["frequency_met"] else "missed")
        assert int(got["short_periods"]) == len(want["shortfalls"])
        assert got["frequency"] == want["frequency"] and got["zone_type"] == want["type"]
        geom = shapely.geometry.shape(api[code]["geometry"])
        assert shapely.hausdorff_distance(got.geometry, geom) < 1e-7, code
    return rows


def test_coverage_layer_exports_what_the_coverage_endpoint_says(client, engine, haimen, tokens, make_inspector,
                                                                cov_zones, tmp_path):
    from layers.field import patrols as lpat

    start, end = lpat.coverage_layer_period()
    sup = auth(tokens["supervisor"])
    _, ih = make_inspector()
    x0, y0 = cov_zones["x0"], cov_zones["y0"]
    now = dt.datetime.now(lpat.TZ)
    t0 = max(now - dt.timedelta(minutes=30), dt.datetime.combine(end, dt.time(0, 1), lpat.TZ))
    # A pass across the square (60 m swath through a 100 m square) and along half of the road.
    xs = np.arange(x0 - 50, x0 + 151, 25.0)
    r = client.post("/api/v1/tracks", headers=ih,
                    files={"file": ("a.gpx", _gpx(haimen, xs, np.full(xs.size, y0 + 50.0), t0), "x")})
    assert r.status_code == 201, r.text
    xs3 = np.arange(x0, x0 + 101, 20.0)
    r = client.post("/api/v1/tracks", headers=ih,
                    files={"file": ("b.gpx", _gpx(haimen, xs3, np.full(xs3.size, y0 + 310.0),
                                                  t0 + dt.timedelta(minutes=2)), "x")})
    assert r.status_code == 201, r.text

    df = _export(client, sup, tmp_path, "first")
    codes = (cov_zones["square"], cov_zones["road"])
    # One feature per active key zone of the city, each with the current period.
    with engine.connect() as c:
        n_zones = c.execute(text("SELECT count(*) FROM key_zone WHERE city_id = :c AND active"), {"c": haimen.id}).scalar()
    assert len(df) == n_zones and set(codes) <= set(df["code"])
    assert {str(v)[:10] for v in df["period_start"]} == {start.isoformat()}
    assert {str(v)[:10] for v in df["period_end"]} == {end.isoformat()}
    api = _coverage(client, sup, start.isoformat(), end.isoformat())
    assert set(api) == set(df["code"])
    rows = _same(df, api, api)
    sq, rd = rows[cov_zones["square"]], rows[cov_zones["road"]]
    assert float(sq["share"]) == pytest.approx(0.6, abs=1e-3) and int(sq["visits"]) == 1
    assert int(rd["visits"]) == 1 and int(rd["required"]) == 2 and rd["status"] == "missed"
    # No inspector in the layer: its fields are the zone's and the coverage's only.
    assert not {"user_id", "inspector", "user", "user_name"} & set(df.columns)

    # Unchanged inputs: the table is not recomputed.
    with engine.begin() as c:
        assert lpat.refresh_coverage_layer(c, haimen) is False
    # A second pass along the road (10 minutes later, so a new visit): the layer follows at the next read.
    r = client.post("/api/v1/tracks", headers=ih,
                    files={"file": ("c.gpx", _gpx(haimen, xs3, np.full(xs3.size, y0 + 290.0),
                                                  t0 + dt.timedelta(minutes=15)), "x")})
    assert r.status_code == 201, r.text
    df2 = _export(client, sup, tmp_path, "second")
    api2 = _coverage(client, sup, start.isoformat(), end.isoformat())
    rows2 = _same(df2, api2, api2)
    assert int(rows2[cov_zones["road"]]["visits"]) == 2 and int(rows2[cov_zones["road"]]["tracks"]) == 2
    assert float(rows2[cov_zones["road"]]["share"]) > 0

    # Roles: supervisors, planners and admins; not inspectors; no public form.
    assert client.get("/api/v1/layers/zone_coverage/export", headers=auth(tokens["planner"])).status_code == 200
    assert client.get("/api/v1/layers/zone_coverage/export", headers=ih).status_code == 403
    assert client.get("/api/v1/layers/zone_coverage/export").status_code == 401
    listed = {d["name"]: d for d in client.get("/api/v1/layers", headers=auth(tokens["planner"])).json()["layers"]}
    assert listed["zone_coverage"]["public"] is False and listed["zone_coverage"]["theme"] == "field"
    assert "zone_coverage" not in {d["name"] for d in client.get("/api/v1/layers").json()["layers"]}

    # A background export job (its own connection) sees the refreshed table too.
    r = client.post("/api/v1/layers/zone_coverage/export-jobs", headers=sup, params={"format": "gpkg"})
    assert r.status_code == 202, r.text
    job = r.json()
    for _ in range(200):
        st = client.get(job["status_url"], headers=sup).json()
        if st["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert st["status"] == "done", st
    p = tmp_path / "job.gpkg"
    p.write_bytes(client.get(job["file_url"], headers=sup).content)
    _same(pyogrio.read_dataframe(p), api2, codes)
    # Vector tiles of the layer (not cached: it has no layer version).
    z = 14
    lon, lat = gcrs.transform_xy(np.array([x0 + 50.0]), np.array([y0 + 50.0]), haimen.working_crs, "EPSG:4326")
    tx = int((lon[0] + 180) / 360 * 2**z)
    ty = int((1 - math.asinh(math.tan(math.radians(lat[0]))) / math.pi) / 2 * 2**z)
    r = client.get(f"/api/v1/tiles/zone_coverage/{z}/{tx}/{ty}.mvt", headers=sup)
    assert r.status_code == 200 and len(r.content) > 0
    import mapbox_vector_tile

    tiled = {f["properties"]["code"]: f["properties"]
             for f in mapbox_vector_tile.decode(r.content)["zone_coverage"]["features"]}
    assert tiled[cov_zones["square"]]["share"] == pytest.approx(api2[cov_zones["square"]]["properties"]["share"])

    # OGC API – Features: listed among the collections, items with the same values.
    cols = client.get("/api/v1/ogc/collections", headers=sup).json()["collections"]
    assert "zone_coverage" in {c["id"] for c in cols}
    r = client.get("/api/v1/ogc/collections/zone_coverage/items", headers=sup, params={"limit": 1000})
    assert r.status_code == 200, r.text
    items = {f["properties"]["code"]: f["properties"] for f in r.json()["features"]}
    for code in codes:
        assert items[code]["share"] == pytest.approx(api2[code]["properties"]["share"])
        assert items[code]["visits"] == api2[code]["properties"]["visits"]

    # A refused caller and the metadata routes do not refresh the table: after a new track, the next
    # refresh still finds work to do.
    r = client.post("/api/v1/tracks", headers=ih,
                    files={"file": ("d.gpx", _gpx(haimen, xs3, np.full(xs3.size, y0 + 290.0),
                                                  t0 + dt.timedelta(minutes=25)), "x")})
    assert r.status_code == 201, r.text
    assert client.get("/api/v1/layers/zone_coverage/export", headers=ih).status_code == 403
    assert client.get("/api/v1/layers/zone_coverage/export").status_code == 401
    assert client.get("/api/v1/ogc/collections/zone_coverage", headers=sup).status_code == 200
    assert "zone_coverage" in {c["id"] for c in client.get("/api/v1/ogc/collections", headers=sup).json()["collections"]}
    with engine.begin() as c:
        assert lpat.refresh_coverage_layer(c, haimen) is True


def test_coverage_layer_csv_and_area_filter(client, tokens, cov_zones):
    """Other export formats and the catalog's area filter apply (area = the zone's owning area)."""
    h = auth(tokens["admin"])
    r = client.get("/api/v1/layers/zone_coverage/export", headers=h, params={"format": "csv", "area": cov_zones["area"]})
    assert r.status_code == 200, r.text
    body = r.content.decode("utf-8-sig")
    assert cov_zones["square"] in body and "share" in io.StringIO(body).readline()
    r = client.get("/api/v1/layers/zone_coverage/export", headers=h, params={"format": "csv", "area": "320614999"})
    assert r.status_code == 200 and cov_zones["square"] not in r.content.decode("utf-8-sig")
