"""Base maps as settings: the sources listed for the pages, offline MBTiles tiles, the CSP's tile hosts,
the reference map's labels and the city's outline, the public place search, the favicon."""

from __future__ import annotations

import io
import json
import sqlite3
import uuid

import numpy as np
import pytest
from PIL import Image

from gis import crs as gcrs
from tests.cases.conftest import working_point


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), color).save(buf, format="PNG")
    return buf.getvalue()


def _mbtiles(path, tiles: dict, fmt="png", name="测试离线图") -> None:
    """An MBTiles file: ``tiles`` maps XYZ (z, x, y) → bytes, stored in TMS rows as the spec says."""
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE metadata (name text, value text);
                        CREATE TABLE tiles (zoom_level integer, tile_column integer, tile_row integer, tile_data blob);
                        CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row);""")
    db.executemany("INSERT INTO metadata VALUES (?, ?)", [("name", name), ("format", fmt), ("maxzoom", "16"),
                                                           ("attribution", "测试数据 test data")])
    db.executemany("INSERT INTO tiles VALUES (?, ?, ?, ?)",
                   [(z, x, (1 << z) - 1 - y, data) for (z, x, y), data in tiles.items()])
    db.commit()
    db.close()


@pytest.fixture
def no_basemap_env(monkeypatch):
    for k in ("TIANDITU_KEY", "AMAP", "TENCENT", "URL", "XYZ", "MBTILES", "DEFAULT", "CRS", "REFERENCE"):
        monkeypatch.delenv(f"CITYGRID_BASEMAP_{k}", raising=False)
    monkeypatch.delenv("CITYGRID_API_BASEMAP_URL", raising=False)
    return monkeypatch


def test_mbtiles_tile_served_at_xyz_with_the_tms_row_flipped(client, tmp_path, no_basemap_env):
    red, blue = _png((200, 30, 30)), _png((30, 30, 200))
    path = tmp_path / "offline.mbtiles"
    _mbtiles(path, {(3, 6, 2): red, (3, 6, 5): blue})  # XYZ rows 2 and 5 = TMS rows 5 and 2
    no_basemap_env.setenv("CITYGRID_BASEMAP_MBTILES", str(path))
    r = client.get("/api/v1/basemaps/offline/3/6/2")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == red
    assert Image.open(io.BytesIO(r.content)).getpixel((10, 10)) == (200, 30, 30)  # read back by a real reader
    r = client.get("/api/v1/basemaps/offline/3/6/5.png")
    assert r.status_code == 200 and r.content == blue
    # No tile there: 204 (nothing to draw); outside the zoom's range, or an unknown source: 404 saying why.
    assert client.get("/api/v1/basemaps/offline/3/1/1").status_code == 204
    r = client.get("/api/v1/basemaps/offline/3/9/1")
    assert r.status_code == 404 and "0 to 7" in r.json()["detail"]
    r = client.get("/api/v1/basemaps/nowhere/3/6/2")
    assert r.status_code == 404 and "nowhere" in r.json()["detail"]
    assert client.get("/api/v1/basemaps/offline/3/6/abc").status_code == 422
    # Listed for the pages, with its title from the file's metadata and the service's own URL.
    d = client.get("/api/v1/basemaps").json()
    off = next(s for s in d["sources"] if s["name"] == "offline")
    assert d["default"] == "offline" and off["title"] == "测试离线图" and off["crs"] == "EPSG:4326"
    assert off["layers"][0]["url"] == "/api/v1/basemaps/offline/{z}/{x}/{y}"
    assert any(s["kind"] == "reference" for s in d["sources"])


def test_jpeg_tiles_get_their_content_type(client, tmp_path, no_basemap_env):
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (0, 120, 0)).save(buf, format="JPEG")
    path = tmp_path / "sat.mbtiles"
    _mbtiles(path, {(0, 0, 0): buf.getvalue()}, fmt="jpg")
    no_basemap_env.setenv("CITYGRID_BASEMAP_MBTILES", json.dumps({"sat": str(path)}))
    r = client.get("/api/v1/basemaps/sat/0/0/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"


def test_default_is_the_reference_map(client, no_basemap_env):
    d = client.get("/api/v1/basemaps").json()
    assert d["default"] == "reference" and [s["kind"] for s in d["sources"]] == ["reference"]


def test_sources_tianditu_gcj_and_xyz_and_the_csp_lists_exactly_their_hosts(engine, db_url, haimen, no_basemap_env):
    from fastapi.testclient import TestClient

    from api.app import create_app

    key = "k" + uuid.uuid4().hex
    env = no_basemap_env
    env.setenv("CITYGRID_BASEMAP_TIANDITU_KEY", key)
    env.setenv("CITYGRID_BASEMAP_AMAP", "true")
    env.setenv("CITYGRID_API_BASEMAP_URL", "https://{s}.tiles.example.org/{z}/{x}/{y}.png")  # the older name
    env.setenv("CITYGRID_BASEMAP_SUBDOMAINS", "ab")
    env.setenv("CITYGRID_BASEMAP_DEFAULT", "amap")
    with TestClient(create_app(db_url)) as c:
        d = c.get("/api/v1/basemaps").json()
        by = {s["name"]: s for s in d["sources"]}
        assert d["default"] == "amap" and d["sources"][0]["name"] == "amap"
        assert set(by) == {"tianditu_vec", "tianditu_img", "amap", "xyz", "reference"}
        assert by["amap"]["crs"] == "GCJ-02" and by["tianditu_vec"]["crs"] == "EPSG:4326"
        vec = [lay["url"] for lay in by["tianditu_vec"]["layers"]]
        assert "LAYER=vec" in vec[0] and "LAYER=cva" in vec[1] and "TILEMATRIXSET=w" in vec[0]
        assert [lay["url"] for lay in by["tianditu_img"]["layers"]][1].count("LAYER=cia") == 1
        # The key: only inside the Tianditu tile URLs.
        body = c.get("/api/v1/basemaps").text
        assert body.count(key) == 4 and all(key in u for u in vec)
        assert key not in c.get("/api/v1/config").text
        csp = c.get("/planner").headers["content-security-policy"]
        img = next(p for p in csp.split("; ") if p.startswith("img-src")).split()[1:]
        expected = {f"https://t{i}.tianditu.gov.cn" for i in range(8)} | {
            f"https://webrd0{i}.is.autonavi.com" for i in range(1, 5)} | {
            "https://a.tiles.example.org", "https://b.tiles.example.org"}
        assert set(img) == {"'self'", "data:", "blob:"} | expected
        # JSON answers keep their own locked-down policy.
        assert c.get("/api/v1/basemaps").headers["content-security-policy"].startswith("default-src 'none'")
    env.setenv("CITYGRID_BASEMAP_CRS", "Mars")
    with TestClient(create_app(db_url)) as c:
        r = c.get("/api/v1/basemaps")
        assert r.status_code == 500 and "Mars" in r.json()["detail"]


def test_reference_labels_and_outline(client, haimen):
    r = client.get("/api/v1/basemaps/reference/labels")
    assert r.headers["cache-control"] == "public, max-age=3600"  # every page view asks: browsers keep it
    d = r.json()
    levels = {x["level"] for x in d["labels"]}
    assert levels == {"district", "street", "community"}
    names = [x["name"] for x in d["labels"]]
    assert "海门区" in names and not any("made up" in n for n in names)
    lon0, lat0, lon1, lat1 = _bbox(client)
    assert all(lon0 <= x["lon"] <= lon1 and lat0 <= x["lat"] <= lat1 for x in d["labels"])
    r = client.get("/api/v1/basemaps/outline")
    assert r.headers["cache-control"] == "public, max-age=3600"
    fc = r.json()
    g = fc["features"][0]["geometry"]
    assert g["type"] in ("Polygon", "MultiPolygon") and fc["features"][0]["properties"]["name"] == haimen.name
    ring = np.array(g["coordinates"][0] if g["type"] == "Polygon" else g["coordinates"][0][0])
    assert ring[:, 0].min() == pytest.approx(lon0, abs=1e-3) and ring[:, 1].max() == pytest.approx(lat1, abs=1e-3)


def _bbox(client):
    cfg = client.get("/api/v1/config").json()
    return next(c for c in cfg["cities"] if c["slug"] == "haimen")["bbox"]


def test_public_place_search(client, engine, haimen):
    from layers.cases import gazetteer

    name = f"测试花园{uuid.uuid4().hex[:4]}"
    p = working_point(haimen, 121.2, 31.9)
    with engine.begin() as conn:
        gazetteer.add_places(conn, haimen, [name], ["poi"], [p], source="test")
    lon, lat = gcrs.transform_xy(p.x, p.y, haimen.working_crs, "EPSG:4326")
    d = client.get("/api/v1/public/places", params={"q": name[:-1]}).json()  # part of the name
    hit = d["places"][0]
    assert hit["name"] == name and hit["kind"] == "地点" and set(hit) == {"name", "kind", "lon", "lat"}
    assert hit["lon"] == pytest.approx(float(lon), abs=1e-6) and hit["lat"] == pytest.approx(float(lat), abs=1e-6)
    # An address that contains the name finds it too; in GCJ-02 when asked (as the page does on GCJ-02 maps).
    d = client.get("/api/v1/public/places", params={"q": f"海门区{name}南门", "crs": "GCJ-02"}).json()
    glon, glat = gcrs.wgs84_to_gcj02(float(lon), float(lat))
    hit = next(x for x in d["places"] if x["name"] == name)
    assert hit["lon"] == pytest.approx(float(glon), abs=1e-6) and hit["lat"] == pytest.approx(float(glat), abs=1e-6)
    assert client.get("/api/v1/public/places", params={"q": "不存在的地方xyz"}).json() == {"places": []}
    r = client.get("/api/v1/public/places", params={"q": "  "})
    assert r.status_code == 422 and "地名" in r.json()["detail"]
    assert client.get("/api/v1/public/places", params={"q": "x", "crs": "EPSG:4549"}).status_code == 422


def test_favicon(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/x-icon"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "ICO" and img.size[0] >= 16
