"""The operator workbench (/operator) in headless Chromium: a hotline call recorded on the page goes
to a rated close through the pages (operator → department → inspector → operator → citizen on
/public), every step asserted from the database; the needs-location queue placed by a click on the
map, its cell checked independently in PostGIS; the API's refusals shown on the page."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import SHARED, auth

pytestmark = pytest.mark.usefixtures("departments")

VIEWPORT = {"width": 1440, "height": 900}


def cell_at(engine, city, lon, lat) -> dict:
    """The active-grid cell covering (lon, lat), by PostGIS alone, with its centre in WGS-84."""
    with engine.connect() as c:
        r = c.execute(text("""
            SELECT gc.code, ST_X(ST_Transform(ST_PointOnSurface(gc.geom), 4326)),
                   ST_Y(ST_Transform(ST_PointOnSurface(gc.geom), 4326))
            FROM grid_cell gc JOIN grid g ON g.id = gc.grid_id AND g.active AND g.city_id = :city
            WHERE ST_Covers(gc.geom, ST_Transform(ST_SetSRID(ST_MakePoint(:lon, :lat), 4326), :srid))"""),
            {"city": city.id, "lon": lon, "lat": lat, "srid": city.srid}).one()
    return {"code": r[0], "lon": r[1], "lat": r[2]}


def case_row(engine, case_id) -> dict:
    with engine.connect() as c:
        return dict(c.execute(text("""
            SELECT f.case_no, f.state, f.channel, f.request_type, f.category_code, f.cell_code, f.department_id,
                   f.closed_at, f.rating, f.location IS NOT NULL AS located, d.code AS department_code
            FROM case_file f LEFT JOIN department d ON d.id = f.department_id WHERE f.id = :i"""),
            {"i": case_id}).mappings().one())


def events(engine, case_id) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(text("""
            SELECT e.kind, e.from_state, e.to_state, e.actor_role, d.code
            FROM case_event e LEFT JOIN department d ON d.id = e.department_id
            WHERE e.case_id = :i ORDER BY e.at, e.id"""), {"i": case_id})]


def covering_cell(engine, case_id) -> str | None:
    """The cell whose polygon covers the case's stored point (independent of the snapping code)."""
    with engine.connect() as c:
        return c.execute(text("""
            SELECT gc.code FROM case_file f
            JOIN grid g ON g.city_id = f.city_id AND g.active
            JOIN grid_cell gc ON gc.grid_id = g.id AND ST_Covers(gc.geom, f.location)
            WHERE f.id = :i"""), {"i": case_id}).scalar()


def open_page(browser, base, path, token=None):
    ctx = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + path + (f"#token={token}" if token else ""))
    if path.startswith("/operator") and token:
        page.wait_for_selector("body[data-ready='1']", timeout=15000)
    page.js_errors = errors
    return page


def click_map(page, lon, lat, zoom=17):
    """A real mouse click on the map where (lon, lat) is drawn."""
    page.evaluate("([lat, lon, z]) => window.citygridMap.setView([lat, lon], z, {animate: false})", [lat, lon, zoom])
    page.wait_for_timeout(200)
    x, y = page.evaluate("([lat, lon]) => { const p = window.citygridMap.latLngToContainerPoint([lat, lon]); "
                         "return [p.x, p.y]; }", [lat, lon])
    box = page.locator("#map").bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)


def pick_cell(page, target):
    """Click the centre of ``target`` (cell_at) on the map and wait until the page shows its cell."""
    click_map(page, target["lon"], target["lat"])
    page.wait_for_function("(code) => document.getElementById('record-loc').textContent.includes(code)",
                           arg=target["code"], timeout=10000)


def act(page, action, state):
    """Press an action button of the case detail and wait for the case to be in ``state``."""
    page.click(f"#d-buttons button[data-action='{action}']")
    page.wait_for_selector(f"#detail-body[data-state='{state}'] #d-result .ok", timeout=10000)


def test_a_call_to_a_rated_close_through_the_pages(live_server, browser, tokens, haimen, engine, spot):
    from layers.core.users import add_user

    lon, lat = spot()
    target = cell_at(engine, haimen, lon, lat)
    text_ = f"小区门口垃圾堆放 rubbish at the gate {uuid.uuid4().hex[:8]}"

    # 受理: the operator records the call on the page, the location by a click on the map.
    op = open_page(browser, live_server, "/operator", tokens["operator"])
    assert op.inner_text("#who").endswith("· 受理员")  # the role in words, not its code
    op.select_option("#channel", "电话")
    op.select_option("#request-type", "投诉")
    op.select_option("#category", "E10101")
    op.fill("#description", text_)
    op.fill("#address", "海门街道某小区门口")
    op.fill("#caller-name", "张三")
    op.fill("#caller-phone", "13800000000")
    pick_cell(op, target)
    op.click("#record-submit")
    op.wait_for_selector("#new-query-code", timeout=10000)
    case_no = op.inner_text("#new-case-no").strip()
    query_code = op.inner_text("#new-query-code").strip()
    assert len(query_code) == 6 and query_code.isdigit()
    assert "请告知来电人" in op.inner_text("#record-result")
    with engine.connect() as c:
        case_id = c.execute(text("SELECT id FROM case_file WHERE case_no = :n"), {"n": case_no}).scalar_one()
        contact = c.execute(text("SELECT name, phone FROM case_contact WHERE case_id = :i"), {"i": case_id}).one()
    row = case_row(engine, case_id)
    assert (row["state"], row["channel"], row["request_type"], row["category_code"]) == \
        ("collected", "电话", "投诉", "E10101")
    assert row["cell_code"] == target["code"] == covering_cell(engine, case_id)
    assert tuple(contact) == ("张三", "13800000000")
    op.wait_for_selector(f"#detail-body[data-case-id='{case_id}'][data-state='collected']")
    assert "13800000000" in op.inner_text("#d-caller")  # the operator may see the caller
    # Exactly the operator's actions from 信息收集: accept, reject, void.
    assert sorted(op.eval_on_selector_all("#d-buttons button", "bs => bs.map(b => b.dataset.action)")) == \
        ["accept", "reject", "void"]

    # 立案 then 派遣 to the proposed department (事件先属地: the street office of the cell, which has a
    # user: proposals go only to staffed departments).
    street = f"street-{target['code'][:9]}"
    with engine.begin() as c:
        _, dep_token = add_user(c, f"op_page_dept_{uuid.uuid4().hex[:6]}", "department", department=street)
    act(op, "accept", "accepted")
    assert case_row(engine, case_id)["state"] == "accepted"
    assert "事件先属地" in op.inner_text("#d-rule")
    assert op.input_value("#d-department") == street
    assert op.is_hidden("#d-override-row")
    act(op, "dispatch", "dispatched")
    row = case_row(engine, case_id)
    assert (row["state"], row["department_code"]) == ("dispatched", street)
    assert events(engine, case_id) == [("received", None, "collected", "operator", None),
                                       ("accepted", "collected", "accepted", "operator", None),
                                       ("dispatched", "accepted", "dispatched", "operator", street)]

    # 处置: a user of that department signs in, starts and reports it done.
    dep = open_page(browser, live_server, "/operator", dep_token)
    assert dep.is_hidden("#tabs [data-tab='record']") and dep.is_hidden("#tabs [data-tab='queue']")
    dep.wait_for_selector(f"#case-list li[data-id='{case_id}']", timeout=10000)
    dep.click(f"#case-list li[data-id='{case_id}']")
    dep.wait_for_selector(f"#detail-body[data-case-id='{case_id}']")
    assert sorted(dep.eval_on_selector_all("#d-buttons button", "bs => bs.map(b => b.dataset.action)")) == \
        ["return", "start"]
    act(dep, "start", "processing")
    assert case_row(engine, case_id)["state"] == "processing"
    dep.fill("#d-note", "已清运 cleared")
    dep.set_input_files("#cp-after", str(SHARED / "photos" / "DSCN0021.jpg"))  # 处置后 photo (static/common/photos.js)
    act(dep, "feedback", "verifying")
    assert case_row(engine, case_id)["state"] == "verifying"

    # 核查: the /inspector page's worklist lists cases but has no verify buttons, so through the API.
    r = httpx.post(f"{live_server}/api/v1/cases/{case_id}/actions/verify_ok", headers=auth(tokens["inspector"]),
                   json={"photos": ["check.jpg"], "note": "现场已清理 checked on site"})
    assert r.status_code == 200, r.text
    assert case_row(engine, case_id)["state"] == "feedback"

    # 结案 by the operator on the page.
    op.reload()
    op.wait_for_selector("body[data-ready='1']")
    op.click("#tabs [data-tab='list']")
    op.wait_for_selector(f"#case-list li[data-id='{case_id}']", timeout=10000)
    op.click(f"#case-list li[data-id='{case_id}']")
    op.wait_for_selector(f"#detail-body[data-case-id='{case_id}'][data-state='feedback']")
    act(op, "close", "closed")
    row = case_row(engine, case_id)
    assert row["state"] == "closed" and row["closed_at"] is not None and row["rating"] is None
    assert "结案" in op.inner_text("#d-state")

    # 评价: the citizen rates on /public with the case number and the query code the operator gave.
    pub = open_page(browser, live_server, "/public#lookup")  # the look-up's own tab
    pub.fill("#case-no", case_no)
    pub.fill("#query-code", query_code)
    pub.click("#lookup-btn")
    pub.wait_for_selector("#rate-form:not([hidden])", timeout=10000)
    pub.select_option("#rating", "satisfied")
    pub.click("#rate-btn")
    pub.wait_for_selector("#rating-text", timeout=10000)
    assert case_row(engine, case_id)["rating"] == "satisfied"

    assert events(engine, case_id) == [
        ("received", None, "collected", "operator", None),
        ("accepted", "collected", "accepted", "operator", None),
        ("dispatched", "accepted", "dispatched", "operator", street),
        ("started", "dispatched", "processing", "department", street),
        ("feedback", "processing", "verifying", "department", street),
        ("verify_ok", "verifying", "feedback", "inspector", street),
        ("closed", "feedback", "closed", "operator", street),
        ("rated", "closed", "closed", "citizen", None)]
    # The operator's page shows the whole timeline. The list shows open cases first: a closed one is
    # under 全部 All.
    assert op.input_value("#f-state") == "open"
    op.select_option("#f-state", "")
    op.click("#f-apply")
    op.wait_for_selector(f"#case-list li[data-id='{case_id}']", timeout=10000)
    op.click(f"#case-list li[data-id='{case_id}']")
    op.wait_for_function("document.querySelectorAll('#d-events li').length === 8", timeout=10000)
    for p in (op, dep, pub):
        assert p.js_errors == []
        p.context.close()


def test_needs_location_queue_placed_on_the_map(live_server, browser, tokens, haimen, engine, spot):
    text_ = f"路灯不亮 street light out, caller could not say where {uuid.uuid4().hex[:8]}"
    r = httpx.post(f"{live_server}/api/v1/cases", headers=auth(tokens["operator"]),
                   json={"category_code": "E10101", "channel": "电话", "description": text_,
                         "address": "不明地点 nowhere known"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["needs_location"] is True and made["cell_code"] is None
    case_id = made["id"]
    lon, lat = spot()
    target = cell_at(engine, haimen, lon, lat)

    page = open_page(browser, live_server, "/operator", tokens["operator"])
    page.click("#tabs [data-tab='queue']")
    page.wait_for_selector(f"#queue-list li[data-id='{case_id}']", timeout=10000)
    page.click(f"#queue-list li[data-id='{case_id}']")
    page.wait_for_selector("#place-box:not([hidden])")
    click_map(page, target["lon"], target["lat"])
    page.wait_for_function("(code) => document.getElementById('place-cell').textContent === code",
                           arg=target["code"], timeout=10000)
    page.wait_for_timeout(400)  # let the grid and the snapped cell draw before the screenshot
    page.screenshot(path="/tmp/operator.png")
    page.click("#place-confirm")
    page.wait_for_selector("#placed-cell", timeout=10000)
    assert page.inner_text("#placed-cell") == target["code"]

    row = case_row(engine, case_id)
    assert row["located"] and row["cell_code"] == target["code"]
    assert covering_cell(engine, case_id) == target["code"]  # PostGIS agrees with the snap
    assert events(engine, case_id)[-1][:3] == ("located", "collected", "collected")
    # It left the queue: on the page and in the API.
    page.wait_for_selector(f"#queue-list li[data-id='{case_id}']", state="detached", timeout=10000)
    q = httpx.get(f"{live_server}/api/v1/cases/needs-location", headers=auth(tokens["operator"]),
                  params={"limit": 1000}).json()
    assert case_id not in [c["id"] for c in q["cases"]]
    assert page.js_errors == []
    page.context.close()


def test_refusals_of_the_api_are_shown_on_the_page(live_server, browser, tokens, haimen, engine, spot):
    page = open_page(browser, live_server, "/operator", tokens["operator"])

    # A point outside the city: the preview says so and the API's 422 is shown; nothing is written.
    text_ = f"城外 outside {uuid.uuid4().hex[:8]}"
    page.select_option("#category", "E10101")
    page.fill("#description", text_)
    click_map(page, 121.60, 31.60, zoom=12)  # in the sea east of Haimen
    page.wait_for_selector("#record-loc[data-outside='1']", timeout=10000)
    assert "不在本市范围内" in page.inner_text("#record-loc")
    page.click("#record-submit")
    page.wait_for_selector("#record-result .err", timeout=10000)
    msg = page.inner_text("#record-result")
    assert "所选位置不在本市范围内" in msg and "outside" not in msg  # the API's 422, in Chinese
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM case_file WHERE description = :d"), {"d": text_}).scalar() == 0

    # A case recorded on the page, then refused actions.
    page.click("#record-loc-clear")
    lon, lat = spot()
    target = cell_at(engine, haimen, lon, lat)
    pick_cell(page, target)
    page.click("#record-submit")
    page.wait_for_selector("#new-case-no", timeout=10000)
    case_no = page.inner_text("#new-case-no").strip()
    with engine.connect() as c:
        case_id = c.execute(text("SELECT id FROM case_file WHERE case_no = :n"), {"n": case_no}).scalar_one()
    page.wait_for_selector(f"#detail-body[data-case-id='{case_id}']")

    # 不予立案 without a reason: the API's 422 message, the case unchanged.
    page.click("#d-buttons button[data-action='reject']")
    page.wait_for_selector("#d-result .err", timeout=10000)
    assert "须填写原因" in page.inner_text("#d-result") and "不予立案" in page.inner_text("#d-result")
    assert case_row(engine, case_id)["state"] == "collected"

    # Dispatch to another department than proposed without a reason: refused, with the message.
    act(page, "accept", "accepted")
    page.select_option("#d-department", "water")  # never the proposal of this class
    assert page.is_visible("#d-override-row")
    page.click("#d-buttons button[data-action='dispatch']")
    page.wait_for_selector("#d-result .err", timeout=10000)
    assert "须填写改派理由" in page.inner_text("#d-result")
    row = case_row(engine, case_id)
    assert row["state"] == "accepted" and row["department_id"] is None
    # With the reason it goes, and the reason is in the event.
    page.fill("#d-override", "自来水公司负责该处 the water company has this spot")
    act(page, "dispatch", "dispatched")
    assert case_row(engine, case_id)["department_code"] == "water"
    with engine.connect() as c:
        why = c.execute(text("SELECT data->>'override_reason' FROM case_event WHERE case_id = :i AND kind = 'dispatched'"),
                        {"i": case_id}).scalar_one()
    assert why.startswith("自来水公司负责")
    assert [e[0] for e in events(engine, case_id)] == ["received", "accepted", "dispatched"]

    # A bad token: the sign-in form and the API's 401 message.
    bad = open_page(browser, live_server, "/operator?x=1", None)
    bad.evaluate("localStorage.setItem('citygrid_token', 'cg_nonsense')")
    bad.reload()
    bad.wait_for_selector("#error:not([hidden])", timeout=10000)
    assert "令牌无效" in bad.inner_text("#error") and bad.is_visible("#login")  # the refusal of the sign-in, in words
    assert page.js_errors == []
    page.context.close()
    bad.context.close()


def test_words_not_codes_and_the_language_switch(live_server, browser, tokens, haimen, engine, spot):
    """The call form refuses an empty call on the page (nothing sent), a case's detail says its state,
    source, class, department and timeline in words, and the 中文/EN switch redraws it in English."""
    page = open_page(browser, live_server, "/operator", tokens["operator"])
    requests = []
    page.on("request", lambda r: requests.append(r.url) if r.method == "POST" and "/api/v1/cases" in r.url else None)
    page.click("#record-submit")
    page.wait_for_selector("#record-result .err")
    msg = page.inner_text("#record-result")
    assert "请选择类别" in msg and "请填写问题描述" in msg and "请填写地址或在地图上选择位置" in msg
    assert page.get_attribute("#description", "aria-invalid") == "true" and requests == []
    # a class urgent by nature shows its urgency on the form; lower ones cannot be chosen
    page.select_option("#category", "010101")
    assert page.input_value("#urgency") == "emergency" and page.is_visible("#urgency-note")
    assert page.eval_on_selector("#urgency option[value='normal']", "o => o.disabled") is True
    page.select_option("#category", "E10101")
    assert page.eval_on_selector("#urgency option[value='normal']", "o => o.disabled") is False
    page.select_option("#urgency", "urgent")
    page.fill("#description", f"语言切换 language switch {uuid.uuid4().hex[:6]}")
    lon, lat = spot()
    pick_cell(page, cell_at(engine, haimen, lon, lat))
    page.click("#record-submit")
    page.wait_for_selector("#new-case-no", timeout=10000)
    case_no = page.inner_text("#new-case-no").strip()
    with engine.connect() as c:
        case_id, urgency = c.execute(text("SELECT id, urgency FROM case_file WHERE case_no = :n"), {"n": case_no}).one()
    assert urgency == "urgent"  # exactly as chosen
    page.wait_for_selector(f"#detail-body[data-case-id='{case_id}']")
    detail = page.inner_text("#detail-body")
    for words in ("信息收集", "12345热线", "生活垃圾暴露", "紧急", "受理"):
        assert words in detail, words
    for code in ("collected", "hotline", "E10101", "urgent", "received", "operator"):
        assert code not in detail, code
    page.click("#lang")
    page.wait_for_function("document.documentElement.lang === 'en'")
    assert page.inner_text("h1") == "Operator workbench"
    detail = page.inner_text("#detail-body")
    assert "Collected" in detail and "Household rubbish exposed" in detail and "Hotline" in detail
    assert "信息收集" not in detail
    page.reload()
    page.wait_for_selector("body[data-ready='1']", timeout=15000)
    assert page.inner_text("h1") == "Operator workbench"  # the choice is kept
    page.click("#lang")
    assert page.inner_text("h1") == "受理派遣工作台"
    assert page.js_errors == []
    page.context.close()
