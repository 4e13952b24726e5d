"""Imports: the real Helsinki GeoPackage (counts per class and per cell against an independent
computation), re-imports, atomic mode, other formats and bad files."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import shapely
from sqlalchemy import text

from tests.assets.conftest import HELSINKI, HELSINKI_BOX
from tests.conftest import ROOT, count

MAPPING = ROOT / "layers" / "assets" / "data" / "mappings" / "osm_helsinki.json"
# Independent restatement of the mapping's tag rules, in priority order (tag, value, class).
TAGS = [("emergency", "fire_hydrant", "0106"), ("highway", "street_lamp", "0107"), ("highway", "bus_stop", "0201"),
        ("highway", "traffic_signals", "0202"), ("highway", "crossing", "0203"), ("amenity", "bench", "0403"),
        ("amenity", "bicycle_parking", "0204"), ("amenity", "parking", "0205"), ("amenity", "waste_basket", "0302"),
        ("amenity", "waste_disposal", "0303"), ("amenity", "recycling", "0304"), ("amenity", "toilets", "0301"),
        ("amenity", "post_box", "0111"), ("amenity", "fountain", "0404"), ("natural", "tree", "0401"),
        ("man_made", "street_cabinet", "0108"), ("man_made", "utility_pole", "0109"),
        ("man_made", "surveillance", "0110")]
LAYER_CLASS = {"parks": "0402", "landuse": "0501", "roads": "0206"}


def _expected(city_srid: int, cells: dict):
    """Per class and (for facility points) per cell, with geopandas/pyproj/shapely only."""
    to_w = pyproj.Transformer.from_crs(4326, city_srid, always_xy=True)
    by_class: Counter = Counter()
    per_cell: Counter = Counter()
    codes = list(cells)
    tree = shapely.STRtree([cells[c] for c in codes])
    for layer in ("facilities", "parks", "landuse", "roads"):
        df = gpd.read_file(HELSINKI, layer=layer)
        for _, row in df.iterrows():
            if layer == "facilities":
                cls = next((c for tag, val, c in TAGS if row.get(tag) == val), None)
                if cls is None:
                    continue
            else:
                cls = LAYER_CLASS[layer]
            if not shapely.is_valid(row.geometry):
                continue
            # the representative point in the working CRS: the point itself, a line's middle, a polygon's
            # point on surface
            g = shapely.transform(row.geometry, lambda xy: np.column_stack(to_w.transform(xy[:, 0], xy[:, 1])))
            rep = (g if g.geom_type == "Point" else
                   shapely.line_interpolate_point(g, 0.5, normalized=True) if g.geom_type == "LineString"
                   else g.point_on_surface())
            hits = tree.query(rep, predicate="intersects")
            if len(hits) == 0:
                continue
            by_class[cls] += 1
            if layer == "facilities":
                per_cell[codes[min(hits)]] += 1 if len(hits) == 1 else 0
    return by_class, per_cell


def _cells(engine, city):
    with engine.connect() as c:
        rows = c.execute(text("""SELECT gc.code, ST_AsBinary(gc.geom) FROM grid_cell gc
                                 JOIN grid g ON g.id = gc.grid_id AND g.active AND g.city_id = :c"""),
                         {"c": city.id}).all()
    return {r[0]: shapely.from_wkb(bytes(r[1])) for r in rows}


@pytest.fixture(scope="module")
def imported(engine, helsinki):
    from layers.assets.imports import import_assets

    with engine.begin() as conn:
        report = import_assets(conn, helsinki, HELSINKI, MAPPING, actor="test")
    return report


def test_helsinki_import_counts_per_class_and_cell(engine, helsinki, imported):
    t = imported["totals"]
    assert t["read"] == 2486 + 22 + 240 + 725
    assert t["created"] > 2500 and t["created"] + t["rejected"] == t["read"]
    reasons = Counter(r["reason"] for r in imported["rejected"])
    assert reasons["outside the city"] > 50  # the test city's box is smaller than the extract
    cells = _cells(engine, helsinki)
    by_class, per_cell = _expected(helsinki.srid, cells)
    with engine.connect() as c:
        db_class = dict(c.execute(text("SELECT class_code, count(*) FROM asset WHERE city_id = :c GROUP BY 1"),
                                  {"c": helsinki.id}).all())
        db_cell = dict(c.execute(text("""SELECT cell_code, count(*) FROM asset WHERE city_id = :c AND geom_kind = 'point'
                                         GROUP BY 1"""), {"c": helsinki.id}).all())
        no_cell = c.execute(text("SELECT count(*) FROM asset WHERE city_id = :c AND cell_code IS NULL"),
                            {"c": helsinki.id}).scalar_one()
    assert no_cell == 0
    # points: exact; polygons/lines: their representative point (same GEOS rules) decides inside/outside
    assert {k: v for k, v in db_class.items()} == dict(by_class), (db_class, by_class)
    assert db_cell == {k: v for k, v in per_cell.items() if v}
    assert imported["by_class"] == dict(sorted(by_class.items()))
    assert db_class["0107"] > 300 and db_class["0401"] > 300  # street lamps and trees


def test_reimport_updates_not_duplicates(engine, helsinki, imported):
    from layers.assets.imports import import_assets

    n = count(engine, "SELECT count(*) FROM asset WHERE city_id = :c", c=helsinki.id)
    # someone edits one imported lamp's name; the re-import puts the source's value back and records it
    with engine.begin() as c:
        code = c.execute(text("""SELECT code FROM asset WHERE city_id = :c AND class_code = '0107' ORDER BY code LIMIT 1"""),
                         {"c": helsinki.id}).scalar_one()
        c.execute(text("UPDATE asset SET name = 'edited' WHERE city_id = :c AND code = :code"),
                  {"c": helsinki.id, "code": code})
    with engine.begin() as conn:
        again = import_assets(conn, helsinki, HELSINKI, MAPPING, actor="test2")
    assert again["totals"]["created"] == 0
    assert again["totals"]["updated"] == 1
    assert again["totals"]["unchanged"] == imported["totals"]["created"] - 1
    assert count(engine, "SELECT count(*) FROM asset WHERE city_id = :c", c=helsinki.id) == n
    with engine.connect() as c:
        hist = c.execute(text("""SELECT h.actor, h.changes FROM asset_history h JOIN asset a ON a.id = h.asset_id
                                 WHERE a.city_id = :c AND a.code = :code ORDER BY h.id"""),
                         {"c": helsinki.id, "code": code}).all()
    assert [h[0] for h in hist] == ["test", "test2"]
    assert hist[1][1]["name"] == ["edited", None]


def test_atomic_writes_nothing(engine, helsinki, tmp_path):
    from layers.assets.imports import ImportRejected, import_assets

    m = json.loads(MAPPING.read_text())
    m["source"] = "osm-atomic"
    m["layers"] = {"facilities": m["layers"]["facilities"]}
    m["layers"]["facilities"]["class"]["rules"] = m["layers"]["facilities"]["class"]["rules"][:3]
    before = count(engine, "SELECT count(*) FROM asset") + count(engine, "SELECT count(*) FROM asset_history")
    with engine.begin() as conn, pytest.raises(ImportRejected) as err:
        import_assets(conn, helsinki, HELSINKI, m, actor="test", atomic=True)
    rep = err.value.report
    assert not rep["written"] and rep["totals"]["rejected"] > 1000
    assert any(r["reason"].startswith("unknown class") for r in rep["rejected"])
    assert "nothing was written" in str(err.value)
    after = count(engine, "SELECT count(*) FROM asset") + count(engine, "SELECT count(*) FROM asset_history")
    assert after == before
    # without --atomic the valid rows go in and the rest are listed
    with engine.begin() as conn:
        rep = import_assets(conn, helsinki, HELSINKI, m, actor="test")
    assert rep["totals"]["created"] > 0 and rep["totals"]["rejected"] > 1000
    assert set(rep["by_class"]) == {"0106", "0107", "0201"}
    assert count(engine, "SELECT count(*) FROM asset WHERE source = 'osm-atomic:facilities'") == rep["totals"]["created"]


def _subset(tmp_path):
    df = gpd.read_file(HELSINKI, layer="facilities")
    df = df[df["highway"].isin(["street_lamp", "bus_stop"])].head(40).copy()
    df["kind"] = df["highway"]
    df["ref"] = df["id"].astype(str)  # not 'id': KML readers give placemarks an 'id' of their own
    return df[["ref", "name", "kind", "geometry"]]


FMT_MAPPING = {"layers": {"*": {"id": "ref", "columns": {"name": "name"},
                                "class": {"field": "kind", "map": {"street_lamp": "0107", "bus_stop": "0201"}}}}}


@pytest.mark.parametrize("fmt", ["geojson", "shp", "kml", "csv_lonlat", "csv_wkt", "gpkg"])
def test_formats(engine, helsinki, tmp_path, fmt):
    from layers.assets.imports import import_assets

    df = _subset(tmp_path)
    inside = df[df.within(shapely.box(*HELSINKI_BOX))]
    if fmt == "geojson":
        path = tmp_path / "a.geojson"
        df.to_file(path, driver="GeoJSON")
    elif fmt == "gpkg":
        path = tmp_path / "a.gpkg"
        df.to_file(path, layer="lamps", driver="GPKG")
    elif fmt == "kml":
        path = tmp_path / "a.kml"
        df.to_file(path, driver="KML")
    elif fmt == "shp":
        (tmp_path / "shp").mkdir()
        df.to_file(tmp_path / "shp" / "a.shp", engine="pyogrio", encoding="UTF-8")
        path = tmp_path / "a.zip"
        with zipfile.ZipFile(path, "w") as z:
            for p in (tmp_path / "shp").iterdir():
                z.write(p, p.name)
    else:
        path = tmp_path / "a.csv"
        out = df.drop(columns="geometry").copy()
        if fmt == "csv_lonlat":
            out["lon"], out["lat"] = df.geometry.x, df.geometry.y
        else:
            out["WKT"] = df.geometry.to_wkt()
        out.to_csv(path, index=False)
    m = {**copy.deepcopy(FMT_MAPPING), "source": f"fmt-{fmt}"}
    if fmt == "kml":  # GDAL's KML keeps the name as <name>, read back as 'Name'
        m["layers"] = {"*": {**m["layers"]["*"], "columns": {"name": "Name"}}}
    if fmt.startswith("csv"):
        m["crs"] = "EPSG:4326"
        m["layers"]["*"] = {**m["layers"]["*"], "geometry": {"wkt": "WKT"} if fmt == "csv_wkt" else {"lon": "lon", "lat": "lat"}}
    with engine.begin() as conn:
        rep = import_assets(conn, helsinki, path, m, actor="test")
    assert rep["totals"]["read"] == len(df)
    assert rep["totals"]["created"] == len(inside), rep
    assert rep["by_class"] == dict(Counter({"street_lamp": "0107", "bus_stop": "0201"}[k] for k in inside["kind"]))
    with engine.connect() as c:
        got = dict(c.execute(text("""SELECT source_id, ST_AsBinary(ST_Transform(geom, 4326)) FROM asset
                                     WHERE city_id = :c AND source = :s"""), {"c": helsinki.id, "s": f"fmt-{fmt}"}).all())
    assert set(got) == set(inside["ref"])
    for sid, g in zip(inside["ref"], inside.geometry, strict=True):
        tol = 1e-6 if fmt in ("csv_wkt", "kml") else 1e-7  # WKT/KML text keeps ~6–7 decimals
        assert shapely.from_wkb(bytes(got[sid])).distance(g) < tol


def test_gcj02_csv_into_haimen(engine, haimen, tmp_path):
    from gis import crs as gcrs
    from layers.assets.imports import import_assets

    lon = np.array([121.17, 121.18, 121.19])
    lat = np.array([31.89, 31.895, 31.90])
    glon, glat = gcrs.wgs84_to_gcj02(lon, lat)
    p = tmp_path / "gcj.csv"
    p.write_text("id,name,x,y\n" + "".join(f"g{i},井盖{i},{float(glon[i])!r},{float(glat[i])!r}\n" for i in range(3)), encoding="utf-8")
    m = {"source": "gcj-test", "crs": "GCJ-02",
         "layers": {"*": {"id": "id", "columns": {"name": "name"}, "class": "0102", "geometry": {"x": "x", "y": "y"}}}}
    with engine.begin() as conn:
        rep = import_assets(conn, haimen, p, m, actor="test")
    assert rep["totals"]["created"] == 3
    with engine.connect() as c:
        rows = c.execute(text("""SELECT source_id, ST_X(ST_Transform(geom, 4326)), ST_Y(ST_Transform(geom, 4326)), code
                                 FROM asset WHERE source = 'gcj-test' ORDER BY source_id""")).all()
    for i, r in enumerate(rows):
        assert abs(r[1] - lon[i]) < 1e-6 and abs(r[2] - lat[i]) < 1e-6
        assert r[3].startswith("3206140102")


def test_bad_files(engine, helsinki, tmp_path):
    from layers.assets.imports import import_assets
    from layers.core.errors import InputError

    m = {**FMT_MAPPING, "source": "bad"}
    before = count(engine, "SELECT count(*) FROM asset")
    corrupt = tmp_path / "c.zip"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.geojson", b" " * (600 * 1024 * 1024))
    nocrs = tmp_path / "n.csv"
    nocrs.write_text("id,kind,lon,lat\n1,street_lamp,24.94,60.17\n")
    unknown = tmp_path / "x.dwg"
    unknown.write_bytes(b"AC1027")
    garbage = tmp_path / "g.geojson"
    garbage.write_text("{ this is not json")
    cases = [(corrupt, "not a valid zip"), (bomb, "at most"), (nocrs, "no CRS"), (unknown, "unsupported file type"),
             (garbage, "cannot read")]
    for path, word in cases:
        with engine.begin() as conn, pytest.raises(InputError, match=word):
            import_assets(conn, helsinki, path, m, actor="test")
    with engine.begin() as conn, pytest.raises(InputError, match="needs 'id'"):
        import_assets(conn, helsinki, HELSINKI, {"source": "x", "layers": {"roads": {"class": "0206"}}}, actor="t")
    with engine.begin() as conn, pytest.raises(InputError, match="no layer 'nope'"):
        import_assets(conn, helsinki, HELSINKI, {"source": "x", "layers": {"nope": {"id": "id", "class": "0206"}}},
                      actor="t")
    assert count(engine, "SELECT count(*) FROM asset") == before


def test_mixed_geometry_and_bad_rows_report(engine, helsinki, tmp_path):
    from layers.assets.imports import import_assets

    feats = [
        {"type": "Feature", "properties": {"ref": "p1", "kind": "street_lamp"}, "geometry": {"type": "Point", "coordinates": [24.945, 60.170]}},
        {"type": "Feature", "properties": {"ref": "p2", "kind": "street_lamp"},
         "geometry": {"type": "Polygon", "coordinates": [[[24.945, 60.17], [24.946, 60.17], [24.946, 60.171], [24.945, 60.17]]]}},
        {"type": "Feature", "properties": {"ref": "p1", "kind": "street_lamp"}, "geometry": {"type": "Point", "coordinates": [24.946, 60.170]}},
        {"type": "Feature", "properties": {"ref": "p3", "kind": "banana"}, "geometry": {"type": "Point", "coordinates": [24.946, 60.171]}},
        {"type": "Feature", "properties": {"ref": "p4", "kind": "street_lamp"}, "geometry": None},
        {"type": "Feature", "properties": {"ref": "p5", "kind": "street_lamp", "name": "x" * 300},
         "geometry": {"type": "Point", "coordinates": [24.946, 60.171]}},
        {"type": "Feature", "properties": {"ref": "p6", "kind": "bus_stop"},
         "geometry": {"type": "Point", "coordinates": [24.947, 60.172]}},
    ]
    p = tmp_path / "mixed.geojson"
    p.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    with engine.begin() as conn:
        rep = import_assets(conn, helsinki, p, {**FMT_MAPPING, "source": "mixed"}, actor="test")
    why = {r["row"]: r["reason"] for r in rep["rejected"]}
    assert rep["totals"]["created"] == 2
    assert "takes point geometries, not polygon" in why[1]
    assert why[2].startswith("duplicate source id")
    assert why[3].startswith("unknown class")
    assert why[4] == "missing geometry"
    assert "name is 300 characters" in why[5]


def test_cli_import_with_progress(db_url, helsinki, tmp_path):
    env = {**os.environ, "CITYGRID_DB_URL": db_url, "PYTHONPATH": str(ROOT)}
    report = tmp_path / "r.json"
    m = json.loads(MAPPING.read_text())
    m["source"] = "cli-test"
    m["layers"] = {"parks": m["layers"]["parks"]}
    mp = tmp_path / "m.json"
    mp.write_text(json.dumps(m))
    code = ("import sys; from layers.assets.imports import main_import_assets; "
            "sys.exit(main_import_assets(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, str(HELSINKI), "--mapping", str(mp), "--city", helsinki.slug,
                        "--report", str(report)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "created" in r.stdout and "import" in r.stderr  # tqdm's bar goes to stderr
    rep = json.loads(report.read_text())
    assert rep["totals"]["read"] == 22 and rep["totals"]["created"] + rep["totals"]["rejected"] == 22
    r = subprocess.run([sys.executable, "-c", code, str(HELSINKI), "--mapping", str(mp), "--city", helsinki.slug,
                        "--atomic"], env=env, capture_output=True, text=True, timeout=120)
    # the re-import changes nothing; parks outside the box make --atomic refuse
    assert (r.returncode == 1 and "nothing was written" in r.stderr) or rep["totals"]["rejected"] == 0


def test_upload_import(client, admin_h, planner_h, helsinki, tmp_path):
    df = _subset(tmp_path)
    data = df.to_json().encode()
    mapping = json.dumps({**FMT_MAPPING, "source": "upload"}).encode()
    files = {"file": ("a.geojson", data, "application/geo+json"), "mapping": ("m.json", mapping, "application/json")}
    r = client.post("/api/v1/admin/assets/import", params={"city": helsinki.slug}, files=files, headers=admin_h)
    assert r.status_code == 200, r.text
    assert r.json()["totals"]["read"] == 40 and r.json()["totals"]["created"] > 0
    r = client.post("/api/v1/admin/assets/import", params={"city": helsinki.slug}, files=files,
                    data={"atomic": "true"}, headers=admin_h)
    assert r.status_code in (200, 422)
    if r.status_code == 422:
        assert r.json()["report"]["written"] is False
    r = client.post("/api/v1/admin/assets/import", files=files, headers=planner_h)
    assert r.status_code == 403
    bad = {"file": ("a.exe", b"MZ", "application/octet-stream"), "mapping": ("m.json", mapping, "application/json")}
    assert client.post("/api/v1/admin/assets/import", files=bad, headers=admin_h).status_code == 415
