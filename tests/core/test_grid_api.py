"""The Haimen unit grid through the API and in PostGIS: codes, snapping, edges, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from sqlalchemy import text

from gis import crs as gcrs
from tests.conftest import auth


@pytest.fixture(scope="module")
def staff(tokens):
    return auth(tokens["inspector"])


def test_haimen_grid_in_postgis(engine, haimen):
    with engine.connect() as c:
        srid, area = c.execute(text("SELECT working_srid, area_m2 FROM city WHERE slug='haimen'")).one()
        n, partial, size = c.execute(text("""
            SELECT g.cell_count, (SELECT count(*) FROM grid_cell WHERE grid_id = g.id AND partial), g.cell_size
            FROM grid g JOIN city ON city.id = g.city_id WHERE city.slug = 'haimen' AND g.active""")).one()
        # The cells tile the city exactly: their areas add up to the boundary's area.
        cell_area, bad_codes, dup = c.execute(text("""
            SELECT sum(gc.area_m2), count(*) FILTER (WHERE code !~ '^320614[0-9]{9}$'),
                   count(*) - count(DISTINCT code)
            FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id JOIN city ON city.id = g.city_id
            WHERE city.slug = 'haimen' AND g.active""")).one()
        streets = c.execute(text("""SELECT count(*) FROM admin_area a JOIN city ON city.id = a.city_id
                                    WHERE city.slug='haimen' AND level='street'""")).scalar_one()
    assert srid == 4549
    assert size == 100.0
    assert 100_000 <= n <= 130_000, n  # ~1150 km² at 1 ha per cell
    assert 0 < partial < n * 0.1
    assert cell_area == pytest.approx(area, rel=1e-6)
    assert bad_codes == 0 and dup == 0
    assert streets == 12


def test_codes_follow_community_order(engine, haimen):
    """Sequence numbers run west→east, north→south inside each community."""
    with engine.connect() as c:
        rows = c.execute(text("""
            SELECT left(code, 12), right(code, 3)::int, col, "row" FROM grid_cell gc
            JOIN grid g ON g.id = gc.grid_id JOIN city ON city.id = g.city_id
            WHERE city.slug='haimen' AND g.active ORDER BY code""")).all()
    by_comm: dict[str, list] = {}
    for comm, seq, col, row in rows:
        by_comm.setdefault(comm, []).append((seq, col, row))
    assert len(by_comm) >= 12 * 10  # made-up communities of ≤ 999 cells
    for cells in by_comm.values():
        seqs = [s for s, _, _ in cells]
        assert seqs == list(range(1, len(cells) + 1))
        keys = [(-r, c) for _, c, r in cells]
        assert keys == sorted(keys)


def test_community_codes_nest_in_streets(engine, haimen):
    with engine.connect() as c:
        mismatched = c.execute(text("""
            SELECT count(*) FROM grid_cell gc JOIN admin_area com ON com.id = gc.area_id
            JOIN admin_area st ON st.id = com.parent_id
            JOIN grid g ON g.id = gc.grid_id AND g.active JOIN city ON city.id = g.city_id AND city.slug = 'haimen'
            WHERE left(gc.code, 12) <> com.code OR left(com.code, 9) <> st.code""")).scalar_one()
        unfiled = c.execute(text("""
            SELECT count(*) FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id AND g.active
            JOIN city ON city.id = g.city_id AND city.slug = 'haimen' WHERE gc.area_id IS NULL""")).scalar_one()
    assert mismatched == 0 and unfiled == 0


def _cell_from_db(engine, code):
    with engine.connect() as c:
        return c.execute(text("""SELECT col, "row", partial, ST_AsBinary(geom) FROM grid_cell gc
                                 JOIN grid g ON g.id = gc.grid_id WHERE g.active AND code = :c"""),
                         {"c": code}).one()


def test_snap_wgs84_gcj02_bd09_agree(client, staff, engine):
    # Haimen's old town centre in WGS-84, and the same place as AMap (GCJ-02) and Baidu (BD-09) give it.
    lon, lat = 121.1700, 31.8900
    glon, glat = gcrs.wgs84_to_gcj02(lon, lat)
    blon, blat = gcrs.wgs84_to_bd09(lon, lat)
    out = {}
    for crs, pt in (("EPSG:4326", [lon, lat]), ("GCJ-02", [float(glon), float(glat)]),
                    ("BD-09", [float(blon), float(blat)]), ("EPSG:4490", [lon, lat])):
        r = client.post("/api/v1/snap", json={"crs": crs, "points": [pt]}, headers=staff)
        assert r.status_code == 200, r.text
        out[crs] = r.json()["cells"][0]
    assert len({c["code"] for c in out.values()}) == 1
    # Independent check: the cell's polygon in PostGIS contains the point.
    col, row, _, wkb = _cell_from_db(engine, out["EPSG:4326"]["code"])
    x, y = gcrs.transform_xy(lon, lat, "EPSG:4326", "EPSG:4549")
    assert shapely.from_wkb(bytes(wkb)).contains(shapely.Point(float(x), float(y)))
    assert (col, row) == (int(np.floor(x / 100)), int(np.floor(y / 100)))
    assert out["EPSG:4326"]["col"] == col and out["EPSG:4326"]["row"] == row


def test_snap_matches_postgis_on_many_points(client, staff, engine):
    """10,000 random points: the API's cells equal a PostGIS ST_Covers join on the same points."""
    rng = np.random.default_rng(7)
    with engine.connect() as c:
        minx, miny, maxx, maxy = c.execute(text(
            "SELECT ST_XMin(b), ST_YMin(b), ST_XMax(b), ST_YMax(b) FROM "
            "(SELECT ST_Transform(boundary, 4326) b FROM city WHERE slug='haimen') s")).one()
    lon = rng.uniform(minx, maxx, 10_000)
    lat = rng.uniform(miny, maxy, 10_000)
    r = client.post("/api/v1/snap", json={"points": np.column_stack([lon, lat]).tolist()}, headers=staff)
    assert r.status_code == 200
    cells = r.json()["cells"]
    assert len(cells) == 10_000
    with engine.connect() as c:
        c.execute(text("CREATE TEMP TABLE pts (i int, geom geometry)"))
        c.execute(text("""INSERT INTO pts SELECT i, ST_Transform(ST_SetSRID(ST_MakePoint(x, y), 4326), 4549)
                          FROM unnest(CAST(:x AS float8[]), CAST(:y AS float8[])) WITH ORDINALITY AS t(x, y, i)"""),
                  {"x": lon.tolist(), "y": lat.tolist()})
        truth = dict(c.execute(text("""
            SELECT p.i - 1, gc.code FROM pts p JOIN grid_cell gc ON ST_Covers(gc.geom, p.geom)
            JOIN grid g ON g.id = gc.grid_id AND g.active
            JOIN city ON city.id = g.city_id AND city.slug = 'haimen'""")).all())
    got = {i: c["code"] for i, c in enumerate(cells) if c["code"]}
    assert got == truth
    assert all(c["reason"] == "outside the city" for i, c in enumerate(cells) if i not in truth)
    assert 0.3 < len(truth) / 10_000 < 0.9


def test_snap_edges_and_corners(client, staff, engine, haimen):
    """Cells are half-open: a point on a shared edge or corner goes to the cell to its north-east."""
    with engine.connect() as c:
        col, row = c.execute(text("""SELECT col, "row" FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id
            WHERE g.active AND g.city_id = :city AND NOT partial AND EXISTS (SELECT 1 FROM grid_cell o
            WHERE o.grid_id = g.id AND NOT o.partial AND o.col = gc.col - 1 AND o."row" = gc."row" - 1) LIMIT 1"""),
            {"city": haimen.id}).one()
    x0, y0 = col * 100.0, row * 100.0
    pts = [[x0, y0],            # SW corner: this cell
           [x0, y0 + 50],       # west edge: this cell
           [x0 + 50, y0],       # south edge: this cell
           [x0 + 100, y0 + 50],  # east edge: the next cell east
           [x0 + 50, y0 + 100],  # north edge: the cell north
           [x0 - 1e-9, y0 - 1e-9]]  # a hair south-west of the corner: the diagonal neighbour
    r = client.post("/api/v1/snap", json={"crs": "EPSG:4549", "points": pts}, headers=staff)
    got = [(c["col"], c["row"]) for c in r.json()["cells"]]
    assert got == [(col, row), (col, row), (col, row), (col + 1, row), (col, row + 1), (col - 1, row - 1)]


def test_snap_outside_and_bad_points(client, staff):
    pts = [[121.17, 31.89],      # inside
           [116.40, 39.90],      # Beijing: outside the city
           [31.89, 121.17],      # swapped: latitude out of range
           [200.0, 31.0],        # longitude out of range
           [121.17, 95.0]]       # latitude out of range
    r = client.post("/api/v1/snap", json={"points": pts}, headers=staff)
    assert r.status_code == 422
    msg = r.json()["detail"]
    assert "3 invalid point(s)" in msg and "points[2]" in msg and "swapped" in msg and "points[3]" in msg
    r = client.post("/api/v1/snap", json={"points": pts, "invalid": "report"}, headers=staff)
    assert r.status_code == 200
    cells = r.json()["cells"]
    assert cells[0]["code"] and cells[0]["code"].startswith("320614")
    assert cells[1] == {"code": None, "reason": "outside the city"}
    assert cells[2]["code"] is None and "swapped" in cells[2]["reason"]
    assert cells[3]["code"] is None and "longitude out of range" in cells[3]["reason"]
    assert cells[4]["code"] is None and "latitude out of range" in cells[4]["reason"]


def test_snap_request_errors(client, staff):
    cases = [
        ({"points": []}, 422, "empty"),
        ({"crs": "EPSG:999999", "points": [[1, 2]]}, 422, "CRS"),
        ({"crs": "mars", "points": [[1, 2]]}, 422, "unknown CRS"),
        ({"points": [[1, 2, 3]]}, 422, "points"),
        ({"points": [["a", 2]]}, 422, "points"),
        ({"points": "121,31"}, 422, "points"),
        ({}, 422, "points"),
    ]
    for body, status, word in cases:
        r = client.post("/api/v1/snap", json=body, headers=staff)
        assert r.status_code == status, (body, r.text)
        assert word.lower() in r.json()["detail"].lower(), (body, r.json())
    r = client.post("/api/v1/snap", content=b'{"points": [[121.1, NaN]]}', headers={**staff, "Content-Type": "application/json"})
    assert r.status_code == 422 and "not a number" in r.json()["detail"]
    r = client.post("/api/v1/snap", content=b"not json", headers={**staff, "Content-Type": "application/json"})
    assert r.status_code == 422


def test_snap_limit(client, staff):
    from citygrid import settings

    n = settings.api().max_snap_points
    ok = client.post("/api/v1/snap", json={"points": [[121.17, 31.89]] * n}, headers=staff)
    assert ok.status_code == 200 and len(ok.json()["cells"]) == n
    assert len({c["code"] for c in ok.json()["cells"]}) == 1
    big = client.post("/api/v1/snap", json={"points": [[121.17, 31.89]] * (n + 1)}, headers=staff)
    assert big.status_code == 413 and str(n) in big.json()["detail"]


def test_cell_by_code_geojson(client, staff, engine):
    code = client.post("/api/v1/snap", json={"points": [[121.17, 31.89]]}, headers=staff).json()["cells"][0]["code"]
    r = client.get(f"/api/v1/cells/{code}", headers=staff)
    assert r.status_code == 200
    f = r.json()
    assert f["type"] == "Feature" and f["properties"]["code"] == code
    assert f["properties"]["street_code"] == code[:9] and f["properties"]["community_code"] == code[:12]
    g = shapely.geometry.shape(f["geometry"])
    assert g.contains(shapely.Point(121.17, 31.89))
    # The same cell in the working CRS is the 100 m square.
    w = shapely.geometry.shape(client.get(f"/api/v1/cells/{code}?crs=EPSG:4549", headers=staff).json()["geometry"])
    assert w.area == pytest.approx(10_000, rel=1e-9)
    # GCJ-02 output is shifted like AMap shifts it (~ a few hundred metres), and converts back exactly.
    gj = shapely.geometry.shape(client.get(f"/api/v1/cells/{code}?crs=GCJ-02", headers=staff).json()["geometry"])
    back = gcrs.transform_geometry(gj, "GCJ-02", "EPSG:4326")
    assert shapely.hausdorff_distance(back, g) < 1e-7
    assert shapely.hausdorff_distance(gj, g) > 1e-3
    assert client.get("/api/v1/cells/12345", headers=staff).status_code == 422
    assert client.get("/api/v1/cells/320614999999999", headers=staff).status_code == 404


def test_cells_in_bbox(client, staff):
    r = client.get("/api/v1/cells", params={"bbox": "121.165,31.885,121.175,31.895"}, headers=staff)
    assert r.status_code == 200
    fc = r.json()
    # ~950 m × 1110 m → about 10 × 12 cells plus the fringe
    assert 100 <= fc["numberMatched"] <= 180
    assert fc["numberReturned"] == fc["numberMatched"]
    box = shapely.box(121.165, 31.885, 121.175, 31.895)
    assert all(shapely.geometry.shape(f["geometry"]).intersects(box) for f in fc["features"])
    page = client.get("/api/v1/cells", params={"bbox": "121.165,31.885,121.175,31.895", "limit": 10, "offset": 5},
                      headers=staff).json()
    assert [f["id"] for f in page["features"]] == [f["id"] for f in fc["features"][5:15]]
    for bad in ("1,2,3", "a,b,c,d", "121.2,31.9,121.1,31.8", "121,31,121.1,95", "nan,1,2,3"):
        r = client.get("/api/v1/cells", params={"bbox": bad}, headers=staff)
        assert r.status_code == 422, bad
        assert "bbox" in r.json()["detail"]


def test_health(client, tokens):
    h = client.get("/api/v1/health").json()
    assert h["status"] == "ok" and h["database"] == "ok"
    # Server versions only for staff (a valid token); anonymous callers and unknown tokens get the status.
    assert "postgis" not in h and "PostgreSQL" not in str(h)
    for bad in ("Bearer cg_nonsense", "Basic abc"):
        assert "postgis" not in client.get("/api/v1/health", headers={"Authorization": bad}).json()
    staff = client.get("/api/v1/health", headers={"Authorization": f"Bearer {tokens['planner']}"}).json()
    assert staff["postgis"].startswith("3.") and staff["database"].startswith("PostgreSQL ")
    h = staff
    haimen = next(c for c in h["cities"] if c["slug"] == "haimen")
    assert haimen["working_crs"] == "EPSG:4549"
    assert haimen["grid"]["cells"] > 100_000 and haimen["grid"]["kind"] == "regular"


def test_docs(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/api/v1/snap" in spec["paths"] and "/api/v1/cells/{code}" in spec["paths"]
