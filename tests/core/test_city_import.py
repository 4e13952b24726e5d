"""City boundaries and grids from GIS files: CRSs, irregular grids, and bad input (nothing half-written)."""

from __future__ import annotations

import io
import json
import zipfile

import geopandas as gpd
import numpy as np
import pytest
import shapely
from sqlalchemy import text

from gis import crs as gcrs
from tests.conftest import SHARED, auth

HAIMEN = SHARED / "haimen" / "haimen_boundary_gcj02.geojson"


def _square_geojson(lon, lat, d=0.02, crs_note=None) -> bytes:
    poly = shapely.box(lon, lat, lon + d, lat + d)
    return json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "t"}, "geometry": shapely.geometry.mapping(poly)}]}).encode()


def _cities(engine) -> int:
    with engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM city")).scalar_one()


def test_haimen_boundary_converted_from_gcj02(engine, haimen):
    """The stored boundary is the GCJ-02 file converted back to WGS-84 (not left a few hundred metres off)."""
    raw = shapely.geometry.shape(json.loads(HAIMEN.read_text())["features"][0]["geometry"])
    expected = gcrs.transform_geometry(raw, "GCJ-02", "EPSG:4326")
    with engine.connect() as c:
        wkb = c.execute(text("SELECT ST_AsBinary(ST_Transform(boundary, 4326)) FROM city WHERE slug='haimen'")).scalar_one()
    stored = shapely.from_wkb(bytes(wkb))
    assert shapely.hausdorff_distance(stored, expected) < 1e-7
    # The GCJ-02 offset here is several hundred metres: an unconverted import would be far off.
    assert shapely.hausdorff_distance(raw, expected) > 0.002


def test_upload_city_geojson_gcj02_and_bd09(client, tokens, engine):
    admin = auth(tokens["admin"])
    for slug, crs in (("t-gcj", "GCJ-02"), ("t-bd", "BD-09"), ("t-wgs", None), ("t-cgcs", "EPSG:4490")):
        body = _square_geojson(121.30, 31.95, 0.01)
        r = client.post("/api/v1/admin/cities", headers=admin,
                        data={"slug": slug, "name": "测试城", "adcode": "320699", **({"crs": crs} if crs else {})},
                        files={"file": ("b.geojson", body, "application/geo+json")})
        assert r.status_code == 201, r.text
        assert r.json()["working_crs"] == "EPSG:4549"
    with engine.connect() as c:
        got = dict(c.execute(text("""SELECT slug, ST_AsBinary(ST_Transform(boundary, 4326)) FROM city
                                     WHERE slug LIKE 't-%'""")).all())
    square = shapely.box(121.30, 31.95, 121.31, 31.96)
    for slug, crs in (("t-gcj", "GCJ-02"), ("t-bd", "BD-09")):
        want = gcrs.transform_geometry(square, crs, "EPSG:4326")
        assert shapely.hausdorff_distance(shapely.from_wkb(bytes(got[slug])), want) < 1e-7
    assert shapely.hausdorff_distance(shapely.from_wkb(bytes(got["t-wgs"])), square) < 1e-7


def test_upload_city_geopackage_and_zipped_shapefile(client, tokens, tmp_path):
    admin = auth(tokens["admin"])
    frame = gpd.GeoDataFrame({"name": ["示例"]}, geometry=[shapely.box(24.93, 60.16, 24.96, 60.18)], crs="EPSG:4326")
    frame.to_file(tmp_path / "b.gpkg", driver="GPKG")
    frame.to_crs(3067).to_file(tmp_path / "b.shp", encoding="utf-8")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for ext in ("shp", "shx", "dbf", "prj", "cpg"):
            if (tmp_path / f"b.{ext}").exists():
                z.write(tmp_path / f"b.{ext}", f"b.{ext}")
    for slug, name, data in (("t-gpkg", "b.gpkg", (tmp_path / "b.gpkg").read_bytes()),
                             ("t-shp", "b.zip", buf.getvalue())):
        r = client.post("/api/v1/admin/cities", headers=admin, data={"slug": slug, "name": "Helsinki", "adcode": "999001"},
                        files={"file": (name, data)})
        assert r.status_code == 201, r.text
        assert r.json()["working_crs"] == "EPSG:32635"  # outside China: the UTM zone


@pytest.mark.parametrize("name,data,fields,status,word", [
    ("b.geojson", json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
     "geometry": {"type": "Point", "coordinates": [121.3, 31.9]}}]}).encode(), {}, 422, "polygon"),
    ("b.geojson", json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
     "geometry": {"type": "Polygon", "coordinates": [[[121.3, 31.9], [121.4, 32.0], [121.4, 31.9], [121.3, 32.0],
                                                      [121.3, 31.9]]]}}]}).encode(), {}, 422, "invalid"),
    ("b.geojson", b"{not json", {}, 422, "cannot read"),
    ("b.geojson", json.dumps({"type": "FeatureCollection", "features": []}).encode(), {}, 422, "no features"),
    ("b.txt", b"hello", {}, 415, "unsupported"),
    ("b.zip", b"PK\x03\x04garbage", {}, 422, "zip"),
    ("b.geojson", _square_geojson(121.3, 31.9), {"crs": "EPSG:0"}, 422, "CRS"),
    ("b.geojson", _square_geojson(121.3, 31.9), {"adcode": "12"}, 422, "adcode"),
    ("b.geojson", _square_geojson(121.3, 31.9), {"slug": "haimen"}, 409, "exists"),
    ("b.geojson", json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
     "geometry": {"type": "Polygon", "coordinates": [[[31.9, 121.3], [32.0, 121.3], [32.0, 121.4], [31.9, 121.3]]]}}]}).encode(),
     {}, 422, "lon/lat"),
])
def test_bad_boundaries_write_nothing(client, tokens, engine, name, data, fields, status, word):
    before = _cities(engine)
    form = {"slug": "t-bad", "name": "坏", "adcode": "320698", **fields}
    r = client.post("/api/v1/admin/cities", headers=auth(tokens["admin"]), data=form, files={"file": (name, data)})
    assert r.status_code == status, r.text
    assert word.lower() in json.dumps(r.json(), ensure_ascii=False).lower(), r.json()
    assert _cities(engine) == before


def test_zip_bomb_refused(client, tokens, engine):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("b.geojson", b" " * (600 * 1024 * 1024))
    before = _cities(engine)
    r = client.post("/api/v1/admin/cities", headers=auth(tokens["admin"]),
                    data={"slug": "t-bomb", "name": "x", "adcode": "320697"}, files={"file": ("b.zip", buf.getvalue())})
    assert r.status_code == 422 and "unpacks" in r.json()["detail"]
    assert _cities(engine) == before


def test_imported_irregular_grid_snaps_like_generated(client, tokens, engine, tmp_path):
    """An official irregular grid (polygons + codes) works like the generated one: snapping and cells."""
    admin = auth(tokens["admin"])
    r = client.post("/api/v1/admin/cities", headers=admin, files={"file": ("b.geojson", _square_geojson(121.40, 31.90, 0.02))},
                    data={"slug": "t-irr", "name": "不规则", "adcode": "320614"})
    assert r.status_code == 201
    # Irregular cells: a Voronoi tessellation of 40 random seeds over the square, in GCJ-02 as a city would send it.
    rng = np.random.default_rng(3)
    square = shapely.box(121.40, 31.90, 121.42, 31.92)
    seeds = shapely.points(rng.uniform(121.40, 121.42, 40), rng.uniform(31.90, 31.92, 40))
    cells = shapely.intersection(shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=square)), square)
    codes = [f"320614001900{i + 1:03d}" for i in range(len(cells))]
    gcj = gcrs.transform_geometry(np.asarray(cells), "EPSG:4326", "GCJ-02")
    gpd.GeoDataFrame({"BGID": codes}, geometry=list(gcj), crs="EPSG:4326").to_file(tmp_path / "grid.geojson", driver="GeoJSON")
    r = client.post("/api/v1/admin/cities/t-irr/grids", headers=admin,
                    data={"code_field": "BGID", "crs": "GCJ-02", "activate": "true"},
                    files={"file": ("grid.geojson", (tmp_path / "grid.geojson").read_bytes())})
    assert r.status_code == 201, r.text
    lon, lat = rng.uniform(121.395, 121.425, 2000), rng.uniform(31.895, 31.925, 2000)
    out = client.post("/api/v1/snap?city=t-irr", json={"points": np.column_stack([lon, lat]).tolist()},
                      headers=auth(tokens["inspector"])).json()["cells"]
    for i, cell in enumerate(out):
        p = shapely.Point(lon[i], lat[i])
        holders = [codes[j] for j, c in enumerate(cells) if c.covers(p)]
        if holders:
            assert cell["code"] in holders
        else:
            assert cell == {"code": None, "reason": "outside the city"}
    f = client.get(f"/api/v1/cells/{codes[0]}?city=t-irr", headers=admin).json()
    assert shapely.hausdorff_distance(shapely.geometry.shape(f["geometry"]), cells[0]) < 1e-7
    assert f["properties"]["col"] is None and f["properties"]["grid_kind"] == "imported"
    # Bulk snapping in PostGIS gives the same cells.
    with engine.begin() as c:
        c.execute(text("CREATE TEMP TABLE bp (id int PRIMARY KEY, geom geometry, cell_id bigint)"))
        c.execute(text("""INSERT INTO bp SELECT i, ST_Transform(ST_SetSRID(ST_MakePoint(x, y), 4326), 4549)
                          FROM unnest(CAST(:x AS float8[]), CAST(:y AS float8[])) WITH ORDINALITY t(x, y, i)"""),
                  {"x": lon.tolist(), "y": lat.tolist()})
        from layers.core.city import get_city
        from layers.core.grid import active_grid, bulk_snap_table
        bulk_snap_table(c, active_grid(c, get_city(c, "t-irr")), "bp")
        got = dict(c.execute(text("SELECT bp.id - 1, gc.code FROM bp JOIN grid_cell gc ON gc.id = bp.cell_id")).all())
    assert got == {i: cell["code"] for i, cell in enumerate(out) if cell["code"]}


def test_bad_grid_files(client, tokens, tmp_path):
    admin = auth(tokens["admin"])
    poly = shapely.box(121.40, 31.90, 121.41, 31.91)
    for codes, word in ((["12ab"], "invalid cell code"), (["320614001900001", "320614001900001"], "occurs 2 times")):
        gpd.GeoDataFrame({"code": codes}, geometry=[poly] * len(codes), crs="EPSG:4326").to_file(tmp_path / "g.geojson")
        r = client.post("/api/v1/admin/cities/haimen/grids", headers=admin,
                        files={"file": ("g.geojson", (tmp_path / "g.geojson").read_bytes())})
        assert r.status_code == 422 and word in r.json()["detail"], r.text
    r = client.post("/api/v1/admin/cities/haimen/grids", headers=admin, data={"code_field": "nope"},
                    files={"file": ("g.geojson", (tmp_path / "g.geojson").read_bytes())})
    assert r.status_code == 422 and "no field 'nope'" in r.json()["detail"]
    assert client.post("/api/v1/admin/cities/nowhere/grids", headers=admin,
                       files={"file": ("g.geojson", b"{}")}).status_code == 404


def test_working_crs_override(client, tokens, engine):
    r = client.post("/api/v1/admin/cities", headers=auth(tokens["admin"]),
                    files={"file": ("b.geojson", _square_geojson(121.50, 31.95, 0.01))},
                    data={"slug": "t-epsg", "name": "测", "adcode": "320614", "working_epsg": "4550", "cell_size": "250"})
    assert r.status_code == 201 and r.json()["working_crs"] == "EPSG:4550"
    with engine.connect() as c:
        srids, sizes = c.execute(text("""SELECT array_agg(DISTINCT ST_SRID(gc.geom)), array_agg(DISTINCT g.cell_size)
            FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id JOIN city ON city.id = g.city_id
            WHERE city.slug = 't-epsg'""")).one()
    assert srids == [4550] and sizes == [250.0]
