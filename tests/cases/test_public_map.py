"""/public in Chromium: the place picked on the map (a tap at a pixel) becomes the case's location, in the
right cell; address search moves the pin to the gazetteer's point; the form is cleared after submitting; on
a GCJ-02 base map the city's layers are shifted by the GCJ-02 offset (as gis.crs computes it) and the place
is sent in GCJ-02."""

from __future__ import annotations

import io
import json
import sqlite3
import uuid

import pytest
from PIL import Image
from sqlalchemy import text

from gis import crs as gcrs
from tests.cases.conftest import working_point

pytestmark = pytest.mark.browser


def _cell_centre(engine, haimen, offset: int = 0) -> tuple[str, float, float]:
    """A whole cell inside the city (its code, the WGS-84 lon/lat of its centre)."""
    with engine.connect() as conn:
        return tuple(conn.execute(text("""
            SELECT c.code, ST_X(p), ST_Y(p) FROM (
                SELECT c.code, ST_Transform(ST_Centroid(c.geom), 4326) AS p FROM grid_cell c
                JOIN grid g ON g.id = c.grid_id AND g.active AND g.city_id = :c
                WHERE NOT c.partial ORDER BY c.id OFFSET :o LIMIT 1) c"""), {"c": haimen.id, "o": 5000 + offset}).one())


def _open(browser, live_server, path="/public"):
    page = browser.new_page(viewport={"width": 1000, "height": 1200}, locale="zh-CN")
    page.js_errors = []
    page.on("pageerror", lambda e: page.js_errors.append(str(e)))
    page.on("console", lambda m: page.js_errors.append(m.text) if m.type == "error" else None)  # no failed request either
    page.goto(live_server + path)
    page.wait_for_selector("#category[data-loaded='1']")
    page.wait_for_selector("body[data-map-ready='1']")
    return page


def _tap(page, lat, lon, zoom=18):
    """Centre the map near (lat, lon) and click the pixel where that WGS-84 point is drawn."""
    page.evaluate("([lat, lon, z]) => CGPublic.map.setView([lat + 0.0003, lon - 0.0004], z, {animate: false})",
                  [lat, lon, zoom])
    pt = page.evaluate("([lat, lon]) => { const p = CGPublic.map.latLngToContainerPoint([lat, lon]); return [p.x, p.y]; }",
                       [lat, lon])
    box = page.locator("#pick-map").bounding_box()
    page.mouse.click(box["x"] + pt[0], box["y"] + pt[1])
    page.wait_for_selector("#pick-map[data-picked='1']")


def _case(engine, case_no, lon, lat):
    with engine.connect() as conn:
        return conn.execute(text("""
            SELECT c.cell_code, ST_Distance(c.location, ST_Transform(ST_SetSRID(ST_MakePoint(:x, :y), 4326), ST_SRID(c.location))),
                   c.location_source
            FROM case_file c WHERE c.case_no = :n"""), {"n": case_no, "x": lon, "y": lat}).one()


def test_a_place_tapped_on_the_map_becomes_the_case_location_and_the_form_is_cleared(browser, live_server, engine, haimen):
    code, lon, lat = _cell_centre(engine, haimen)
    page = _open(browser, live_server)
    try:
        # Opening: the city's outline and the reference map (names) are drawn; no CRS picker, no lon/lat boxes.
        assert page.locator("#pick-map .leaflet-overlay-pane path, #pick-map .leaflet-pane path").count() >= 1
        assert page.locator("select#crs").count() == 0 and not page.is_visible("#lon")
        _tap(page, lat, lon)
        picked = page.evaluate("CGPublic.picked()")
        assert picked["crs"] == "EPSG:4326"
        assert float(picked["lon"]) == pytest.approx(lon, abs=2e-5) and float(picked["lat"]) == pytest.approx(lat, abs=2e-5)
        # no class is chosen for the citizen: sending without one is refused on the page, nothing sent
        assert page.input_value("#category") == ""
        page.click("#submit")
        assert "请选择问题类别" in page.inner_text("#report-result")
        page.select_option("#category", "E50201")
        page.fill("#description", "店门口占道经营 地图选点测试")
        page.fill("#name", "王五")
        page.fill("#phone", "13900000000")
        page.click("#submit")
        page.wait_for_selector("#new-case-no")
        case_no = page.inner_text("#new-case-no")
        cell, dist, source = _case(engine, case_no, lon, lat)
        assert dist < 3.0, f"the case lies {dist:.1f} m from the tapped point"
        assert cell == code
        # Cleared: text, personal data, the pin and the place; ready for the next report.
        assert page.input_value("#description") == "" and page.input_value("#name") == ""
        assert page.input_value("#phone") == "" and page.input_value("#lon") == "" and page.input_value("#lat") == ""
        assert page.locator("#pick-map .leaflet-marker-pane .leaflet-marker-icon").count() == 0
        assert page.get_attribute("#report-form", "data-cleared") == "1"
        # The look-up on its own tab, filled with the new case.
        assert page.is_hidden("#lookup")
        page.click("#tab-lookup")
        assert page.is_visible("#lookup") and page.is_hidden("#report")
        assert page.input_value("#case-no") == case_no
        # Submitting without a place or an address is refused on the page, in Chinese.
        page.click("#tab-report")
        page.fill("#description", "没有位置")
        page.click("#submit")
        assert "请在地图上选择位置" in page.inner_text("#report-result")
        assert not page.js_errors, page.js_errors
    finally:
        page.close()


def test_address_search_moves_the_pin_to_the_gazetteer_point(browser, live_server, engine, haimen):
    from layers.cases import gazetteer

    name = f"测试公园{uuid.uuid4().hex[:4]}"
    _, lon, lat = _cell_centre(engine, haimen, 77)
    p = working_point(haimen, lon, lat)
    with engine.begin() as conn:
        gazetteer.add_places(conn, haimen, [name], ["poi"], [p], source="test")
    page = _open(browser, live_server)
    try:
        page.fill("#place-q", name[:-1])
        page.press("#place-q", "Enter")
        page.wait_for_selector("#place-results button")
        assert name in page.inner_text("#place-results")
        page.click("#place-results button")
        page.wait_for_selector("#pick-map[data-picked='1']")
        pin = page.evaluate("(() => { let ll = null; CGPublic.map.eachLayer((l) => { if (l instanceof L.Marker && l.options.draggable) ll = l.getLatLng(); }); return [ll.lng, ll.lat]; })()")
        assert pin[0] == pytest.approx(lon, abs=1e-6) and pin[1] == pytest.approx(lat, abs=1e-6)
        assert page.input_value("#address") == name
        picked = page.evaluate("CGPublic.picked()")
        assert float(picked["lon"]) == pytest.approx(lon, abs=1e-6)
        assert not page.js_errors, page.js_errors
    finally:
        page.close()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (235, 230, 220)).save(buf, format="PNG")
    return buf.getvalue()


def test_on_a_gcj02_base_map_overlays_are_shifted_and_the_place_is_sent_in_gcj02(browser, live_server, engine, haimen,
                                                                                tmp_path, monkeypatch):
    # A GCJ-02 base map served by the app itself (an XYZ template over an MBTiles file), shown on opening.
    path = tmp_path / "gcj.mbtiles"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE metadata (name text, value text); CREATE TABLE tiles (zoom_level integer, "
                     "tile_column integer, tile_row integer, tile_data blob);")
    db.execute("INSERT INTO metadata VALUES ('format', 'png')")
    db.execute("INSERT INTO tiles VALUES (0, 0, 0, ?)", (_png(),))
    db.commit()
    db.close()
    monkeypatch.setenv("CITYGRID_BASEMAP_MBTILES", json.dumps({"gcjtiles": str(path)}))
    monkeypatch.setenv("CITYGRID_BASEMAP_XYZ", json.dumps([{"name": "gcjmap", "title": "测试 GCJ-02 底图",
                                                             "url": "/api/v1/basemaps/gcjtiles/{z}/{x}/{y}",
                                                             "crs": "GCJ-02"}]))
    monkeypatch.setenv("CITYGRID_BASEMAP_DEFAULT", "gcjmap")
    code, lon, lat = _cell_centre(engine, haimen, 311)
    glon, glat = (float(v) for v in gcrs.wgs84_to_gcj02(lon, lat))
    page = _open(browser, live_server)
    try:
        assert page.get_attribute("#pick-map", "data-cg-crs") == "GCJ-02"
        assert page.get_attribute("#pick-map", "data-cg-basemap") == "gcjmap"
        # The page's GCJ-02 transform is gis.crs's, both ways.
        js = page.evaluate("([lon, lat]) => [CGMap.wgs2gcj(lon, lat), CGMap.gcj2wgs(...CGMap.wgs2gcj(lon, lat))]", [lon, lat])
        assert js[0] == pytest.approx([glon, glat], abs=1e-10) and js[1] == pytest.approx([lon, lat], abs=1e-10)
        # An overlay point given in WGS-84 is drawn where the GCJ-02 tiles show that place: at the Web
        # Mercator pixel of its GCJ-02 coordinates, i.e. shifted by the GCJ-02 offset (tens of pixels at z18).
        page.evaluate("([lat, lon]) => CGPublic.map.setView([lat, lon], 18, {animate: false})", [lat, lon])
        page.evaluate("([lat, lon]) => CGPublic.pick(lat, lon)", [lat, lon])
        drawn, expected, plain = page.evaluate("""([lat, lon, glat, glon]) => {
            const m = CGPublic.map; let pin = null;
            m.eachLayer((l) => { if (l instanceof L.Marker && l.options.draggable) pin = l; });
            const pos = L.DomUtil.getPosition(pin._icon), origin = m.getPixelOrigin();
            const e = L.CRS.EPSG3857.latLngToPoint(L.latLng(glat, glon), m.getZoom()).subtract(origin);
            const w = L.CRS.EPSG3857.latLngToPoint(L.latLng(lat, lon), m.getZoom()).subtract(origin);
            return [[pos.x, pos.y], [e.x, e.y], [w.x, w.y]]; }""", [lat, lon, glat, glon])
        assert drawn == pytest.approx(expected, abs=1.0)
        assert abs(drawn[0] - plain[0]) + abs(drawn[1] - plain[1]) > 50  # really shifted
        # The city's outline is shifted the same way (a vertex of its path vs. its GCJ-02 pixel).
        vertex, at = page.evaluate("""(() => {
            const m = CGPublic.map; let poly = null; m.cg.outline.eachLayer((l) => { poly = l; });
            let ll = poly.getLatLngs(); while (Array.isArray(ll[0])) ll = ll[0];
            return [[ll[0].lng, ll[0].lat], [poly._rings[0][0].x, poly._rings[0][0].y]]; })()""")
        vlon, vlat = (float(v) for v in gcrs.wgs84_to_gcj02(*vertex))
        want = page.evaluate("""([lat, lon]) => { const p = L.CRS.EPSG3857.latLngToPoint(L.latLng(lat, lon),
            CGPublic.map.getZoom()).subtract(CGPublic.map.getPixelOrigin()); return [p.x, p.y]; }""", [vlat, vlon])
        assert at == pytest.approx(want, abs=1.0)
        # The reference map's vector tiles (WGS-84 Web Mercator; an overlay here) are moved by the local GCJ-02
        # offset as a whole.
        moved, offset = page.evaluate("""(() => { const m = CGPublic.map; m.addLayer(m.cg.reference);
            const c = m.getCenter(), z = m.getZoom();
            const d = CGMap.GCJ_CRS.latLngToPoint(c, z).subtract(L.CRS.EPSG3857.latLngToPoint(c, z));
            return [m.cg.wgsTiles[0].getContainer().style.transform, [d.x, d.y]]; })()""")
        assert moved == f"translate({offset[0]:.2f}px, {offset[1]:.2f}px)" and abs(offset[0]) > 50
        picked = page.evaluate("CGPublic.picked()")
        assert picked["crs"] == "GCJ-02"
        assert float(picked["lon"]) == pytest.approx(glon, abs=2e-7) and float(picked["lat"]) == pytest.approx(glat, abs=2e-7)
        # A tap: the pixel of the place on the GCJ-02 map → the case lies at the WGS-84 place, in its cell.
        page.evaluate("CGPublic.map.eachLayer((l) => { if (l instanceof L.Marker && l.options.draggable) CGPublic.map.removeLayer(l); })")
        _tap(page, lat, lon)
        page.select_option("#category", "E50201")
        page.fill("#description", "GCJ-02 地图选点测试")
        page.click("#submit")
        page.wait_for_selector("#new-case-no")
        cell, dist, _ = _case(engine, page.inner_text("#new-case-no"), lon, lat)
        assert dist < 3.0 and cell == code
        assert not page.js_errors, page.js_errors
    finally:
        page.close()
