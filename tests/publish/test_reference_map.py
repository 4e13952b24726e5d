"""The reference map (no base map configured): names of the district, streets and communities by zoom, the
grid's vector tiles from zoom 15, key zones with their names only for staff who may read them."""

from __future__ import annotations

import uuid

import pytest
import shapely
from sqlalchemy import text

pytestmark = pytest.mark.browser


def test_reference_map_names_grid_and_key_zones(browser, live_server, engine, haimen, tokens):
    from layers.field import zones as lzones

    tag = uuid.uuid4().hex[:4]
    with engine.begin() as conn:
        x, y, lon, lat, community = conn.execute(text("""
            SELECT ST_X(p), ST_Y(p), ST_X(ST_Transform(p, 4326)), ST_Y(ST_Transform(p, 4326)),
                   regexp_replace(a.name, ' \\(made up\\)$', '')
            FROM (SELECT ST_PointOnSurface(geom) AS p, name FROM admin_area
                  WHERE city_id = :c AND level = 'community' ORDER BY code LIMIT 1) a"""), {"c": haimen.id}).one()
        lzones.upsert_zones(conn, haimen, [{"geometry": shapely.Point(x + 120, y).buffer(40), "code": f"REF-{tag}",
                                            "name": f"测试广场{tag}", "type": "广场", "frequency": "daily"}],
                            haimen.working_crs, source="test")
    page = browser.new_page(viewport={"width": 1366, "height": 900}, locale="zh-CN")
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(live_server + "/planner")
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=20_000)
        # City view: the district's name; streets from zoom 11; no grid tiles below zoom 15.
        assert "海门区" in page.inner_text("#map")
        assert not any("/tiles/grid_cells/" in u for u in requests)
        page.evaluate("([lat, lon]) => plannerMap.setView([lat, lon], 16, {animate: false})", [lat, lon])
        page.wait_for_function("(n) => document.getElementById('map').innerText.includes(n)", arg=community)
        page.wait_for_function("() => performance.getEntriesByType('resource').some((e) => e.name.includes('/tiles/grid_cells/16/'))")
        assert f"测试广场{tag}" not in page.inner_text("#map")  # key zones: not for anonymous callers
        page.fill("#token", tokens["planner"])
        page.dispatch_event("#token", "change")
        page.wait_for_function("(n) => document.getElementById('map').innerText.includes(n)", arg=f"测试广场{tag}",
                               timeout=20_000)
    finally:
        page.close()


@pytest.mark.parametrize("path", ["/public", "/planner"])
def test_map_pages_fit_a_phone(browser, live_server, path):
    page = browser.new_page(viewport={"width": 390, "height": 844}, locale="zh-CN", is_mobile=True, has_touch=True)
    try:
        page.goto(live_server + path)
        page.wait_for_selector("[data-cg-ready='1']", timeout=20_000)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        box = page.locator("[data-cg-ready='1']").bounding_box()
        assert box["width"] >= 300 and box["height"] >= 250  # a usable map, not a sliver
        assert page.evaluate("fetch('/favicon.ico').then((r) => r.status)") == 200
    finally:
        page.close()
