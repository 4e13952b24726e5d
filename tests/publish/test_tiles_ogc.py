"""Vector tiles (decoded with mapbox_vector_tile, compared with PostGIS) and OGC API – Features as QGIS
requests it."""

from __future__ import annotations

import math
import time

import mapbox_vector_tile
import pytest
import shapely
from sqlalchemy import text

from tests.conftest import auth


def _tile_of(lon, lat, z):
    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y


def _cells_in_tile(engine, z, x, y):
    with engine.connect() as c:
        return set(c.execute(text("""
            SELECT gc.code FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id AND g.active
            JOIN city ON city.id = g.city_id AND city.slug = 'haimen'
            WHERE ST_Intersects(ST_Transform(gc.geom, 3857), ST_TileEnvelope(:z, :x, :y))"""),
            {"z": z, "x": x, "y": y}).scalars())


@pytest.mark.parametrize("z", [14, 16])
def test_grid_tile_decodes_to_the_right_cells(client, engine, z):
    from layers.publish import tiles

    tiles.cache.clear()
    x, y = _tile_of(121.17, 31.89, z)
    r = client.get(f"/api/v1/tiles/grid_cells/{z}/{x}/{y}.mvt")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    assert r.headers["x-tile-cache"] == "miss" and r.headers["cache-control"].startswith("public")
    t = mapbox_vector_tile.decode(r.content)
    feats = t["grid_cells"]["features"]
    codes = {f["properties"]["code"] for f in feats}
    inside = _cells_in_tile(engine, z, x, y)
    # every cell of the tile is there; the others are in the 64/4096 buffer around it
    assert inside <= codes and len(inside) > 0
    assert len(codes - inside) <= 4 * (len(inside) ** 0.5 + 2) * 2
    # geometry in tile coordinates: a full 100 m cell is a square of the right size at this zoom
    m_per_px = 2 * math.pi * 6378137 / (2 ** z) / 4096 * math.cos(math.radians(31.89))
    full = [f for f in feats if not f["properties"]["partial"] and f["properties"]["code"] in inside]
    side = max(math.sqrt(shapely.geometry.shape(f["geometry"]).area) for f in full)  # one not cut by the tile edge
    assert side * m_per_px == pytest.approx(100, rel=0.06)
    # cached now, with an ETag for conditional requests
    r2 = client.get(f"/api/v1/tiles/grid_cells/{z}/{x}/{y}.mvt")
    assert r2.headers["x-tile-cache"] == "hit" and r2.content == r.content
    r3 = client.get(f"/api/v1/tiles/grid_cells/{z}/{x}/{y}.mvt", headers={"If-None-Match": r.headers["etag"]})
    assert r3.status_code == 304 and not r3.content
    # gzip for clients that accept it (the same tile once decompressed), with its own ETag
    gz = client.get(f"/api/v1/tiles/grid_cells/{z}/{x}/{y}.mvt", headers={"Accept-Encoding": "gzip"})
    plain = client.get(f"/api/v1/tiles/grid_cells/{z}/{x}/{y}.mvt", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == r.content
    if len(r.content) >= 1024:
        assert gz.headers["content-encoding"] == "gzip" and gz.content == r.content  # httpx decompresses
        assert gz.headers["etag"] != plain.headers["etag"] and "Accept-Encoding" in gz.headers["vary"]
        r4 = client.get(f"/api/v1/tiles/grid_cells/{z}/{x}/{y}.mvt",
                        headers={"Accept-Encoding": "gzip", "If-None-Match": gz.headers["etag"]})
        assert r4.status_code == 304


def test_asset_tile_and_invalidation(client, engine, tokens):
    from layers.publish import tiles

    z = 16
    lon, lat = 121.1755, 31.8955
    x, y = _tile_of(lon, lat, z)
    url = f"/api/v1/tiles/assets/{z}/{x}/{y}.mvt"
    before = mapbox_vector_tile.decode(client.get(url).content)
    n0 = len(before.get("assets", {}).get("features", []))
    assert client.get(url).headers["x-tile-cache"] == "hit"
    r = client.post("/api/v1/assets", json={"class_code": "0107", "name": "瓦片测试路灯", "dept_code1": "路灯所",
                                            "geometry": {"type": "Point", "coordinates": [lon, lat]}},
                    headers=auth(tokens["admin"]))
    code = r.json()["properties"]["code"]
    # the commit's NOTIFY reaches the server's listener within milliseconds
    with engine.connect() as c:
        v = c.execute(text("SELECT version FROM layer_version WHERE layer = 'assets'")).scalar_one()
    watch = tiles.watch_for(engine)
    for _ in range(200):
        if watch.version("assets") == v:
            break
        time.sleep(0.01)
    assert watch.version("assets") == v
    r = client.get(url)
    assert r.headers["x-tile-cache"] == "miss"  # the change invalidated the cached tile
    feats = mapbox_vector_tile.decode(r.content)["assets"]["features"]
    assert len(feats) == n0 + 1
    mine = next(f for f in feats if f["properties"]["code"] == code)
    assert mine["properties"]["class_name"] == "路灯" and mine["properties"]["name"] == "瓦片测试路灯"
    assert "dept_code1" not in mine["properties"]  # anonymous: the public form
    full = mapbox_vector_tile.decode(client.get(url, headers=auth(tokens["planner"])).content)["assets"]["features"]
    assert next(f for f in full if f["properties"]["code"] == code)["properties"]["dept_code1"] == "路灯所"
    assert tiles.cache.hits > 0


def test_bad_tiles(client):
    assert client.get("/api/v1/tiles/grid_cells/25/0/0.mvt").status_code == 422
    assert client.get("/api/v1/tiles/grid_cells/3/8/0.mvt").status_code == 422
    assert client.get("/api/v1/tiles/grid_cells/3/-1/0.mvt").status_code == 422
    assert client.get("/api/v1/tiles/nope/3/1/1.mvt").status_code == 404
    r = client.get("/api/v1/tiles/grid_cells/3/0/0.mvt")  # far from Haimen: an empty tile
    assert r.status_code == 200 and r.content == b""


# --- OGC API – Features, as QGIS asks --------------------------------------------------------------

QGIS = {"Accept": "application/json", "User-Agent": "QGIS/33400/Linux"}


def test_ogc_landing_conformance_collections(client):
    land = client.get("/api/v1/ogc", headers=QGIS).json()
    rels = {lk["rel"] for lk in land["links"]}
    assert {"self", "conformance", "data", "service-desc"} <= rels
    conf = client.get("/api/v1/ogc/conformance", headers=QGIS).json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in conf
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson" in conf
    cols = client.get("/api/v1/ogc/collections", headers=QGIS).json()["collections"]
    ids = {c["id"]: c for c in cols}
    assert {"grid_cells", "admin_areas", "assets"} <= set(ids)
    g = ids["grid_cells"]
    assert g["extent"]["spatial"]["bbox"][0][0] == pytest.approx(121.0, abs=0.2)
    assert any(lk["rel"] == "items" for lk in g["links"])
    assert "http://www.opengis.net/def/crs/EPSG/0/4490" in g["crs"]
    one = client.get("/api/v1/ogc/collections/grid_cells", headers=QGIS).json()
    assert one["id"] == "grid_cells"
    qs = client.get("/api/v1/ogc/collections/assets/queryables", headers=QGIS).json()
    assert qs["properties"]["code"]["type"] == "string" and qs["properties"]["length_m"]["type"] == "number"
    assert "dept_code1" not in qs["properties"]  # anonymous: the public form
    html = client.get("/api/v1/ogc/collections", params={"f": "html"})
    assert html.headers["content-type"].startswith("text/html") and "单元网格" in html.text
    assert client.get("/api/v1/ogc/collections", headers={"Accept": "text/html"}).headers["content-type"].startswith("text/html")


def test_ogc_items_bbox_paging_and_crs(client, engine):
    bbox = "121.165,31.885,121.175,31.895"
    r = client.get("/api/v1/ogc/collections/grid_cells/items", params={"bbox": bbox, "limit": 50}, headers=QGIS)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/geo+json")
    assert r.headers["content-crs"] == "<http://www.opengis.net/def/crs/OGC/1.3/CRS84>"
    doc = r.json()
    with engine.connect() as c:
        truth = set(c.execute(text("""SELECT gc.code FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id AND g.active
            JOIN city ON city.id = g.city_id AND city.slug = 'haimen'
            WHERE ST_Intersects(gc.geom, ST_Transform(ST_Segmentize(ST_MakeEnvelope(121.165, 31.885, 121.175, 31.895,
            4326), 0.0005), 4549))""")).scalars())
    assert doc["numberMatched"] == len(truth) and doc["numberReturned"] == 50
    # follow the next links like QGIS does
    codes = [f["properties"]["code"] for f in doc["features"]]
    nxt = next((lk["href"] for lk in doc["links"] if lk["rel"] == "next"), None)
    while nxt:
        page = client.get(nxt, headers=QGIS).json()
        codes += [f["properties"]["code"] for f in page["features"]]
        nxt = next((lk["href"] for lk in page["links"] if lk["rel"] == "next"), None)
    assert len(codes) == len(set(codes)) and set(codes) == truth
    f0 = doc["features"][0]
    one = client.get(f"/api/v1/ogc/collections/grid_cells/items/{f0['id']}", headers=QGIS).json()
    assert one["properties"]["code"] == f0["properties"]["code"]
    assert shapely.geometry.shape(one["geometry"]).equals_exact(shapely.geometry.shape(f0["geometry"]), 1e-12)
    r = client.get(f"/api/v1/ogc/collections/grid_cells/items/{f0['id']}",
                   params={"crs": "http://www.opengis.net/def/crs/EPSG/0/4549"}, headers=QGIS)
    assert r.headers["content-crs"] == "<http://www.opengis.net/def/crs/EPSG/0/4549>"
    assert shapely.geometry.shape(r.json()["geometry"]).area == pytest.approx(f0["properties"]["area_m2"], rel=1e-6)
    html = client.get("/api/v1/ogc/collections/grid_cells/items", params={"bbox": bbox, "f": "html", "limit": 5})
    assert "<table" in html.text and f0["properties"]["code"][:9] in html.text
    assert client.get("/api/v1/ogc/collections/grid_cells/items/999999999999", headers=QGIS).status_code == 404


def test_ogc_datetime_and_errors(client):
    r = client.get("/api/v1/ogc/collections/assets/items", params={"datetime": "2000-01-01T00:00:00Z/..", "limit": 5},
                   headers=QGIS)
    assert r.status_code == 200 and r.json()["numberMatched"] > 0
    r = client.get("/api/v1/ogc/collections/assets/items", params={"datetime": "../2000-01-01T00:00:00Z"}, headers=QGIS)
    assert r.json()["numberMatched"] == 0
    for params in ({"bbox": "1,2"}, {"datetime": "soon"}, {"limit": 0}, {"crs": "mars"}, {"f": "xml"}):
        r = client.get("/api/v1/ogc/collections/assets/items", params=params, headers=QGIS)
        assert r.status_code == 422, params
    assert client.get("/api/v1/ogc/collections/grid_cells/items", params={"datetime": "2020-01-01T00:00:00Z"},
                      headers=QGIS).status_code == 422
    assert client.get("/api/v1/ogc/collections/nope", headers=QGIS).status_code == 404


def test_ogc_auth_in_front_of_private_layers(client, tokens):
    from layers.publish import catalog as lcat

    secret = lcat.register(lcat.Layer(
        name="test_private_ogc", title="测试", title_en="Test private", theme="test", geometry_type="MultiPolygon",
        sql="SELECT a.id AS fid, a.code, a.geom FROM admin_area a WHERE a.city_id = :city_id",
        fields=(lcat.Field("code", "str"),), roles=frozenset({"admin"})))
    try:
        url = f"/api/v1/ogc/collections/{secret.name}/items"
        assert client.get(url).status_code == 401
        assert client.get(url, headers=auth(tokens["planner"])).status_code == 403
        r = client.get(url, headers=auth(tokens["admin"]))
        assert r.status_code == 200 and r.json()["numberMatched"] >= 13
        assert client.get(f"/api/v1/tiles/{secret.name}/10/0/0.mvt").status_code == 401
        ids = [c["id"] for c in client.get("/api/v1/ogc/collections").json()["collections"]]
        assert secret.name not in ids
        ids = [c["id"] for c in client.get("/api/v1/ogc/collections", headers=auth(tokens["admin"])).json()["collections"]]
        assert secret.name in ids
    finally:
        lcat._REGISTRY.pop(secret.name, None)


def test_admin_area_tile_without_a_3857_cache(client, engine):
    """A layer without a cached EPSG:3857 copy: the envelope goes to the working CRS for the prefilter."""
    z = 10
    x, y = _tile_of(121.2, 31.93, z)
    r = client.get(f"/api/v1/tiles/admin_areas/{z}/{x}/{y}.mvt")
    feats = mapbox_vector_tile.decode(r.content)["admin_areas"]["features"]
    with engine.connect() as c:
        truth = set(c.execute(text("""SELECT a.code FROM admin_area a JOIN city ON city.id = a.city_id
                                      AND city.slug = 'haimen' WHERE ST_Intersects(ST_Transform(a.geom, 3857),
                                      ST_TileEnvelope(:z, :x, :y))"""), {"z": z, "x": x, "y": y}).scalars())
    got = {f["properties"]["code"] for f in feats}
    assert truth <= got and {"320614", "320614001"} <= got


def test_tilejson(client):
    tj = client.get("/api/v1/tiles/assets/tilejson.json").json()
    assert tj["tilejson"] == "3.0.0" and tj["tiles"][0].endswith("/api/v1/tiles/assets/{z}/{x}/{y}.mvt")
    assert tj["vector_layers"][0]["id"] == "assets" and "dept_code1" not in tj["vector_layers"][0]["fields"]
    assert 120.9 < tj["center"][0] < 121.7
    assert client.get("/api/v1/tiles/nope/tilejson.json").status_code == 404


def test_grid_tile_low_zoom_keeps_the_cells_and_underivable_fields(client, engine, tokens):
    """At z12 a grid tile has every cell of the tile with the attributes that cannot be derived (the code holds
    the community and street codes), and from z13 every field; the cached answer (fast path) is the same tile."""
    from layers.publish import tiles

    z = 12
    x, y = _tile_of(121.17, 31.89, z)
    url = f"/api/v1/tiles/grid_cells/{z}/{x}/{y}.mvt"
    r = client.get(url)
    assert r.status_code == 200
    feats = mapbox_vector_tile.decode(r.content)["grid_cells"]["features"]
    codes = {f["properties"]["code"] for f in feats}
    assert _cells_in_tile(engine, z, x, y) <= codes
    keys = set().union(*(f["properties"] for f in feats))
    assert {"code", "partial", "community", "street"} <= keys <= set(tiles.LOW_ZOOM["grid_cells"][1])
    with engine.connect() as c:
        truth = dict(c.execute(text("""
            SELECT gc.code, st.name FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id AND g.active
            JOIN city ON city.id = g.city_id AND city.slug = 'haimen'
            JOIN admin_area com ON com.id = gc.area_id JOIN admin_area st ON st.id = com.parent_id
            WHERE gc.code = ANY(:codes)"""), {"codes": sorted(codes)[:200]}).all())
    assert truth and all(f["properties"]["street"] == truth[f["properties"]["code"]]
                         for f in feats if f["properties"]["code"] in truth)
    x13, y13 = _tile_of(121.17, 31.89, 13)
    f13 = mapbox_vector_tile.decode(client.get(f"/api/v1/tiles/grid_cells/13/{x13}/{y13}.mvt").content)
    assert {"col", "row", "area_m2", "community_code", "street_code"} <= set(f13["grid_cells"]["features"][0]["properties"])
    # the TileJSON says so
    tj = client.get("/api/v1/tiles/grid_cells/tilejson.json").json()
    assert "zoom ≤ 12" in tj["vector_layers"][0]["description"]
    # cached: the fast path's answer is the same tile, with the same headers as the routed one
    hit = client.get(url, headers={"Accept-Encoding": "identity"})
    assert hit.headers["x-tile-cache"] == "hit" and hit.content == r.content
    assert hit.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    assert hit.headers["content-length"] == str(len(r.content)) and "content-encoding" not in hit.headers
    assert hit.headers["vary"] == "Authorization, Cookie, Accept-Encoding" and hit.headers["cache-control"].startswith("public")
    with client.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as gz:
        raw = b"".join(gz.iter_raw())
        assert gz.headers["content-encoding"] == "gzip" and int(gz.headers["content-length"]) == len(raw)
        assert gz.headers["etag"] == hit.headers["etag"][:-1] + '-gz"'
    import gzip

    assert gzip.decompress(raw) == r.content and len(raw) < len(r.content) / 3
    nm = client.get(url, headers={"Accept-Encoding": "gzip", "If-None-Match": f'"x", {gz.headers["etag"]}'})
    assert nm.status_code == 304 and not nm.content and nm.headers["etag"] == gz.headers["etag"]
    # with a token the fast path steps aside: the routed answer of the full form, private
    priv = client.get(url, headers=auth(tokens["planner"]))
    assert priv.status_code == 200 and priv.headers["cache-control"].startswith("private")
    assert {f["properties"]["code"] for f in mapbox_vector_tile.decode(priv.content)["grid_cells"]["features"]} == codes
