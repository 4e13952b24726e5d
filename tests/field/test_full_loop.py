"""The whole loop through the pages alone, in Chromium (issue 13, "Done when"): a citizen submits on
/public with a photo → the operator accepts and dispatches → the department starts and gives its
处置反馈 with before/after photos (refused first without the after photo its class needs) → the
inspector checks on site with a photo → the operator closes → the citizen rates through the look-up.
Every step is driven on a page; the API and the database are only read to check results. The photos
are visible at each step that should show them, and no page raises a JavaScript error."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from tests.conftest import SHARED, auth

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("departments")]
PHOTOS = SHARED / "photos"
VIEWPORT = {"width": 1366, "height": 900}
# North-west of the town centre, clear of the other field tests' points.
PLACE = (121.128, 31.905)


def pick_place(page, lon: float, lat: float) -> None:
    """Where the problem is: a tap on /public's map at the pixel where the WGS-84 point is drawn."""
    page.wait_for_selector("body[data-map-ready='1']", timeout=20_000)
    page.evaluate("([lat, lon]) => CGPublic.map.setView([lat, lon], 18, {animate: false})", [lat, lon])
    pt = page.evaluate("([lat, lon]) => { const p = CGPublic.map.latLngToContainerPoint([lat, lon]); return [p.x, p.y]; }",
                       [lat, lon])
    box = page.locator("#pick-map").bounding_box()
    page.mouse.click(box["x"] + pt[0], box["y"] + pt[1])
    page.wait_for_selector("#pick-map[data-picked='1']")


def _page(browser, live_server, path, token=None, *, geolocation=None, mobile=False, errors=None, failed=None):
    kw = {"locale": "zh-CN", "viewport": {"width": 390, "height": 1200} if mobile else VIEWPORT}
    if geolocation:
        kw |= {"geolocation": geolocation, "permissions": ["geolocation"]}
    ctx = browser.new_context(**kw)
    if token:
        ctx.add_init_script(f"localStorage.setItem('citygrid_token', {token!r}); localStorage.setItem('citygrid_lang', 'zh');")
    page = ctx.new_page()
    page.on("pageerror", lambda e: errors.append(f"{path}: {e}"))
    # Console errors other than a failed request (those are in ``failed``, each checked below).
    page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
            and errors.append(f"{path} console: {m.text}"))
    page.on("response", lambda r: r.status >= 400 and failed.append((path, r.status, r.url)))
    page.goto(live_server + path)
    return page


def _case(engine, case_no):
    with engine.connect() as c:
        return dict(c.execute(text("""SELECT f.id, f.state, f.cell_code, f.rating, d.code AS department
                                       FROM case_file f LEFT JOIN department d ON d.id = f.department_id
                                       WHERE f.case_no = :n"""), {"n": case_no}).mappings().one())


def _thumbs(page, box, kind):
    """Wait until ``box`` shows a loaded thumbnail of ``kind``; the number of them."""
    sel = f"{box} img.cp-thumb[data-kind={kind}]"
    page.wait_for_function("(s) => { const a = [...document.querySelectorAll(s)]; "
                           "return a.length > 0 && a.every((i) => i.dataset.loaded === '1' && i.naturalWidth > 0); }",
                           arg=sel, timeout=20_000)
    return page.locator(sel).count()


def _open_case(page, case_id, state):
    page.click("#tabs [data-tab='list']")
    page.wait_for_selector(f"#case-list li[data-id='{case_id}']", timeout=20_000)
    page.click(f"#case-list li[data-id='{case_id}']")
    page.wait_for_selector(f"#detail-body[data-case-id='{case_id}'][data-state='{state}']", timeout=20_000)


def _act(page, action, state):
    page.click(f"#d-buttons button[data-action='{action}']")
    page.wait_for_selector(f"#detail-body[data-state='{state}'] #d-result .ok", timeout=20_000)


def test_full_loop_through_the_pages_with_photos(browser, live_server, engine, tokens, tmp_path):
    from layers.core.users import add_user

    errors: list[str] = []
    failed: list[tuple] = []
    lon, lat = PLACE
    text_ = f"路口积水没过脚踝 the crossing is flooded {uuid.uuid4().hex[:6]}"

    # 1. The citizen, on /public, with a photo.
    pub = _page(browser, live_server, "/public", errors=errors, failed=failed)
    pub.wait_for_selector("#category[data-loaded='1']", timeout=20_000)
    pub.select_option("#category", "E40101")  # 道路积水: its feedback needs an after photo
    pub.fill("#description", text_)
    pick_place(pub, lon, lat)
    pub.set_input_files("#photo", str(PHOTOS / "DSCN0010.jpg"))
    pub.click("#submit")
    pub.wait_for_selector("#new-query-code", timeout=20_000)
    case_no, query_code = pub.inner_text("#new-case-no").strip(), pub.inner_text("#new-query-code").strip()
    case = _case(engine, case_no)
    cid = case["id"]
    assert case["state"] == "collected"

    # 2. The operator sees the citizen's photo, accepts and dispatches to the proposed department.
    op = _page(browser, live_server, "/operator", tokens["operator"], errors=errors, failed=failed)
    op.wait_for_selector("body[data-ready='1']", timeout=20_000)
    _open_case(op, cid, "collected")
    assert _thumbs(op, "#d-photos-box", "report") == 1
    assert "上报照片" in op.inner_text("#d-photos-box")
    _act(op, "accept", "accepted")
    department = op.input_value("#d-department")
    _act(op, "dispatch", "dispatched")
    assert _case(engine, case_no)["department"] == department

    # 3. The department starts, then gives feedback: refused without the after photo, then with both.
    with engine.begin() as c:
        _, dep_token = add_user(c, f"loop_dept_{uuid.uuid4().hex[:6]}", "department", department=department)
        _, insp_token = add_user(c, f"loop_insp_{uuid.uuid4().hex[:6]}", "inspector", area_code=case["cell_code"][:9])
    dep = _page(browser, live_server, "/operator", dep_token, errors=errors, failed=failed)
    dep.wait_for_selector("body[data-ready='1']", timeout=20_000)
    _open_case(dep, cid, "dispatched")
    assert _thumbs(dep, "#d-photos-box", "report") == 1
    _act(dep, "start", "processing")
    dep.fill("#d-note", "已抽排积水，疏通雨水口 pumped, drain cleared")
    dep.set_input_files("#cp-before", str(PHOTOS / "DSCN0012.jpg"))
    dep.click("#d-buttons button[data-action='feedback']")
    dep.wait_for_selector("#d-result .err", timeout=20_000)
    assert "处置后照片" in dep.inner_text("#d-result")
    assert _case(engine, case_no)["state"] == "processing"
    dep.set_input_files("#cp-before", str(PHOTOS / "DSCN0012.jpg"))
    dep.set_input_files("#cp-after", [str(PHOTOS / "DSCN0021.jpg"), str(PHOTOS / "DSCN0025.jpg")])
    dep.fill("#d-note", "已抽排积水，疏通雨水口 pumped, drain cleared")
    _act(dep, "feedback", "verifying")
    assert _thumbs(dep, "#d-photos-box", "before") == 1 and _thumbs(dep, "#d-photos-box", "after") == 2
    assert "处置前" in dep.inner_text("#d-photos-box") and "处置后" in dep.inner_text("#d-photos-box")
    dep.screenshot(path=str(tmp_path / "department-feedback-photos.png"))

    # 4. The inspector checks on site with a photo, from the worklist's 核查 button.
    insp = _page(browser, live_server, "/inspector", insp_token, mobile=True, errors=errors, failed=failed,
                 geolocation={"latitude": lat, "longitude": lon, "accuracy": 6})
    insp.click("#tabs button[data-tab=work]")
    btn = f"#cases button.verify-btn[data-case='{cid}']"
    insp.wait_for_selector(btn, timeout=20_000)
    insp.click(btn)
    assert _thumbs(insp, "#vphotos-box", "after") == 2
    assert _thumbs(insp, "#vphotos-box", "report") == 1
    insp.wait_for_function("!document.getElementById('vok').disabled", timeout=20_000)
    insp.set_input_files("#vphotos", str(PHOTOS / "DSCN0027.jpg"))
    insp.fill("#vnote", "现场无积水 dry now")
    insp.click("#vok")
    insp.wait_for_function("document.getElementById('vresult').textContent.includes('核查通过')", timeout=20_000)
    assert _thumbs(insp, "#vphotos-box", "verification") == 1
    insp.screenshot(path=str(tmp_path / "inspector-check-photos.png"), full_page=True)
    assert _case(engine, case_no)["state"] == "feedback"

    # 5. The operator sees every kind of photo, looks through them in the viewer, and closes.
    op.reload()
    op.wait_for_selector("body[data-ready='1']", timeout=20_000)
    _open_case(op, cid, "feedback")
    counts = {k: _thumbs(op, "#d-photos-box", k) for k in ("report", "before", "after", "verification")}
    assert counts == {"report": 1, "before": 1, "after": 2, "verification": 1}
    op.click("#d-photos-box img.cp-thumb[data-kind=report]")
    op.wait_for_function("document.getElementById('cp-viewer-img').naturalWidth > 0", timeout=20_000)
    captions = [op.inner_text("#cp-viewer-caption")]
    for _ in range(4):
        op.click("#cp-next")
        op.wait_for_function("(c) => document.getElementById('cp-viewer-caption').textContent !== c", arg=captions[-1])
        op.wait_for_function("document.getElementById('cp-viewer-img').naturalWidth > 0", timeout=20_000)
        captions.append(op.inner_text("#cp-viewer-caption"))
    assert [c.split(" · ")[0] for c in captions] == ["上报照片", "处置前", "处置后", "处置后", "核查照片"]
    assert captions[-1].endswith("5/5")
    op.click("#cp-prev")
    op.wait_for_function("document.getElementById('cp-viewer-caption').textContent.endsWith('4/5')")
    op.screenshot(path=str(tmp_path / "operator-photo-viewer.png"))
    op.click("#cp-close")
    _act(op, "close", "closed")

    # 6. The citizen looks the case up (its own tab) and rates it on /public.
    pub.click("#tab-lookup")
    pub.fill("#case-no", case_no)
    pub.fill("#query-code", query_code)
    pub.click("#lookup-btn")
    pub.wait_for_selector("#rate-form:not([hidden])", timeout=20_000)
    # the reporter sees their photo and the department's, as the publication policy allows (no 核查照片)
    assert {k: _thumbs(pub, "#lookup-photos", k) for k in ("report", "before", "after")} == \
        {"report": 1, "before": 1, "after": 2}
    assert pub.locator("#lookup-photos img.cp-thumb[data-kind=verification]").count() == 0
    pub.screenshot(path=str(tmp_path / "public-lookup-photos.png"), full_page=True)
    pub.select_option("#rating", "satisfied")
    pub.click("#rate-btn")
    pub.wait_for_selector("#rating-text", timeout=20_000)

    # Results, read back: the case, its events, and the photos each audience sees.
    final = _case(engine, case_no)
    assert final["state"] == "closed" and final["rating"] == "satisfied"
    with engine.connect() as c:
        kinds = [r[0] for r in c.execute(text("SELECT kind FROM case_event WHERE case_id = :i ORDER BY at, id"), {"i": cid})]
    assert [k for k in kinds if k != "note"] == ["received", "accepted", "dispatched", "started", "feedback",
                                                 "verify_ok", "closed", "rated"]
    import httpx

    staff = httpx.get(f"{live_server}/api/v1/cases/{cid}/photos", headers=auth(tokens["supervisor"])).json()
    assert staff["counts"] == {"report": 1, "before": 1, "after": 2, "verification": 1}
    mine = httpx.post(f"{live_server}/api/v1/public/photos", json={"case_no": case_no, "query_code": query_code}).json()
    assert sorted(p["kind"] for p in mine["photos"]) == ["after", "after", "before", "report"]
    assert httpx.get(f"{live_server}/api/v1/cases/{cid}/photos").status_code == 401
    assert not errors, errors
    # The only refused request is the feedback without its after photo (and /favicon.ico until the
    # favicon lands, issue 13's "maps" part).
    unexpected = [f for f in failed if not (f[1] == 422 and f[2].endswith(f"/api/v1/cases/{cid}/feedback"))
                  and not f[2].endswith("/favicon.ico")]
    assert not unexpected, unexpected
    assert [f[1] for f in failed if f[2].endswith("/feedback")] == [422]
    for p in (pub, op, dep, insp):
        p.context.close()
