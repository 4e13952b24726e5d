"""The /admin page and its API (issue 13): users added with role, department, area and password,
passwords reset, users disabled and enabled, tokens revoked and renewed; roles, departments and areas
listed. API tests over the real app, then the page in headless Chromium."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import auth, count

PASSWORD = "管理员的密码-Admin-2026"


@pytest.fixture
def admin(engine):
    from layers.core import users as lusers

    with engine.begin() as c:
        user, token = lusers.add_user(c, f"adm_{uuid.uuid4().hex[:6]}", "admin", password=PASSWORD)
    return user, token


@pytest.fixture(autouse=True)
def _no_failures(engine):
    yield
    with engine.begin() as c:
        c.execute(text("DELETE FROM login_failure"))


def _login(client, name, password):
    return client.post("/api/v1/auth/login", json={"name": name, "password": password})


def test_admin_api_manages_users(client, admin, engine, haimen):
    _, tok = admin
    h = auth(tok)
    name = f"new_{uuid.uuid4().hex[:6]}"
    r = client.post("/api/v1/admin/users", headers=h,
                    json={"name": name, "role": "inspector", "area_code": "320614001", "password": "first-password-1"})
    assert r.status_code == 201, r.text
    made = r.json()
    uid = made["id"]
    assert made["has_password"] is True and made["area_code"] == "320614001" and made["token"].startswith("cg_")
    assert "password_hash" not in made and "first-password-1" not in r.text
    assert _login(client, name, "first-password-1").status_code == 200
    client.cookies.clear()
    # reset the password: the old one stops working, the new one works, the user's sessions end
    r = client.post(f"/api/v1/admin/users/{uid}/password", headers=h, json={"password": "second-password-2"})
    assert r.status_code == 200 and r.json()["password_changed_at"] is not None
    assert _login(client, name, "first-password-1").status_code == 401
    assert _login(client, name, "second-password-2").status_code == 200
    client.cookies.clear()
    bad = client.post(f"/api/v1/admin/users/{uid}/password", headers=h, json={"password": "short"})
    assert bad.status_code == 422 and "10" in bad.json()["detail"]
    # change role and scope
    r = client.patch(f"/api/v1/admin/users/{uid}", headers=h, json={"role": "supervisor", "clear": ["area_code"]})
    assert r.status_code == 200 and r.json()["role"] == "supervisor" and r.json()["area_code"] is None
    r = client.patch(f"/api/v1/admin/users/{uid}", headers=h, json={"role": "department"})
    assert r.status_code == 422  # a department user needs a department
    assert count(engine, "SELECT count(*) FROM app_user WHERE id = :u AND role = 'supervisor'", u=uid) == 1
    # disable: password, token and sessions stop working; enable again
    r = client.post(f"/api/v1/admin/users/{uid}/disable", headers=h)
    assert r.status_code == 200 and r.json()["active"] is False and r.json()["disabled_at"]
    assert _login(client, name, "second-password-2").status_code == 401
    assert client.get("/api/v1/auth/me", headers=auth(made["token"])).json()["user"] is None
    assert client.get("/api/v1/cases", params={"limit": 1}, headers=auth(made["token"])).status_code == 401
    assert client.post(f"/api/v1/admin/users/{uid}/enable", headers=h).json()["active"] is True
    assert _login(client, name, "second-password-2").status_code == 200
    client.cookies.clear()
    # an admin may not disable or demote themselves here
    me = admin[0].id
    assert client.post(f"/api/v1/admin/users/{me}/disable", headers=h).status_code == 409
    assert client.patch(f"/api/v1/admin/users/{me}", headers=h, json={"role": "planner"}).status_code == 409
    # lists
    roles = client.get("/api/v1/admin/roles", headers=h).json()["roles"]
    assert [r["role"] for r in roles][-1] == "admin" and roles[0]["label"].startswith("信息采集员")
    areas = client.get("/api/v1/admin/areas", headers=h).json()["areas"]
    with engine.connect() as c:
        n = c.execute(text("SELECT count(*) FROM admin_area WHERE city_id = :c"), {"c": haimen.id}).scalar_one()
    assert len(areas) == n and any(a["code"] == "320614001" and a["level"] == "street" for a in areas)
    assert client.get("/api/v1/admin/areas", headers=auth(_planner(engine))).status_code == 403


def _planner(engine):
    from layers.core import users as lusers

    with engine.begin() as c:
        return lusers.add_user(c, f"pl_{uuid.uuid4().hex[:6]}", "planner")[1]


@pytest.mark.browser
def test_admin_page_adds_resets_disables(browser, live_server, admin, engine):
    user, _ = admin
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1366, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live_server + "/login?next=/admin")
    page.fill("#name", user.name)
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(lambda u: "/login" not in u and u.endswith("/admin"), timeout=15_000)  # not /login?next=/admin
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector(f"#users tr[data-user='{user.name}']")
    assert "管理员" in page.inner_text("#roles") and "信息采集员" in page.inner_text("#roles")
    assert int(page.inner_text("#area-count").split()[0]) > 5

    # add a user with a role, an area and a password
    name = f"page_new_{uuid.uuid4().hex[:6]}"
    page.fill("#add-name", name)
    page.select_option("#add-role", "inspector")
    page.select_option("#add-area", "320614001")
    page.fill("#add-password", "page-password-1")
    page.click("#add-form button[type=submit]")
    page.wait_for_selector(f"#users tr[data-user='{name}']")
    token = page.inner_text("#new-token")
    assert token.startswith("cg_")
    row = page.inner_text(f"#users tr[data-user='{name}']")
    assert "信息采集员" in row and "已设置" in row and "有效" in row and "inspector" not in row
    with engine.connect() as c:
        uid, role, area = c.execute(text("SELECT id, role, area_code FROM app_user WHERE name = :n"), {"n": name}).one()
    assert (role, area) == ("inspector", "320614001")
    assert httpx.post(live_server + "/api/v1/auth/login", json={"name": name, "password": "page-password-1"}).status_code == 200

    # reset the password
    page.click(f"#users tr[data-user='{name}'] button[data-act=password]")
    page.fill("#pw-new", "page-password-2")
    page.click("#pw-form button[type=submit]")
    page.wait_for_function("document.getElementById('notice').textContent.includes('设置新密码')")
    assert httpx.post(live_server + "/api/v1/auth/login", json={"name": name, "password": "page-password-1"}).status_code == 401
    assert httpx.post(live_server + "/api/v1/auth/login", json={"name": name, "password": "page-password-2"}).status_code == 200

    # revoke the token, then disable the user
    page.click(f"#users tr[data-user='{name}'] button[data-act=revoke]")
    page.wait_for_function(f"document.querySelector(\"#users tr[data-user='{name}'] [data-field=token]\").textContent.includes('已吊销')")
    assert httpx.get(live_server + "/api/v1/auth/me", headers=auth(token)).json()["token_refused"] == "revoked"
    assert httpx.get(live_server + "/api/v1/worklist", headers=auth(token)).status_code == 401
    page.click(f"#users tr[data-user='{name}'] button[data-act=disable]")
    page.wait_for_function(f"document.querySelector(\"#users tr[data-user='{name}'] [data-field=status]\").textContent.includes('已停用')")
    assert count(engine, "SELECT count(*) FROM app_user WHERE id = :u AND NOT active", u=uid) == 1
    assert httpx.post(live_server + "/api/v1/auth/login", json={"name": name, "password": "page-password-2"}).status_code == 401
    assert errors == []
    ctx.close()


@pytest.mark.browser
def test_admin_page_refuses_other_roles(browser, live_server, engine):
    from layers.core import users as lusers

    with engine.begin() as c:
        user, _ = lusers.add_user(c, f"op_{uuid.uuid4().hex[:6]}", "operator", password=PASSWORD)
    page = browser.new_page(locale="zh-CN")
    page.goto(live_server + "/login?next=/admin")
    page.fill("#name", user.name)
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(lambda u: "/login" not in u and u.endswith("/admin"), timeout=15_000)  # not /login?next=/admin
    page.wait_for_selector("body[data-ready='1']")
    assert "仅系统管理员可用" in page.inner_text("#error")
    assert not page.is_visible("#main")
    page.close()


@pytest.mark.browser
def test_login_and_admin_fit_desktop_and_phone_without_console_errors(browser, live_server, admin, tmp_path):
    """/login and /admin at 1366×900 and 390×844: no horizontal scroll, no console error, no raw role
    names on the page (labels in words)."""
    user, _ = admin
    for width, height in ((1366, 900), (390, 844)):
        ctx = browser.new_context(locale="zh-CN", viewport={"width": width, "height": height})
        page = ctx.new_page()
        console: list[str] = []
        page.on("console", lambda m, c=console: c.append(f"{m.text} {m.location.get('url')}")
                if m.type == "error" and "favicon" not in str(m.location.get("url")) else None)  # (the favicon: issue 13, maps)
        page.on("pageerror", lambda e, c=console: c.append(str(e)))
        page.goto(live_server + "/login?next=/admin")
        page.wait_for_selector("body[data-ready='1']")
        page.screenshot(path=str(tmp_path / f"login_{width}.png"))
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), ("login", width)
        page.fill("#name", user.name)
        page.fill("#password", PASSWORD)
        page.click("#submit")
        page.wait_for_url(lambda u: "/login" not in u and u.endswith("/admin"), timeout=15_000)  # not /login?next=/admin
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_selector("#users tbody tr")
        page.screenshot(path=str(tmp_path / f"admin_{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), ("admin", width)
        visible = page.inner_text("body")
        for raw in ("inspector", "operator", "supervisor", "planner", "department", "valid", "revoked"):
            for line in visible.splitlines():  # English words beside Chinese are fine; a bare code is not
                assert line.strip() != raw, (width, raw)
        assert "信息采集员" in visible and "管理员" in visible
        assert console == [], (width, console)
        ctx.close()
