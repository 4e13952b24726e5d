"""The /supervisor dashboard in headless Chromium: map layers, KPI cards, charts and the alert feed
render; a screenshot shows the map and the charts drawn."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.browser


def _region(png: bytes, box):
    from io import BytesIO

    from PIL import Image

    img = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)
    x, y, w, h = (int(v) for v in box)
    return img[y:y + h, x:x + w]


def test_dashboard_renders(browser, live_server, bcity, tokens, tmp_path):
    page = browser.new_page(locale="zh-CN", viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{live_server}/supervisor?city=btest#token={tokens['supervisor']}")
    page.wait_for_function("window.dashboardReady === true || window.dashboardError", timeout=30_000)
    assert page.evaluate("window.dashboardError || null") is None
    assert not errors, errors
    # every request stays on our server (no CDN), and no case point is ever asked for
    assert all(u.startswith(live_server) or u.startswith("data:") for u in requests), requests
    assert not any("/cases" in u for u in requests)
    cards = page.inner_text("#cards")
    assert "受理量" in cards and "按期结案率" in cards and "满意率" in cards
    assert int(page.get_attribute("#chart-day", "data-drawn")) >= 28
    assert int(page.get_attribute("#chart-cat", "data-drawn")) >= 5
    assert page.locator(".leaflet-overlay-pane path, .leaflet-overlay-pane canvas").count() >= 1
    assert "件 cases" in page.inner_text("#map-status")
    assert page.locator("#category option").count() > 5
    page.wait_for_function("window.heatReady === true", timeout=30_000)  # the heat's vector tiles are drawn
    page.wait_for_timeout(300)
    shot = page.screenshot(path=str(tmp_path / "supervisor.png"))
    # the map shows colored cells (heat ramp / hot spot bins), the charts show red ink
    m = _region(shot, page.locator("#map").bounding_box().values())
    sat = m.max(axis=2) - m.min(axis=2)
    assert (sat > 60).mean() > 0.02
    c = _region(shot, page.locator("#chart-cat").bounding_box().values())
    assert ((c[..., 0] > 150) & (c[..., 1] < 90)).mean() > 0.02
    # a class filter reloads the layers with fewer cases
    before = int(page.get_attribute("#map-status", "data-map-count"))
    page.select_option("#category", "E10101")
    page.click("text=查询 Apply")
    page.wait_for_function("window.dashboardReady === true", timeout=30_000)
    after = int(page.get_attribute("#map-status", "data-map-count"))
    assert 0 < after < before
    # the cases layer (aggregated cells, never points) loads when it is shown
    with page.expect_response(lambda r: "/api/v1/supervisor/cells" in r.url and r.status == 200):
        page.click("text=案件网格 Cases per cell")
    # the emerging hot spots toggle loads its layer
    page.click("text=时空热点趋势 Emerging hot spots")
    page.wait_for_function("document.getElementById('map-status').textContent.includes('Emerging')", timeout=30_000)
    # the key zones toggle loads their patrol coverage
    with page.expect_response(lambda r: "/api/v1/zones/coverage" in r.url and r.status == 200):
        page.click("text=重点区域巡查 Key zones (patrol)")
    page.wait_for_function("document.getElementById('map-status').textContent.includes('Key zones')", timeout=30_000)
    assert not errors, errors
    page.close()


def test_dashboard_without_token_asks_for_one(browser, live_server):
    page = browser.new_page(locale="zh-CN")
    page.goto(f"{live_server}/supervisor")
    page.wait_for_selector("#login", state="visible")  # signed in by the session now (issue 13): a sign-in button
    page.click("#save-token")
    page.wait_for_url("**/login?next=%2Fsupervisor")
    page.close()
