"""The /inspector page in headless Chromium: location with accuracy, photo, category, submit; then
offline (kept in the outbox) and back online (resent with the same Idempotency-Key, once)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.field.conftest import inspector_context, jpeg

pytestmark = pytest.mark.browser


def _reports(engine, user_id):
    with engine.connect() as c:
        return c.execute(text("""SELECT idempotency_key, accuracy_m, ST_X(ST_Transform(device_location, 4326)),
                                        ST_Y(ST_Transform(device_location, 4326)), category_code
                                 FROM field_report WHERE user_id = :u ORDER BY id"""), {"u": user_id}).all()


def test_inspector_page_submit_offline_and_back(browser, live_server, engine, tmp_path, make_inspector):
    user, h = make_inspector()
    ctx, page, errors = inspector_context(browser, h, geolocation={"latitude": 31.8905, "longitude": 121.1712,
                                                                   "accuracy": 12})
    page.goto(live_server + "/inspector")
    page.wait_for_function("document.getElementById('acc').textContent.includes('±12 m')")
    assert "精度" in page.inner_text("#acc")
    page.wait_for_function("document.querySelectorAll('#category option').length > 5")
    page.select_option("#category", "E10101")
    photo = tmp_path / "p1.jpg"
    photo.write_bytes(jpeg(901))
    page.set_input_files("#photos", str(photo))
    page.fill("#description", "路边垃圾")
    page.click("#submit")
    page.wait_for_function("document.getElementById('status').textContent.includes('已上报')", timeout=20_000)
    status = page.inner_text("#status")
    rows = _reports(engine, user.id)
    assert len(rows) == 1
    key, acc, lon, lat, cat = rows[0]
    assert acc == 12 and cat == "E10101"
    assert lon == pytest.approx(121.1712, abs=1e-6) and lat == pytest.approx(31.8905, abs=1e-6)
    with engine.connect() as c:
        case_no, cell = c.execute(text("SELECT c.case_no, r.cell_code FROM field_report r JOIN case_file c "
                                       "ON c.id = r.case_id WHERE r.idempotency_key = :k"), {"k": key}).one()
    assert case_no in status and cell in status

    # Offline: the report waits in the outbox; nothing reaches the server.
    ctx.set_offline(True)
    photo2 = tmp_path / "p2.jpg"
    photo2.write_bytes(jpeg(902))
    page.set_input_files("#photos", str(photo2))
    page.click("#submit")
    page.wait_for_function("document.getElementById('outbox-count').textContent === '1'")
    assert "待发箱" in page.inner_text("#status")
    pending_key = page.evaluate("""() => new Promise((res) => {
        const r = indexedDB.open('citygrid_inspector', 1);
        r.onsuccess = () => { const q = r.result.transaction('outbox').objectStore('outbox').getAll();
                              q.onsuccess = () => res(q.result.map((x) => x.key)); };
    })""")
    assert len(pending_key) == 1
    assert len(_reports(engine, user.id)) == 1

    # Back online: resent once, with the key it was given offline.
    ctx.set_offline(False)
    page.wait_for_function("document.getElementById('outbox-count').textContent === '0'", timeout=20_000)
    rows = _reports(engine, user.id)
    assert len(rows) == 2 and rows[1][0] == pending_key[0]

    # English switch.
    page.click("#lang")
    assert page.inner_text("#submit") == "Submit report" and "accuracy ±12 m" in page.inner_text("#acc")
    # The worklist on a map.
    page.click("#tabs button[data-tab=work]")
    page.wait_for_function("document.querySelectorAll('#cases li').length > 0", timeout=20_000)
    assert page.locator("#map path.leaflet-interactive").count() > 0  # zones and cases drawn
    page.screenshot(path=str(tmp_path / "inspector.png"))
    assert not errors, errors
    ctx.close()
