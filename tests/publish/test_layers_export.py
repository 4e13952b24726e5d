"""The layer catalog and exports: every format re-read with pyogrio (GeoParquet with geopandas) and
compared with the database; CRS choices, filters, dated names, bad requests."""

from __future__ import annotations

import csv
import io
import re
import zipfile

import geopandas as gpd
import pyogrio
import pytest
import shapely
from sqlalchemy import text

from gis import crs as gcrs
from tests.conftest import auth

BOX = "121.165,31.885,121.175,31.895"  # the old town centre, ~10 × 12 cells


@pytest.fixture(scope="module")
def h_assets(engine, helsinki):
    """The Helsinki test city with the real OSM import (points, lines, polygons)."""
    from layers.assets.imports import import_assets
    from tests.assets.conftest import HELSINKI
    from tests.assets.test_asset_import import MAPPING

    with engine.begin() as conn:
        import_assets(conn, helsinki, HELSINKI, MAPPING, actor="test")
    return helsinki


def _db_cells(engine, srid_out: int, codes=None, box=BOX):
    x0, y0, x1, y1 = map(float, box.split(","))
    with engine.connect() as c:
        rows = c.execute(text(f"""
            SELECT gc.code, ST_AsBinary(ST_Transform(gc.geom, {srid_out})), gc.area_m2, com.code
            FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id AND g.active
            JOIN city ON city.id = g.city_id AND city.slug = 'haimen'
            LEFT JOIN admin_area com ON com.id = gc.area_id
            WHERE ST_Intersects(gc.geom, ST_Transform(ST_Segmentize(ST_MakeEnvelope(:x0, :y0, :x1, :y1, 4326), 0.0005), 4549))
        """), dict(x0=x0, y0=y0, x1=x1, y1=y1)).all()
    return {r[0]: (shapely.from_wkb(bytes(r[1])), r[2], r[3]) for r in rows}


def _download(client, url, params, headers=None, status=200):
    r = client.get(url, params=params, headers=headers or {})
    assert r.status_code == status, r.text[:500]
    return r


def _name(r) -> str:
    m = re.search(r'filename="?([^";]+)"?', r.headers["content-disposition"])
    return m.group(1)


def test_catalog_public_and_full(client, planner_h):
    anon = client.get("/api/v1/layers").json()
    names = {la["name"]: la for la in anon["layers"]}
    assert {"grid_cells", "admin_areas", "assets"} <= set(names)
    assert names["assets"]["form"] == "public"
    assert "dept_code1" not in [f["name"] for f in names["assets"]["fields"]]
    assert set(anon["formats"]) == {"gpkg", "geojson", "shp", "csv", "kml", "fgb", "parquet"}
    full = {la["name"]: la for la in client.get("/api/v1/layers", headers=planner_h).json()["layers"]}
    assert full["assets"]["form"] == "full"
    assert "dept_code1" in [f["name"] for f in full["assets"]["fields"]]
    assert full["grid_cells"]["geometry_type"] == "MultiPolygon"


@pytest.mark.parametrize("fmt", ["gpkg", "geojson", "fgb", "csv"])
def test_grid_export_4490_reread(client, engine, planner_h, fmt, tmp_path):
    r = _download(client, "/api/v1/layers/grid_cells/export", {"format": fmt, "crs": "EPSG:4490", "bbox": BOX},
                  planner_h)
    name = _name(r)
    assert re.fullmatch(r"haimen_grid_cells_\d{8}_EPSG4490\." + {"csv": "csv"}.get(fmt, fmt), name), name
    path = tmp_path / name
    path.write_bytes(r.content)
    kw = {"layer": "grid_cells"} if fmt == "gpkg" else {}
    df = pyogrio.read_dataframe(path, **kw)
    db = _db_cells(engine, 4490)
    assert len(df) == len(db) > 100
    assert set(df["code"]) == set(db)
    if fmt != "csv":
        assert df.crs.to_epsg() == 4490
    for code, g, area, comm in zip(df["code"], df.geometry, df["area_m2"], df["community_code"], strict=True):
        dg, darea, dcomm = db[code]
        tol = 1e-9 if fmt != "csv" else 1e-7
        assert shapely.hausdorff_distance(g, dg) < tol
        assert float(area) == pytest.approx(darea)
        assert comm == dcomm
    assert int(r.headers["x-feature-count"].split("=")[1]) == len(db)


def test_grid_export_whole_streams_in_batches(client, engine, planner_h, tmp_path):
    """The whole 115k-cell grid (several batches of the server-side cursor) to GPKG in the working CRS."""
    r = _download(client, "/api/v1/layers/grid_cells/export", {"format": "gpkg", "crs": "EPSG:4549"}, planner_h)
    p = tmp_path / _name(r)
    p.write_bytes(r.content)
    info = pyogrio.read_info(p, layer="grid_cells")
    with engine.connect() as c:
        n, area = c.execute(text("""SELECT count(*), sum(gc.area_m2) FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id
                                    AND g.active JOIN city ON city.id = g.city_id AND city.slug = 'haimen'""")).one()
    assert info["features"] == n > 100_000
    df = pyogrio.read_dataframe(p, layer="grid_cells", columns=["code"], read_geometry=True)
    assert df["code"].is_unique
    assert df.geometry.area.sum() == pytest.approx(area, rel=1e-9)


def test_assets_shapefile_4490_chinese_and_short_names(client, engine, planner_h, h_assets, tmp_path):
    r = _download(client, "/api/v1/layers/assets/export", {"format": "shp", "crs": "EPSG:4490", "city": h_assets.slug},
                  planner_h)
    assert _name(r).endswith("_EPSG4490.zip")
    z = zipfile.ZipFile(io.BytesIO(r.content))
    names = z.namelist()
    for kind in ("point", "line", "polygon"):
        for ext in ("shp", "shx", "dbf", "prj", "cpg"):
            assert f"assets_{kind}.{ext}" in names, names
    assert z.read("assets_point.cpg").decode().strip().upper() in ("UTF-8", "UTF8")
    z.extractall(tmp_path)
    with engine.connect() as c:
        db = {r[0]: r[1:] for r in c.execute(text("""
            SELECT a.code, ST_AsBinary(ST_Transform(a.geom, 4490)), a.class_code, a.name, a.cell_code, k.name
            FROM asset a JOIN asset_class k ON k.city_id IS NULL AND k.kind = 'component' AND k.code = a.class_code
            WHERE a.city_id = :c AND a.retired_at IS NULL"""), {"c": h_assets.id}).all()}
    seen = 0
    for kind in ("point", "line", "polygon"):
        df = pyogrio.read_dataframe(tmp_path / f"assets_{kind}.shp")
        assert df.crs.to_epsg() == 4490
        assert all(len(c) <= 10 for c in df.columns if c != "geometry")
        assert len({c.lower() for c in df.columns}) == len(df.columns)
        for _, row in df.iterrows():
            g, cls, name, cell, cls_name = db[row["code"]]
            assert row["class_code"] == cls and row["cell_code"] == cell
            assert row["class_name"] == cls_name  # Chinese survives (UTF-8 .cpg)
            assert (row["name"] if isinstance(row["name"], str) else None) == name
            assert shapely.hausdorff_distance(row.geometry, shapely.from_wkb(bytes(g))) < 1e-9
            seen += 1
    assert seen == len(db) > 2500


def test_shp_field_names():
    from layers.publish.export import shp_field_names

    got = shp_field_names(["community_code", "community_name", "community", "COMMUNITY_", "dept_code1", "a"])
    assert all(len(n) <= 10 for n in got)
    assert len({n.lower() for n in got}) == len(got)
    assert got[0] == "community_" and got[2] == "community" and got[4] == "dept_code1"


def test_assets_public_form_has_no_department_fields(client, h_assets, tmp_path):
    r = _download(client, "/api/v1/layers/assets/export", {"format": "geojson", "crs": "EPSG:4326",
                                                          "city": h_assets.slug, "class": "0107"})
    p = tmp_path / _name(r)
    p.write_bytes(r.content)
    df = pyogrio.read_dataframe(p)
    assert not {"dept_code1", "dept_code2", "dept_code3"} & set(df.columns)
    assert set(df["class_code"]) == {"0107"} and len(df) > 300


@pytest.mark.parametrize("fmt", ["kml", "parquet", "gpkg"])
def test_asset_class_layer_formats(client, engine, planner_h, h_assets, tmp_path, fmt):
    crs = "EPSG:4326"
    r = _download(client, "/api/v1/layers/asset_0401/export", {"format": fmt, "crs": crs, "city": h_assets.slug},
                  planner_h)
    p = tmp_path / _name(r)
    p.write_bytes(r.content)
    df = gpd.read_parquet(p) if fmt == "parquet" else pyogrio.read_dataframe(p)
    with engine.connect() as c:
        db = dict(c.execute(text("""SELECT code, ST_AsBinary(ST_Transform(geom, 4326)) FROM asset
                                    WHERE city_id = :c AND class_code = '0401' AND retired_at IS NULL"""),
                            {"c": h_assets.id}).all())
    assert len(df) == len(db) > 300
    assert df.crs.to_epsg() == 4326
    for code, g in zip(df["code"], df.geometry, strict=True):
        assert shapely.from_wkb(bytes(db[code])).distance(shapely.force_2d(g)) < 1e-9


def test_gcj02_export_converts_back(client, engine, planner_h, tmp_path):
    r = _download(client, "/api/v1/layers/grid_cells/export", {"format": "geojson", "crs": "GCJ-02", "bbox": BOX},
                  planner_h)
    assert _name(r).endswith("_GCJ02.geojson")
    p = tmp_path / "g.geojson"
    p.write_bytes(r.content)
    df = pyogrio.read_dataframe(p)
    db = _db_cells(engine, 4326)
    for code, g in zip(df["code"], df.geometry, strict=True):
        back = gcrs.transform_geometry(g, "GCJ-02", "EPSG:4326")
        assert shapely.hausdorff_distance(back, db[code][0]) < 1e-7
        assert shapely.hausdorff_distance(g, db[code][0]) > 1e-3  # really shifted


def test_filters(client, engine, planner_h, h_assets, tmp_path):
    def codes(params, layer="assets"):
        r = _download(client, f"/api/v1/layers/{layer}/export", {"format": "geojson", **params}, planner_h)
        p = tmp_path / "f.geojson"
        p.write_bytes(r.content)
        return set(pyogrio.read_dataframe(p)["code"]) if r.content.count(b'"Feature"') else set()

    city = {"city": h_assets.slug}
    with engine.connect() as c:
        cell = c.execute(text("SELECT cell_code FROM asset WHERE city_id = :c GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"),
                         {"c": h_assets.id}).scalar_one()
        in_cell = set(c.execute(text("SELECT code FROM asset WHERE city_id = :c AND cell_code = :cell"),
                                {"c": h_assets.id, "cell": cell}).scalars())
        big04 = set(c.execute(text("SELECT code FROM asset WHERE city_id = :c AND class_code LIKE '04%'"),
                              {"c": h_assets.id}).scalars())
        box_codes = set(c.execute(text("""SELECT code FROM asset WHERE city_id = :c AND ST_Intersects(geom,
                        ST_Transform(ST_MakeEnvelope(24.940, 60.168, 24.944, 60.171, 4326), :srid))"""),
                                  {"c": h_assets.id, "srid": h_assets.srid}).scalars())
    assert codes({**city, "area": cell}) == in_cell
    assert codes({**city, "class": "04"}) == big04
    assert codes({**city, "bbox": "24.940,60.168,24.944,60.171"}) == box_codes
    assert codes({**city, "since": "2000-01-01", "class": "04"}) == big04
    assert codes({**city, "until": "2000-01-01"}) == set()
    # the admin-area filter on the grid: a street's cells
    r = client.get("/api/v1/layers/grid_cells/export", params={"format": "csv", "area": "320614001", "bbox": BOX},
                   headers=planner_h)
    assert r.status_code == 200
    got = {row["code"] for row in csv.DictReader(io.StringIO(r.content.decode("utf-8")))}
    want = {c for c in _db_cells(engine, 4326) if c.startswith("320614001")}
    assert got == want and len(want) > 10


BAD = [
    ({"format": "dwg"}, 422, "unknown format"),
    ({"format": "kml", "crs": "EPSG:4490"}, 422, "KML"),
    ({"crs": "mars"}, 422, "CRS"),
    ({"bbox": "1,2,3"}, 422, "bbox"),
    ({"bbox": "121.2,31.9,121.1,31.8"}, 422, "bbox"),
    ({"class": "01' OR '1'='1"}, 422, "class"),
    ({"area": "320614; DROP TABLE grid_cell"}, 422, "area"),
    ({"since": "yesterday"}, 422, "since"),
    ({"since": "2020-01-01"}, 422, "no time field"),
]


@pytest.mark.parametrize("params,status,word", BAD)
def test_bad_export_requests(client, planner_h, params, status, word):
    r = client.get("/api/v1/layers/grid_cells/export", params=params, headers=planner_h)
    assert r.status_code == status, r.text
    assert word.lower() in r.json()["detail"].lower()


def test_unknown_layer_and_private_layer(client, tokens):
    from layers.publish import catalog as lcat

    assert client.get("/api/v1/layers/nope/export").status_code == 404
    assert client.get("/api/v1/layers/asset_9999/export").status_code == 404
    secret = lcat.register(lcat.Layer(
        name="test_private_cells", title="测试", title_en="Test private", theme="test", geometry_type="MultiPolygon",
        sql="SELECT c.id AS fid, c.code, c.geom FROM grid_cell c JOIN grid g ON g.id = c.grid_id AND g.active "
            "AND g.city_id = :city_id", fields=(lcat.Field("code", "str"),), roles=frozenset({"supervisor"})))
    try:
        p = {"format": "geojson", "bbox": BOX}
        assert client.get(f"/api/v1/layers/{secret.name}/export", params=p).status_code == 401
        assert client.get(f"/api/v1/layers/{secret.name}/export", params=p,
                          headers=auth(tokens["planner"])).status_code == 403
        r = client.get(f"/api/v1/layers/{secret.name}/export", params=p, headers=auth(tokens["supervisor"]))
        assert r.status_code == 200 and b"FeatureCollection" in r.content
        names = [la["name"] for la in client.get("/api/v1/layers").json()["layers"]]
        assert secret.name not in names
    finally:
        lcat._REGISTRY.pop(secret.name, None)


def test_theme_multilayer_gpkg(client, planner_h, tmp_path):
    r = _download(client, "/api/v1/themes/base/export", {"format": "gpkg", "bbox": BOX}, planner_h)
    assert re.fullmatch(r"haimen_theme_base_\d{8}_EPSG4490\.gpkg", _name(r))
    p = tmp_path / "t.gpkg"
    p.write_bytes(r.content)
    layers = {str(n) for n, _ in pyogrio.list_layers(p)}
    assert layers == {"grid_cells", "admin_areas"}
    assert len(pyogrio.read_dataframe(p, layer="admin_areas")) >= 2
    assert client.get("/api/v1/themes/nope/export").status_code == 404


@pytest.mark.parametrize("fmt", ["gpkg", "geojson", "shp", "csv", "fgb", "parquet"])
def test_empty_export_is_a_valid_empty_file(client, planner_h, fmt, tmp_path):
    r = _download(client, "/api/v1/layers/grid_cells/export", {"format": fmt, "bbox": "0,0,1,1"}, planner_h)
    assert r.headers["x-feature-count"] == "grid_cells=0"
    p = tmp_path / _name(r)
    p.write_bytes(r.content)
    if fmt == "parquet":
        assert len(gpd.read_parquet(p)) == 0
    elif fmt == "shp":
        names = zipfile.ZipFile(p).namelist()
        assert "grid_cells.shp" in names and "grid_cells.cpg" in names
    else:
        assert len(pyogrio.read_dataframe(p)) == 0


def test_background_export_job_with_progress(client, engine, planner_h, tokens, tmp_path):
    import time

    r = client.post("/api/v1/layers/grid_cells/export-jobs", params={"format": "fgb", "crs": "EPSG:4490"},
                    headers=planner_h)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["total"] > 100_000 and job["status"] in ("running", "done")
    seen = []
    for _ in range(600):
        st = client.get(job["status_url"], headers=planner_h).json()
        seen.append(st["rows"])
        if st["status"] != "running":
            break
        time.sleep(0.05)
    assert st["status"] == "done", st
    assert st["rows"] == st["total"] == job["total"] and st["percent"] == 100.0
    assert seen == sorted(seen)  # progress only grows
    # another user cannot see it; the owner downloads it
    assert client.get(job["status_url"], headers=auth(tokens["admin"])).status_code == 404
    f = client.get(job["file_url"], headers=planner_h)
    assert f.status_code == 200 and _name(f).endswith("_EPSG4490.fgb")
    p = tmp_path / _name(f)
    p.write_bytes(f.content)
    df = pyogrio.read_dataframe(p, columns=["code"], read_geometry=False)
    assert len(df) == job["total"] and df["code"].is_unique
    # bad requests are refused before any job starts
    r = client.post("/api/v1/layers/grid_cells/export-jobs", params={"format": "dwg"}, headers=planner_h)
    assert r.status_code == 422
    assert client.get("/api/v1/export-jobs/nope", headers=planner_h).status_code == 404
