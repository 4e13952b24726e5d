"""The /planner page in headless Chromium: catalog on a map, pick layer/area/format/CRS, download."""

from __future__ import annotations

import pyogrio
import pytest
from sqlalchemy import text

pytestmark = pytest.mark.browser


def test_planner_downloads_grid_gpkg_4490(browser, live_server, tokens, engine, tmp_path):
    page = browser.new_page(locale="zh-CN", accept_downloads=True)
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live_server + "/planner")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=20_000)
    assert "规划数据目录与下载" in page.inner_text("header")
    # The city on opening, before any layer is ticked: its outline drawn, the map fitted to it, names shown.
    page.wait_for_selector("#map[data-cg-ready='1']")
    outline = page.evaluate("""(() => { const fc = plannerMap.cg.outline.toGeoJSON();
        const b = plannerMap.cg.outline.getBounds(), v = plannerMap.getBounds();
        return [fc.features.length, v.contains(b), b.getNorth() - b.getSouth(), v.getNorth() - v.getSouth()]; })()""")
    assert outline[0] == 1 and outline[1] and outline[2] > 0.5 * outline[3]  # whole city in view, filling it
    assert page.locator("#map .leaflet-pane path").count() >= 1
    assert "海门区" in page.inner_text("#map")  # the reference map's district label
    page.fill("#token", tokens["planner"])
    page.dispatch_event("#token", "change")
    page.wait_for_function("document.body.dataset.catalog === 'full'")
    assert "单元网格" in page.inner_text("#layers") and "城市部件" in page.inner_text("#layers")
    page.check("#l-grid_cells")
    page.wait_for_function("(document.body.dataset.preview || '').startsWith('grid_cells:')", timeout=20_000)
    assert int(page.evaluate("document.body.dataset.preview").split(":")[1]) > 100  # the preview is drawn
    # …from the layer's vector tiles (the whole layer), not a capped GeoJSON page of it.
    assert any("/api/v1/tiles/grid_cells/" in u and u.split("?")[0].endswith(".mvt") for u in requests)
    assert not any("/ogc/collections/grid_cells/items" in u for u in requests)
    assert "个要素" in page.inner_text("#preview-info")
    page.fill("#area", "320614001")
    page.select_option("#format", "gpkg")
    page.select_option("#crs", "EPSG:4490")
    try:
        with page.expect_download(timeout=60_000) as dl:
            page.click("#download")
    except Exception:
        raise AssertionError("no download; the page says: " + page.inner_text("#msg")) from None
    d = dl.value
    assert d.suggested_filename.startswith("haimen_grid_cells_") and d.suggested_filename.endswith("_EPSG4490.gpkg")
    path = tmp_path / d.suggested_filename
    d.save_as(path)
    page.wait_for_selector(".msg.ok")
    assert "已下载" in page.inner_text("#msg")
    # The download went through an export job whose progress the page showed.
    assert any("/export-jobs" in u for u in requests)
    assert page.evaluate("document.body.dataset.job") == "done:100.0" or page.evaluate(
        "document.body.dataset.job").startswith("done:100")
    assert page.is_visible("#progress") and "导出完成" in page.inner_text("#job-text")
    df = pyogrio.read_dataframe(path, layer="grid_cells", columns=["code"])
    with engine.connect() as c:
        n = c.execute(text("""SELECT count(*) FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id AND g.active
                              JOIN city ON city.id = g.city_id AND city.slug = 'haimen'
                              WHERE gc.code LIKE '320614001%'""")).scalar_one()
    assert len(df) == n > 1000 and df.crs.to_epsg() == 4490
    # a bad choice shows the server's message
    page.select_option("#format", "kml")
    page.click("#download")
    page.wait_for_selector(".msg.err")
    assert "KML" in page.inner_text("#msg")
    page.screenshot(path=str(tmp_path / "planner.png"))
    assert not errors, errors
    page.close()
