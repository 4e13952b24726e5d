"""The operator's page in headless Chromium: class suggestions under the call form's description (a
click picks the class), and the needs-location tab's places found in the text, confirmed by a click."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from sqlalchemy import text

from gis import crs as gcrs
from layers.cases import gazetteer
from tests.conftest import auth

VIEWPORT = {"width": 1440, "height": 900}
GYM = (121.160, 31.880)  # a made-up landmark in Haimen


@pytest.fixture(scope="module")
def gym(engine, haimen):
    x, y = gcrs.transform_xy(np.array([GYM[0]]), np.array([GYM[1]]), "EPSG:4326", haimen.working_crs)
    with engine.begin() as conn:
        if not conn.execute(text("SELECT 1 FROM gazetteer WHERE name = '银杏体育馆'")).first():
            gazetteer.add_places(conn, haimen, ["银杏体育馆"], ["poi"], [shapely.Point(x[0], y[0])], source="test")


def test_call_form_suggests_and_queue_places_by_text(browser, live_server, client, tokens, engine, city_model, gym):
    ctx = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live_server + "/operator#token=" + tokens["operator"])
    page.wait_for_selector("body[data-ready='1']", timeout=15000)
    page.fill("#description", "人民路上的路灯坏了好几天，晚上很黑")
    first = page.locator("#text-suggest button.text-class").first
    first.wait_for(timeout=15000)
    chip = first.inner_text()
    assert chip.startswith("路灯") and "%" in chip and "→" in chip  # class, probability, department
    assert page.locator("#text-suggest button.text-class").count() == 3
    first.click()
    assert page.eval_on_selector("#category", "e => e.value").startswith("0110")
    # a queued case whose text names the landmark
    r = client.post("/api/v1/cases", headers=auth(tokens["operator"]), json={
        "category_code": "E10101", "description": "银杏体育馆北门外垃圾成堆，天热味道很大。",
        "address": "来电未说明门牌"})  # an address the gazetteer cannot place: the case waits for a location
    assert r.status_code == 201 and r.json()["needs_location"], r.text
    cid = r.json()["id"]
    page.click('[data-tab="queue"]')
    btn = page.locator(f'#text-place button.text-confirm[data-id="{cid}"]').first
    btn.wait_for(timeout=15000)
    case_box = page.locator(f'#text-place .text-case[data-id="{cid}"]')
    assert case_box.locator("mark").inner_text() == "银杏体育馆"
    assert "95%" in case_box.inner_text() and "垃圾" in case_box.inner_text()  # place confidence, classes
    btn.click()
    page.locator(f'#text-place .text-case[data-id="{cid}"] .ok').wait_for(timeout=15000)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT cell_code, location_source FROM case_file WHERE id = :i"), {"i": cid}).one()
    assert row[1] == "text" and row[0] and row[0] in case_box.inner_text()
    assert not errors, errors
    ctx.close()
