"""The /planner page in headless Chromium: catalog on a map, pick layer/area/format/CRS, download."""

from __future__ import annotations

import pyogrio
import pytest
from sqlalchemy import text

pytestmark = pytest.mark.browser


def test_planner_downloads_grid_gpkg_4490(browser, live_server, tokens, engine, tmp_path):
    page = browser.new_page(locale="zh-CN", accept_downloads=True)
    page.goto(live_server + "/planner")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=20_000)
    assert "规划数据目录与下载" in page.inner_text("header")
    page.fill("#token", tokens["planner"])
    page.dispatch_event("#token", "change")
    page.wait_for_function("document.body.dataset.catalog === 'full'")
    assert "单元网格" in page.inner_text("#layers") and "城市部件" in page.inner_text("#layers")
    page.check("#l-grid_cells")
    page.wait_for_function("(document.body.dataset.preview || '').startsWith('grid_cells:')", timeout=20_000)
    assert int(page.evaluate("document.body.dataset.preview").split(":")[1]) > 100  # the preview is drawn
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
    page.close()
