"""Tuscany photos in a test city, idempotent retries (sequential and concurrent), duplicates across
channels (并单), and snapping an asset problem to its asset."""

from __future__ import annotations

import datetime as dt
import uuid
from fractions import Fraction

import numpy as np
import pyproj
import pytest
import shapely
from PIL import Image
from sqlalchemy import text

from tests.conftest import concurrently, count
from tests.field.conftest import jpeg, photo
from tests.field.test_reports import post, spot

TUSCANY = ["DSCN0010.jpg", "DSCN0012.jpg", "DSCN0021.jpg", "DSCN0025.jpg", "DSCN0027.jpg", "DSCN0029.jpg"]


@pytest.fixture(scope="module")
def tuscany(engine):
    """A small test city around the Tuscany photos, with a regular 100 m grid."""
    from layers.core import city as lcity

    slug = f"tuscany-{uuid.uuid4().hex[:6]}"
    box = shapely.box(11.875, 43.462, 11.892, 43.474)
    with engine.begin() as conn:
        city = lcity.create_city(conn, slug=slug, name="托斯卡纳测试", adcode="990001", boundary=box,
                                 src_crs="EPSG:4326")
        lcity.generate_grid(conn, city, size=100.0)
    return city


def _exif_lonlat_by_pillow(data: bytes) -> tuple[float, float]:
    """Independent reading of the EXIF position (Pillow's parser, not gis.exif)."""
    import io

    gps = Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)

    def deg(v):
        return float(Fraction(v[0]) + Fraction(v[1]) / 60 + Fraction(v[2]) / 3600)

    lat = deg(gps[2]) * (1 if gps[1] == "N" else -1)
    lon = deg(gps[4]) * (1 if gps[3] == "E" else -1)
    return lon, lat


def test_tuscany_photos_land_in_their_cells(client, make_inspector, engine, tuscany):
    _, h = make_inspector()
    fwd = pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{tuscany.srid}", always_xy=True)
    seen = set()
    for name in TUSCANY:
        data = photo(name)
        r = post(client, h, [(name, data)], city=tuscany.slug)
        assert r.status_code == 201, (name, r.text)
        out = r.json()
        assert out["location"]["source"] == "exif"
        # Independent: Pillow's EXIF → pyproj → floor(x / 100), floor(y / 100), and PostGIS ST_Covers.
        lon, lat = _exif_lonlat_by_pillow(data)
        x, y = fwd.transform(lon, lat)
        with engine.connect() as c:
            col, row = c.execute(text("""SELECT col, "row" FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id
                                         WHERE g.city_id = :c AND g.active AND gc.code = :code"""),
                                 {"c": tuscany.id, "code": out["cell_code"]}).one()
            covers = c.execute(text("""SELECT ST_Covers(gc.geom, ST_SetSRID(ST_MakePoint(:x, :y), :s))
                                       FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id
                                       WHERE g.city_id = :c AND g.active AND gc.code = :code"""),
                                {"x": x, "y": y, "s": tuscany.srid, "c": tuscany.id, "code": out["cell_code"]}).scalar()
        assert (col, row) == (int(np.floor(x / 100)), int(np.floor(y / 100))), name
        assert covers, name
        assert out["cell_code"].startswith("990001")
        seen.add(out["cell_code"])
    assert len(seen) >= 3  # the photos are spread over ~400 m


def test_idempotent_retry_returns_the_first_result(client, make_inspector, engine):
    _, h = make_inspector()
    key = f"k-{uuid.uuid4().hex}"
    lon, lat = spot()
    r1 = post(client, h, [("a.jpg", jpeg(11))], key=key, lon=lon, lat=lat, accuracy=4, category_code="E50301")
    r2 = post(client, h, [("a.jpg", jpeg(11))], key=key, lon=lon, lat=lat, accuracy=4, category_code="E50301")
    assert r1.status_code == 201 and r2.status_code == 200
    assert r2.headers["Idempotent-Replayed"] == "true"
    assert r2.json() == r1.json()
    assert count(engine, "SELECT count(*) FROM field_report WHERE idempotency_key = :k", k=key) == 1
    # The same key for a different report is refused.
    r3 = post(client, h, [("a.jpg", jpeg(12))], key=key, lon=lon, lat=lat, accuracy=4, category_code="E50301")
    assert r3.status_code == 409 and "Idempotency-Key" in r3.json()["detail"]
    # Keys are per inspector: another inspector's same key is another report.
    _, h2 = make_inspector()
    r4 = post(client, h2, [("a.jpg", jpeg(11))], key=key, lon=lon, lat=lat, accuracy=4, category_code="E50301")
    assert r4.status_code == 201 and r4.json()["id"] != r1.json()["id"]


def test_concurrent_retries_make_one_report(live_server, make_inspector, engine):
    import httpx

    _, h = make_inspector()
    key = f"c-{uuid.uuid4().hex}"
    lon, lat = spot()
    data = jpeg(13, size=(640, 480))

    def send():
        with httpx.Client(timeout=60) as c:
            r = c.post(f"{live_server}/api/v1/reports", headers={**h, "Idempotency-Key": key},
                       data={"category_code": "E10301", "lon": lon, "lat": lat, "accuracy": 5},
                       files=[("photos", ("a.jpg", data, "image/jpeg"))])
            return r.status_code, r.json()

    results = concurrently(8, send)
    statuses = sorted(s for s, _ in results)
    assert statuses.count(201) == 1 and statuses.count(200) == 7, statuses
    assert len({b["id"] for _, b in results}) == 1
    assert count(engine, "SELECT count(*) FROM field_report WHERE idempotency_key = :k", k=key) == 1
    assert count(engine, "SELECT count(*) FROM case_file WHERE source_ref = :r",
                 r=f"field-report-{results[0][1]['id']}") == 1


def _working(city, lon, lat):
    from gis import crs as gcrs

    x, y = gcrs.transform_xy(np.array([lon]), np.array([lat]), "EPSG:4326", city.working_crs)
    return shapely.Point(float(x[0]), float(y[0]))


def test_inspector_report_merges_into_open_hotline_case(client, make_inspector, engine, haimen):
    from layers.cases import calendar as lcal
    from layers.cases import workflow as lwf

    _, h = make_inspector()
    lon, lat = spot()
    with engine.begin() as conn:
        hot = lwf.open_case(conn, haimen, source="hotline", channel="电话", category_code="E40101",
                            received_at=lcal.now() - dt.timedelta(hours=5), location=_working(haimen, lon, lat),
                            description="路上积水 water on the road")
    # 20 m north: same class → merged, never dispatched twice.
    r = post(client, h, [("a.jpg", jpeg(21))], lon=lon, lat=lat + 0.00018, accuracy=5, category_code="E40101")
    assert r.status_code == 201
    case = r.json()["case"]
    assert case["state"] == "merged" and case["merged_into"] == hot.id and case["merged_into_no"] == hot.case_no
    # Another class at the same spot is its own case.
    r = post(client, h, [("a.jpg", jpeg(22))], lon=lon, lat=lat + 0.00018, accuracy=5, category_code="E40201")
    assert r.json()["case"]["merged_into"] is None and r.json()["case"]["state"] == "collected"
    # 80 m away (beyond 50 m): its own case.
    r = post(client, h, [("a.jpg", jpeg(23))], lon=lon, lat=lat + 0.00072, accuracy=5, category_code="E40101")
    assert r.json()["case"]["merged_into"] is None


def test_hotline_case_merges_into_open_inspector_report(client, make_inspector, engine, haimen):
    from layers.cases import calendar as lcal
    from layers.cases import workflow as lwf

    _, h = make_inspector()
    lon, lat = spot()
    r = post(client, h, [("a.jpg", jpeg(24))], lon=lon, lat=lat, accuracy=5, category_code="E50501")
    assert r.status_code == 201 and r.json()["case"]["merged_into"] is None
    insp_case = r.json()["case"]["id"]
    with engine.begin() as conn:
        hot = lwf.open_case(conn, haimen, source="hotline", channel="电话", category_code="E50501",
                            received_at=lcal.now(), location=_working(haimen, lon + 0.0002, lat))  # ~19 m east
    assert hot.merged_into == insp_case and hot.state == "merged"


def test_asset_problem_snaps_to_nearest_asset(client, make_inspector, engine, haimen):
    _, h = make_inspector()
    lon, lat = spot()
    p = _working(haimen, lon, lat)
    seq = np.random.default_rng().integers(100000, 999999)
    near, far, other = f"3206140101{seq:06d}", f"3206140101{(seq + 1) % 1000000:06d}", f"3206140102{seq:06d}"
    with engine.begin() as conn:
        for code, cls, dx in ((near, "0101", 9.0), (far, "0101", 14.0), (other, "0102", 3.0)):
            conn.execute(text("""INSERT INTO asset (city_id, code, class_code, name, geom, geom_kind, synthetic)
                                 VALUES (:c, :code, :cls, 'test manhole', ST_SetSRID(ST_MakePoint(:x, :y), :s),
                                         'point', true)"""),
                         {"c": haimen.id, "code": code, "cls": cls, "x": p.x + dx, "y": p.y, "s": haimen.srid})
    r = post(client, h, [("a.jpg", jpeg(31))], lon=lon, lat=lat, accuracy=3, category_code="010102")
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["asset"]["code"] == near and out["asset"]["distance_m"] == pytest.approx(9.0, abs=0.05)
    assert out["location"]["source"] == "asset"
    with engine.connect() as c:
        d, aid = c.execute(text("""SELECT ST_Distance(cf.location, a.geom), cf.asset_id FROM case_file cf
                                   JOIN asset a ON a.code = :code WHERE cf.id = :i"""),
                           {"code": near, "i": out["case"]["id"]}).one()
    assert d == pytest.approx(0, abs=1e-6) and aid is not None
    # Nothing of the class within 15 m: no asset, the device point stays.
    r = post(client, h, [("a.jpg", jpeg(32))], lon=lon, lat=lat + 0.001, accuracy=3, category_code="010102")
    assert r.json()["asset"] is None and r.json()["location"]["source"] == "device"
    # Named asset of another class: refused.
    r = post(client, h, [("a.jpg", jpeg(33))], lon=lon, lat=lat, accuracy=3, category_code="010102", asset_code=other)
    assert r.status_code == 422 and "class 0102" in r.json()["detail"]


def test_json_report_without_photos(client, make_inspector, engine):
    _, h = make_inspector()
    lon, lat = spot()
    key = uuid.uuid4().hex
    body = {"category_code": "E50201", "lon": lon, "lat": lat, "accuracy": 6}
    r1 = client.post("/api/v1/reports/json", json=body, headers={**h, "Idempotency-Key": key})
    r2 = client.post("/api/v1/reports/json", json=body, headers={**h, "Idempotency-Key": key})
    assert r1.status_code == 201 and r2.status_code == 200 and r2.json() == r1.json()
    assert "no_photos" in r1.json()["flags"] and r1.json()["photos"] == []
    assert r1.json()["cell_code"].startswith("320614")
    r = client.post("/api/v1/reports/json", json={**body, "lon": 116.4, "lat": 39.9}, headers=h)
    assert r.status_code == 422 and "outside the city" in r.json()["detail"]
    r = client.post("/api/v1/reports/json", json={"lon": lon}, headers=h)
    assert r.status_code == 422 and "category_code" in r.json()["detail"]
