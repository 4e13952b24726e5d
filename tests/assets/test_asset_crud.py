"""Asset catalogs, 16-digit codes, CRUD with history, and the derived grid cell."""

from __future__ import annotations

import pytest
import shapely
from sqlalchemy import text

from gis import crs as gcrs
from tests.conftest import count


def _cell_of(engine, lon, lat):
    """Independent: the Haimen cell whose polygon covers the point, by a PostGIS join."""
    x, y = gcrs.transform_xy(lon, lat, "EPSG:4326", "EPSG:4549")
    with engine.connect() as c:
        return c.execute(text("""SELECT gc.code FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id AND g.active
                                 JOIN city ON city.id = g.city_id AND city.slug = 'haimen'
                                 WHERE ST_Covers(gc.geom, ST_SetSRID(ST_MakePoint(:x, :y), 4549))
                                 ORDER BY gc.code LIMIT 1"""), {"x": float(x), "y": float(y)}).scalar()


def test_catalogs(client):
    comp = client.get("/api/v1/asset-classes").json()["big_classes"]
    names = [b["name"] for b in comp]
    assert names == ["公用设施", "道路交通", "市容环境", "园林绿化", "房屋土地", "其他设施", "扩展部件"]
    first = comp[0]
    assert first["code"] == "01" and first["official"]
    small = {c["code"]: c for c in first["classes"]}
    assert small["0101"]["name"] == "上水井盖" and small["0101"]["official"]
    assert small["0102"]["name"] == "污水井盖" and small["0102"]["official"]
    assert not small["0107"]["official"]  # the project's own numbering is labelled as such
    all_small = {c["name"] for b in comp for c in b["classes"]}
    assert {"路灯", "消防栓", "公交站亭", "果皮箱", "公厕", "行道树", "绿地", "座椅"} <= all_small
    ev = client.get("/api/v1/asset-classes", params={"kind": "event"}).json()["big_classes"]
    assert [b["name"] for b in ev] == ["市容环境", "宣传广告", "施工管理", "突发事件", "街面秩序", "扩展事件"]
    ev_small = {c["name"] for b in ev for c in b["classes"]}
    assert {"暴露垃圾", "积存垃圾渣土", "乱张贴小广告", "违章搭建", "无照经营游商", "占道经营", "道路破损"} <= ev_small
    assert client.get("/api/v1/asset-classes", params={"kind": "x"}).status_code == 422


def test_city_catalog_replaces_default(engine, helsinki, tmp_path):
    from layers.assets import registry as la

    p = tmp_path / "cat.csv"
    p.write_text("code,name,name_en,geom_kind,official\n01,公用设施,Utilities,any,true\n0101,上水井盖,Cover,point,true\n",
                 encoding="utf-8")
    with engine.connect() as c:
        tx = c.begin()
        la.load_catalog(c, "component", p, city=helsinki)
        assert list(la.classes(c, helsinki)) == ["01", "0101"]
        tx.rollback()
    bad = tmp_path / "bad.csv"
    bad.write_text("code,name\n0101,x\n", encoding="utf-8")
    with pytest.raises(Exception, match="no big class 01"):
        la.read_catalog_file(bad)


def test_create_read_update_retire_with_history(client, engine, admin_h, dept_h, inspector_h):
    lon, lat = 121.1702, 31.8903
    body = {"class_code": "0101", "geometry": {"type": "Point", "coordinates": [lon, lat]}, "name": "测试上水井盖",
            "dept_code1": "市政工程管理处", "installed_on": "2020-05-01"}
    r = client.post("/api/v1/assets", json=body, headers=admin_h)
    assert r.status_code == 201, r.text
    a = r.json()
    code = a["properties"]["code"]
    assert len(code) == 16 and code.startswith("3206140101")
    assert a["properties"]["cell_code"] == _cell_of(engine, lon, lat)
    assert a["properties"]["class_name"] == "上水井盖" and a["properties"]["big_name"] == "公用设施"
    assert a["properties"]["geom_kind"] == "point" and a["properties"]["version"] == 1
    # the next one of the class gets the next sequence number
    b = client.post("/api/v1/assets", json=body, headers=dept_h).json()["properties"]["code"]
    assert int(b[-6:]) == int(code[-6:]) + 1 and b[:10] == code[:10]

    got = client.get(f"/api/v1/assets/{code}", headers=inspector_h).json()
    assert shapely.geometry.shape(got["geometry"]).distance(shapely.Point(lon, lat)) < 1e-9

    # move it ~1 km east: the derived cell follows the geometry
    lon2 = lon + 0.0105
    r = client.patch(f"/api/v1/assets/{code}", json={"geometry": {"type": "Point", "coordinates": [lon2, lat]},
                                                     "status": "破损", "version": 1}, headers=dept_h)
    assert r.status_code == 200, r.text
    p = r.json()["properties"]
    assert p["cell_code"] == _cell_of(engine, lon2, lat) != a["properties"]["cell_code"]
    assert p["status"] == "破损" and p["version"] == 2
    # a stale version is refused
    r = client.patch(f"/api/v1/assets/{code}", json={"name": "x", "version": 1}, headers=dept_h)
    assert r.status_code == 409 and "version" in r.json()["detail"]
    # the cell is kept right whatever writes the row (a direct SQL update too)
    with engine.begin() as c:
        c.execute(text("UPDATE asset SET geom = ST_Transform(ST_SetSRID(ST_MakePoint(:x, :y), 4326), 4549) "
                       "WHERE code = :code"), {"x": lon, "y": lat, "code": code})
    assert client.get(f"/api/v1/assets/{code}", headers=inspector_h).json()["properties"]["cell_code"] == \
        a["properties"]["cell_code"]

    r = client.post(f"/api/v1/assets/{code}/retire", json={"reason": "道路改造拆除"}, headers=admin_h)
    assert r.status_code == 200 and r.json()["properties"]["status"] == "废弃"
    assert r.json()["properties"]["retired_at"]
    assert client.patch(f"/api/v1/assets/{code}", json={"name": "y"}, headers=admin_h).status_code == 409
    assert client.post(f"/api/v1/assets/{code}/retire", headers=admin_h).status_code == 409

    h = client.get(f"/api/v1/assets/{code}/history", headers=inspector_h).json()["history"]
    assert [e["action"] for e in h] == ["create", "update", "retire"]
    assert all(e["actor"] == "test_admin (admin)" for e in (h[0], h[2])) and h[1]["actor"].startswith("test_department")
    assert h[1]["changes"]["status"] == ["完好", "破损"]
    assert h[1]["changes"]["cell_code"] == [a["properties"]["cell_code"], p["cell_code"]]
    assert "geometry" in h[1]["changes"]
    assert h[2]["changes"]["reason"] == "道路改造拆除"
    # history is append-only
    with engine.connect() as c, pytest.raises(Exception, match="append-only"):
        c.execute(text("UPDATE asset_history SET actor = 'x'"))

    listed = client.get("/api/v1/assets", params={"class": "0101", "limit": 5000}, headers=inspector_h).json()
    assert code not in [f["id"] for f in listed["features"]] and b in [f["id"] for f in listed["features"]]
    listed = client.get("/api/v1/assets", params={"class": "0101", "include_retired": True, "limit": 5000},
                        headers=inspector_h).json()
    assert code in [f["id"] for f in listed["features"]]


def test_lines_and_polygons_get_length_area_in_working_crs(client, admin_h, engine):
    line = {"type": "LineString", "coordinates": [[121.17, 31.89], [121.175, 31.89]]}
    r = client.post("/api/v1/assets", json={"class_code": "0206", "geometry": line}, headers=admin_h)
    assert r.status_code == 201, r.text
    p = r.json()["properties"]
    x, y = gcrs.transform_xy([121.17, 121.175], [31.89, 31.89], "EPSG:4326", "EPSG:4549")
    assert p["length_m"] == pytest.approx(float(((x[1] - x[0]) ** 2 + (y[1] - y[0]) ** 2) ** 0.5), rel=1e-6)
    poly = {"type": "Polygon", "coordinates": [[[121.17, 31.89], [121.171, 31.89], [121.171, 31.891],
                                                [121.17, 31.891], [121.17, 31.89]]]}
    r = client.post("/api/v1/assets", json={"class_code": "0402", "geometry": poly, "name": "绿地"}, headers=admin_h)
    p = r.json()["properties"]
    ring = shapely.Polygon(poly["coordinates"][0])
    assert p["area_m2"] == pytest.approx(gcrs.transform_geometry(ring, "EPSG:4326", "EPSG:4549").area, rel=1e-6)
    assert p["geom_kind"] == "polygon" and p["length_m"] is None


def test_gcj02_input(client, admin_h, engine):
    lon, lat = 121.18, 31.90
    glon, glat = gcrs.wgs84_to_gcj02(lon, lat)
    r = client.post("/api/v1/assets", json={"class_code": "0107", "crs": "GCJ-02",
                                            "geometry": {"type": "Point", "coordinates": [float(glon), float(glat)]}},
                    headers=admin_h)
    assert r.status_code == 201
    g = shapely.geometry.shape(r.json()["geometry"])
    assert abs(g.x - lon) < 1e-7 and abs(g.y - lat) < 1e-7
    assert r.json()["properties"]["cell_code"] == _cell_of(engine, lon, lat)


BAD = [
    ({"class_code": "9999", "geometry": {"type": "Point", "coordinates": [121.17, 31.89]}}, 422, "unknown component class"),
    ({"class_code": "01", "geometry": {"type": "Point", "coordinates": [121.17, 31.89]}}, 422, "unknown component class"),
    ({"class_code": "0101", "geometry": {"type": "LineString", "coordinates": [[121.17, 31.89], [121.18, 31.89]]}},
     422, "takes point"),
    ({"class_code": "0101", "geometry": {"type": "Point", "coordinates": [116.4, 39.9]}}, 422, "outside"),
    ({"class_code": "0101", "geometry": {"type": "Point", "coordinates": [31.89, 121.17]}}, 422, "swapped"),
    ({"class_code": "0101", "geometry": {"type": "Pointy", "coordinates": [1, 2]}}, 422, "geometry"),
    ({"class_code": "0101", "geometry": {"type": "Point", "coordinates": [121.17, 31.89]}, "status": "坏了"}, 422, "status"),
    ({"class_code": "0101", "geometry": {"type": "Point", "coordinates": [121.17, 31.89]}, "name": "x" * 5000}, 422, "name"),
    ({"class_code": "0101", "geometry": {"type": "Point", "coordinates": [121.17, 31.89]}, "installed_on": "soon"},
     422, "installed_on"),
    ({"class_code": "0101", "geometry": {"type": "Point", "coordinates": [121.17, 31.89]}, "crs": "mars"}, 422, "CRS"),
    ({"class_code": "0101", "geometry": {"type": "Polygon", "coordinates": [[[121.17, 31.89], [121.18, 31.89],
                                                                             [121.18, 31.9], [121.17, 31.89]]]}},
     422, "takes point"),
    ({"class_code": "0402", "geometry": {"type": "Polygon", "coordinates": [[[121.17, 31.89], [121.18, 31.9],
                                                                             [121.18, 31.89], [121.17, 31.9],
                                                                             [121.17, 31.89]]]}}, 422, "invalid"),
    ({"class_code": "01'; DROP TABLE asset; --", "geometry": {"type": "Point", "coordinates": [121.17, 31.89]}}, 422, ""),
]


@pytest.mark.parametrize("body,status,word", BAD)
def test_bad_asset_input_writes_nothing(client, engine, admin_h, body, status, word):
    before = count(engine, "SELECT count(*) FROM asset") + count(engine, "SELECT count(*) FROM asset_history")
    r = client.post("/api/v1/assets", json=body, headers=admin_h)
    assert r.status_code == status, r.text
    assert word.lower() in r.json()["detail"].lower()
    assert count(engine, "SELECT count(*) FROM asset") + count(engine, "SELECT count(*) FROM asset_history") == before


def test_roles_and_codes(client, inspector_h, planner_h):
    body = {"class_code": "0101", "geometry": {"type": "Point", "coordinates": [121.17, 31.89]}}
    assert client.post("/api/v1/assets", json=body, headers=inspector_h).status_code == 403
    assert client.post("/api/v1/assets", json=body).status_code == 401
    assert client.get("/api/v1/assets/123", headers=planner_h).status_code == 422
    assert client.get("/api/v1/assets/3206140101999999", headers=planner_h).status_code == 404
    assert client.patch("/api/v1/assets/3206140101999999", json={"bogus": 1},
                        headers={"Authorization": "Bearer x"}).status_code == 401


def test_cells_follow_a_new_grid(engine):
    """A new active grid (finer cells): the assets' cells are derived again by the database."""
    import uuid

    from layers.assets import registry as la
    from layers.core import city as lcity

    with engine.begin() as c:
        city = lcity.create_city(c, slug=f"rg-{uuid.uuid4().hex[:6]}", name="网格切换测试", adcode="990102",
                                 boundary=shapely.box(24.93, 60.16, 24.95, 60.17), src_crs="EPSG:4326")
        lcity.generate_grid(c, city, size=100.0)
        codes = [la.create_asset(c, city, {"class_code": "0107"},
                                 {"type": "Point", "coordinates": [24.931 + i * 0.0017, 60.1613 + i * 0.0008]},
                                 actor="t")["properties"]["code"] for i in range(10)]
        new_grid = lcity.generate_grid(c, city, size=50.0)

    with engine.connect() as c:
        rows = c.execute(text("""
            SELECT a.code, a.cell_code, gc.grid_id,
                   (SELECT x.code FROM grid_cell x WHERE x.grid_id = :g AND ST_Covers(x.geom, a.geom)
                    ORDER BY x.code LIMIT 1)
            FROM asset a JOIN grid_cell gc ON gc.id = a.cell_id WHERE a.city_id = :c"""),
                         {"c": city.id, "g": new_grid}).all()
    assert sorted(r[0] for r in rows) == sorted(codes)
    assert all(r[2] == new_grid and r[1] == r[3] for r in rows)
    # deleting the city takes its assets, their history and the cached cells with it
    with engine.begin() as c:
        c.execute(text("DELETE FROM city WHERE id = :c"), {"c": city.id})
    assert count(engine, "SELECT count(*) FROM asset WHERE city_id = :c", c=city.id) == 0
    assert count(engine, "SELECT count(*) FROM grid_cell_3857 t LEFT JOIN grid_cell g ON g.id = t.cell_id "
                         "WHERE g.id IS NULL") == 0


def test_cell_updates_keep_the_3857_copy(engine, helsinki):
    with engine.begin() as c:
        cid = c.execute(text("""SELECT gc.id FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id AND g.active
                                AND g.city_id = :c ORDER BY gc.id LIMIT 1"""), {"c": helsinki.id}).scalar_one()
        c.execute(text("UPDATE grid_cell SET responsible = '测试单位' WHERE id = :i"), {"i": cid})
        c.execute(text("UPDATE grid_cell SET geom = ST_Multi(ST_Buffer(geom, -1)) WHERE id = :i"), {"i": cid})
        a, b = c.execute(text("""SELECT ST_Area(ST_Transform(t.geom, :srid)), ST_Area(g.geom) FROM grid_cell_3857 t
                                 JOIN grid_cell g ON g.id = t.cell_id WHERE t.cell_id = :i"""),
                         {"i": cid, "srid": helsinki.srid}).one()
        assert a == pytest.approx(b, rel=1e-6)
        c.rollback()
