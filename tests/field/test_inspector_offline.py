"""The /inspector page in Chromium (issue 13): its service worker keeps the page and the day's worklist
offline (an offline reload still shows both); a pin by hand when there is no GPS fix (the report
flagged manual_pin); every worklist task has its action — a new report's 核实 goes through the on-site
check with a photo, shown in the case's photo strip."""

from __future__ import annotations

import itertools
import uuid

import numpy as np
import pytest
import shapely
from sqlalchemy import text

from tests.conftest import auth
from tests.field.conftest import PHOTOS, inspector_context, jpeg

pytestmark = pytest.mark.browser
_SPOTS = itertools.count()


def _spot() -> tuple[float, float]:
    k = next(_SPOTS)
    return 121.145 + 0.004 * (k % 10), 31.875 - 0.004 * (k // 10)


@pytest.fixture
def collected(engine, haimen, departments):
    """A hotline case waiting to be accepted (核实 task) and an inspector of its street."""
    from gis import crs as gcrs
    from layers.cases import calendar as lcal
    from layers.cases import workflow as lwf
    from layers.core.users import add_user

    lon, lat = _spot()
    with engine.begin() as conn:
        x, y = gcrs.transform_xy(np.array([lon]), np.array([lat]), "EPSG:4326", haimen.working_crs)
        op, _ = add_user(conn, f"off_op_{uuid.uuid4().hex[:8]}", "operator")
        case = lwf.open_case(conn, haimen, source="hotline", channel="电话", category_code="E10201",
                             received_at=lcal.now(), location=shapely.Point(float(x[0]), float(y[0])),
                             description="渣土堆在路边 spoil by the road", actor=op)
        assert case.state == "collected" and case.merged_into is None
        street = case.cell_code[:9]
        insp, tok = add_user(conn, f"off_insp_{uuid.uuid4().hex[:8]}", "inspector", area_code=street)
    return {"id": case.id, "case_no": case.case_no, "lon": lon, "lat": lat, "inspector": insp, "h": auth(tok)}


def _controlled(page):
    page.wait_for_function("navigator.serviceWorker && navigator.serviceWorker.controller !== null", timeout=20_000)


def test_service_worker_keeps_page_and_worklist_offline(browser, live_server, engine, collected):
    c = collected
    ctx, page, errors = inspector_context(browser, c["h"], lang="zh")
    page.goto(live_server + "/inspector")
    _controlled(page)
    scope = page.evaluate("navigator.serviceWorker.getRegistration().then((r) => new URL(r.scope).pathname)")
    assert scope == "/inspector"
    page.click("#tabs button[data-tab=work]")
    row = f"#cases li[data-case='{c['id']}']"
    page.wait_for_selector(row, timeout=20_000)
    assert page.locator("#work-cached").is_hidden()

    ctx.set_offline(True)
    assert page.evaluate("navigator.onLine") is False
    page.reload()
    # The page itself came from the worker's cache; the worklist too, and it says so.
    assert page.inner_text("h1").startswith("巡查上报")
    page.click("#tabs button[data-tab=work]")
    page.wait_for_selector(row, timeout=20_000)
    assert c["case_no"] in page.inner_text(row)
    assert page.locator(f"{row} button.verify-btn").inner_text().startswith("核实")
    cached = page.inner_text("#work-cached")
    assert page.locator("#work-cached").is_visible() and "离线" in cached
    page.click("#tabs button[data-tab=report]")
    page.wait_for_function("document.querySelectorAll('#category option').length > 5")
    # Another user signed in on the same phone never gets this one's saved worklist.
    from layers.core.users import add_user

    with engine.begin() as conn:
        _, other = add_user(conn, f"off_insp2_{uuid.uuid4().hex[:8]}", "inspector")
    fetched = page.evaluate("""async (t) => {
        const get = (tok) => fetch('/api/v1/worklist', {headers: {Authorization: 'Bearer ' + tok}})
            .then((r) => r.headers.get('X-Citygrid-Cached') ? 'cached' : 'network', () => 'failed');
        return [await get(localStorage.getItem('citygrid_token')), await get(t)];
    }""", other)
    assert fetched == ["cached", "failed"]
    # Signing out forgets the saved worklist (the page stays).
    page.evaluate("""() => new Promise((res) => {
        navigator.serviceWorker.addEventListener('message', (e) => e.data === 'forgotten' && res());
        citygridForgetOffline();
    })""")
    again = page.evaluate("""() => fetch('/api/v1/worklist', {headers: {Authorization: 'Bearer ' + localStorage.getItem('citygrid_token')}})
        .then(() => 'answered', () => 'failed')""")
    assert again == "failed"
    assert not errors, errors
    ctx.close()


def test_pin_by_hand_without_gps(browser, live_server, engine, collected, tmp_path):
    c = collected
    ctx, page, errors = inspector_context(browser, c["h"], lang="zh")  # no geolocation permission: no fix
    page.goto(live_server + "/inspector")
    page.wait_for_selector("#pin-box:not([hidden])", timeout=20_000)  # offered by itself when the fix fails
    assert "手动选点" in page.inner_text("#loc")
    page.wait_for_function("document.querySelectorAll('#category option').length > 5")
    page.wait_for_function("document.querySelector('#pinmap .leaflet-tile-pane') !== null")
    page.click("#pinmap", position={"x": 180, "y": 120})
    page.wait_for_function("document.getElementById('pin-info').textContent.includes('手动选点')")
    pin = page.evaluate("state.pin")
    page.select_option("#category", "E10101")
    photo = tmp_path / "pin.jpg"
    photo.write_bytes(jpeg(931))
    page.set_input_files("#photos", str(photo))
    page.click("#submit")
    page.wait_for_function("document.getElementById('status').textContent.includes('已上报')", timeout=20_000)
    status = page.inner_text("#status")
    assert "手动选点" in status and "manual_pin" not in status
    with engine.connect() as conn:
        flags, lon, lat = conn.execute(text("""
            SELECT flags, ST_X(ST_Transform(device_location, 4326)), ST_Y(ST_Transform(device_location, 4326))
            FROM field_report WHERE user_id = :u ORDER BY id DESC LIMIT 1"""), {"u": c["inspector"].id}).one()
    assert "manual_pin" in flags and "accuracy_unknown" in flags
    assert lon == pytest.approx(pin["lon"], abs=1e-6) and lat == pytest.approx(pin["lat"], abs=1e-6)
    assert not errors, errors
    ctx.close()


def test_confirm_task_goes_through_the_check_with_a_photo(browser, live_server, engine, collected):
    c = collected
    ctx, page, errors = inspector_context(browser, c["h"], height=1200, lang="zh",
                                          geolocation={"latitude": c["lat"], "longitude": c["lon"], "accuracy": 8})
    page.goto(live_server + "/inspector")
    page.click("#tabs button[data-tab=work]")
    btn = f"#cases button.verify-btn[data-case='{c['id']}']"
    page.wait_for_selector(btn, timeout=20_000)
    assert page.get_attribute(btn, "data-task") == "confirm"
    page.click(btn)
    page.wait_for_function("document.getElementById('vok').textContent.includes('属实')", timeout=20_000)
    assert "不属实" in page.inner_text("#vfail")
    page.wait_for_selector("#vphotos-box .cp-empty")  # no photo yet
    page.set_input_files("#vphotos", str(PHOTOS / "DSCN0021.jpg"))
    page.fill("#vnote", "现场确有渣土")
    page.click("#vok")
    page.wait_for_function("document.getElementById('vresult').textContent.includes('属实')", timeout=20_000)
    # The photo appears in the case's strip, as a 核查照片, and enlarges in the viewer.
    page.wait_for_selector("#vphotos-box img.cp-thumb[data-kind=verification][data-loaded='1']", timeout=20_000)
    assert "核查照片" in page.inner_text("#vphotos-box")
    page.click("#vphotos-box img.cp-thumb")
    page.wait_for_function("document.getElementById('cp-viewer-img').naturalWidth > 0", timeout=20_000)
    assert "核查照片" in page.inner_text("#cp-viewer-caption") and "核实" in page.inner_text("#cp-viewer-caption")
    page.keyboard.press("Escape")
    assert page.locator("#cp-viewer").is_hidden()
    with engine.connect() as conn:
        state = conn.execute(text("SELECT state FROM case_file WHERE id = :i"), {"i": c["id"]}).scalar_one()
        kind, data, photos = conn.execute(text("""SELECT kind, data, photos FROM case_event WHERE case_id = :i
                                                  ORDER BY id DESC LIMIT 1"""), {"i": c["id"]}).one()
    assert state == "collected"  # the operator decides; the check is on the record
    assert kind == "note" and data["onsite_check"] == "confirmed" and len(photos) == 1
    assert not errors, errors
    ctx.close()
