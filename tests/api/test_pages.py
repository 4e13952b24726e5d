"""Pages in a real headless Chromium."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_home_page_shows_the_city_and_its_grid(browser, live_server, tmp_path):
    page = browser.new_page(locale="zh-CN")
    page.goto(live_server + "/")
    page.wait_for_function("document.getElementById('health').textContent.includes('EPSG')")
    text = page.inner_text("#health")
    assert "海门区" in text and "EPSG:4549" in text and "单元网格" in text
    cells = int(text.split("个单元网格")[0].split("·")[-1].replace(",", "").strip())
    assert cells > 100_000
    page.screenshot(path=str(tmp_path / "home.png"))
    assert (tmp_path / "home.png").stat().st_size > 5_000
    page.click("text=接口文档")
    page.wait_for_url("**/docs")
    assert "citygrid" in page.title()  # the OpenAPI page of this service (its scripts come from a CDN)
    page.close()
