"""Sign-in through the pages in headless Chromium (issue 13): /login with a password lands on the page
asked for, which works by its session cookie; a cookie write without the CSRF token is refused; the
lockout after repeated failures; sign-out; a #token=… link exchanged for a session."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from tests.conftest import count

pytestmark = pytest.mark.browser

PASSWORD = "城市网格-Password-2026"
HAIMEN = (121.1712, 31.8905)


@pytest.fixture
def person(engine):
    from layers.core import users as lusers

    def make(role="operator"):
        name = f"page_{role}_{uuid.uuid4().hex[:6]}"
        with engine.begin() as c:
            user, token = lusers.add_user(c, name, role, password=PASSWORD,
                                          department="测试部门" if role == "department" else None)
        return user, token

    return make


@pytest.fixture(autouse=True)
def _no_failures(engine):
    with engine.begin() as c:
        c.execute(text("DELETE FROM login_failure"))
    yield
    with engine.begin() as c:
        c.execute(text("DELETE FROM login_failure"))


def _page(browser, errors=None):
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1366, "height": 900})
    page = ctx.new_page()
    if errors is not None:
        page.on("pageerror", lambda e: errors.append(str(e)))
    return page


def _sign_in(page, name, password):
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("#submit")


def test_password_sign_in_lands_on_the_page_and_it_works(browser, live_server, person, engine):
    user, _ = person("operator")
    errors: list[str] = []
    page = _page(browser, errors)
    page.goto(live_server + "/operator")
    page.click("#save-token")  # not signed in: the page offers to sign in
    page.wait_for_url("**/login?next=%2Foperator", timeout=15_000)
    assert "工作人员登录" in page.inner_text("main")
    _sign_in(page, user.name, PASSWORD)
    page.wait_for_url(lambda u: "/login" not in u and u.endswith("/operator"), timeout=15_000)
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    assert user.name in page.inner_text("#who")
    assert page.is_visible("#logout")
    # the session is an HttpOnly cookie: the page's scripts never see it, nor any token in storage
    assert "cg_session" not in page.evaluate("document.cookie")
    assert page.evaluate("localStorage.getItem('citygrid_token')") is None
    cookie = next(c for c in page.context.cookies() if c["name"] == "cg_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/"

    # a write by the page's session helper (X-CSRF-Token) is recorded as this user …
    desc = f"会话登记 {uuid.uuid4().hex[:8]}"
    body = {"category_code": "E10101", "channel": "电话", "description": desc, "address": "海门区人民路 1 号",
            "location": {"x": HAIMEN[0], "y": HAIMEN[1]}}
    status = page.evaluate("""async (body) => {
        const r = await cgSession.fetch('/api/v1/cases', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                          body: JSON.stringify(body)});
        return r.status; }""", body)
    assert status == 201
    with engine.connect() as c:
        who = c.execute(text("""SELECT e.actor_id FROM case_file f JOIN case_event e ON e.case_id = f.id
                                WHERE f.description = :d AND e.kind = 'received'"""), {"d": desc}).scalar_one()
    assert who == user.id
    # … so is a plain fetch() of the page's own code, even one still sending an empty "Bearer " (session.js)
    body["description"] = desc + " 旧代码"
    status = page.evaluate("""async (body) => {
        const r = await fetch('/api/v1/cases', {method: 'POST', body: JSON.stringify(body),
                                                headers: {'Content-Type': 'application/json', Authorization: 'Bearer '}});
        return r.status; }""", body)
    assert status == 201
    assert count(engine, "SELECT count(*) FROM case_file WHERE description = :d", d=body["description"]) == 1
    # … the same write without the CSRF header (XMLHttpRequest, as a forged request would come) is refused
    body["description"] = desc + " 无令牌"
    refused = page.evaluate("""(body) => new Promise((done) => {
        const x = new XMLHttpRequest();
        x.open('POST', '/api/v1/cases');
        x.setRequestHeader('Content-Type', 'application/json');
        x.onload = () => done([x.status, JSON.parse(x.responseText).detail]);
        x.send(JSON.stringify(body)); })""", body)
    assert refused[0] == 403 and "CSRF" in refused[1]
    assert count(engine, "SELECT count(*) FROM case_file WHERE description = :d", d=body["description"]) == 0
    assert errors == []
    page.context.close()


def test_lockout_on_the_login_page(browser, live_server, person, monkeypatch):
    from citygrid import settings

    monkeypatch.setenv("CITYGRID_AUTH_LOGIN_MAX_FAILURES_PER_NAME", "3")
    settings.auth.cache_clear()
    try:
        user, _ = person("supervisor")
        page = _page(browser)
        page.goto(live_server + "/login?next=/supervisor")
        for i in range(3):
            _sign_in(page, user.name, f"wrong-password-{i}")
            page.wait_for_function("document.getElementById('msg').textContent.includes('用户名或密码错误') && "
                                   "!document.getElementById('submit').disabled")
            page.evaluate("document.getElementById('msg').textContent = ''")
        _sign_in(page, user.name, PASSWORD)  # the right password, while locked
        page.wait_for_function("document.getElementById('msg').textContent.includes('登录失败次数过多')")
        msg = page.inner_text("#msg")
        assert "分钟后再试" in msg
        assert page.url.endswith("/login?next=/supervisor")
        assert not [c for c in page.context.cookies() if c["name"] == "cg_session"]
        page.context.close()
    finally:
        monkeypatch.undo()
        settings.auth.cache_clear()


def test_sign_out_clears_the_cookie_and_the_api_answers_401(browser, live_server, person):
    user, _ = person("supervisor")
    page = _page(browser)
    page.goto(live_server + "/login?next=/supervisor")
    _sign_in(page, user.name, PASSWORD)
    page.wait_for_url(lambda u: "/login" not in u and u.endswith("/supervisor"), timeout=15_000)
    page.wait_for_function("document.getElementById('who').textContent.length > 0", timeout=15_000)
    assert user.name in page.inner_text("#who")
    assert page.evaluate("fetch('/api/v1/auth/me').then(r => r.status)") == 200
    page.click("#logout")
    page.wait_for_url("**/login", timeout=15_000)
    page.wait_for_selector("body[data-ready='1']")
    assert not [c for c in page.context.cookies() if c["name"] == "cg_session"]
    assert page.evaluate("fetch('/api/v1/auth/me').then(r => r.json()).then(j => j.user)") is None
    assert page.evaluate("fetch('/api/v1/supervisor/cells').then(r => r.status)") == 401
    page.context.close()


def test_token_link_becomes_a_session_and_leaves_no_trace(browser, live_server, person):
    user, token = person("inspector")
    errors: list[str] = []
    page = _page(browser, errors)
    page.goto(live_server + f"/inspector#token={token}")
    page.wait_for_function("document.getElementById('logout') && !document.getElementById('logout').hidden",
                           timeout=15_000)
    assert token not in page.url
    assert page.evaluate("JSON.stringify(Object.assign({}, localStorage, sessionStorage))").find(token) < 0
    assert page.evaluate("fetch('/api/v1/auth/me').then(r => r.json()).then(j => j.user.name)") == user.name
    assert errors == []
    page.context.close()
