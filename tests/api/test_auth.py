"""Sign-in (issue 13): passwords (argon2), the session cookie, CSRF on cookie-authenticated writes,
the lockout of failed sign-ins, sign-out — over the real app and database."""

from __future__ import annotations

import logging
import statistics
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.conftest import auth, count

PASSWORD = "正确的马电池订书钉-42"


@pytest.fixture
def web(app, client):
    """A browser-like client of its own (its own cookie jar; the shared client stays anonymous)."""
    c = TestClient(app, base_url="http://testserver")
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _fresh_lockout(engine):
    """Failed sign-ins are counted per address (the test client's): each test starts from none."""
    with engine.begin() as c:
        c.execute(text("DELETE FROM login_failure"))
    yield
    with engine.begin() as c:
        c.execute(text("DELETE FROM login_failure"))


@pytest.fixture
def auth_settings(monkeypatch):
    """Set CITYGRID_AUTH_ settings for one test."""
    from citygrid import settings

    def set_(**values):
        for k, v in values.items():
            monkeypatch.setenv(f"CITYGRID_AUTH_{k.upper()}", str(v))
        settings.auth.cache_clear()

    yield set_
    monkeypatch.undo()
    settings.auth.cache_clear()


@pytest.fixture
def make_user(engine):
    from layers.core import users as lusers

    def make(role="operator", password=PASSWORD, **kw):
        name = f"auth_{role}_{uuid.uuid4().hex[:8]}"
        with engine.begin() as c:
            user, token = lusers.add_user(c, name, role, password=password,
                                          department="测试部门" if role == "department" else None, **kw)
        return user, token

    return make


def _login(c, name, password, **kw):
    return c.post("/api/v1/auth/login", json={"name": name, "password": password}, **kw)


def test_password_sign_in_sets_a_safe_cookie_and_opens_the_api(web, make_user, engine):
    user, _ = make_user("operator")
    r = _login(web, user.name, PASSWORD)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["user"]["name"] == user.name and out["user"]["role"] == "operator"
    assert out["user"]["role_label"].startswith("受理员")
    assert len(out["csrf_token"]) >= 30
    cookie = r.headers["set-cookie"]
    sid = web.cookies.get("cg_session")
    assert sid and len(sid) >= 40
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http here
    assert sid not in r.text and PASSWORD not in r.text
    # stored only as its sha256, with the user and the CSRF token
    import hashlib

    assert count(engine, "SELECT count(*) FROM user_session WHERE id_hash = :h AND user_id = :u AND csrf_token = :c",
                 h=hashlib.sha256(sid.encode()).hexdigest(), u=user.id, c=out["csrf_token"]) == 1
    assert count(engine, "SELECT count(*) FROM user_session WHERE id_hash = :s", s=sid) == 0
    # the hash of the password is argon2id, never the password
    with engine.connect() as c:
        stored = c.execute(text("SELECT password_hash FROM app_user WHERE id = :u"), {"u": user.id}).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    # who am I, and an operator's endpoint, by the cookie alone
    me = web.get("/api/v1/auth/me")
    assert me.status_code == 200 and me.json()["user"]["id"] == user.id
    assert me.json()["via"] == "session" and me.json()["csrf_token"] == out["csrf_token"]
    cases = web.get("/api/v1/cases", params={"limit": 3})
    assert cases.status_code == 200, cases.text
    # a role gate still applies to a session: an operator is no admin
    assert web.get("/api/v1/admin/users").status_code == 403


def test_unknown_user_and_wrong_password_get_the_same_answer_in_similar_time(web, make_user):
    user, _ = make_user("operator")
    wrong = _login(web, user.name, "not-the-password-1")
    unknown = _login(web, f"nobody_{uuid.uuid4().hex[:6]}", "not-the-password-1")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert "用户名或密码错误" in wrong.json()["detail"]
    assert "set-cookie" not in wrong.headers

    def timed(name):
        t = time.perf_counter()
        _login(web, name, "not-the-password-2")
        return time.perf_counter() - t

    known = statistics.median(timed(user.name) for _ in range(3))
    nobody = statistics.median(timed(f"nobody_{uuid.uuid4().hex[:6]}") for _ in range(3))
    # both verify an argon2 hash (the unknown name a dummy one): neither is a quick no
    assert nobody > 0.4 * known and known > 0.4 * nobody, (known, nobody)


def test_cookie_write_needs_the_csrf_token(web, make_user, engine):
    admin, _ = make_user("admin")
    csrf = _login(web, admin.name, PASSWORD).json()["csrf_token"]
    name = f"csrf_victim_{uuid.uuid4().hex[:6]}"
    body = {"name": name, "role": "planner"}
    r = web.post("/api/v1/admin/users", json=body)
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = web.post("/api/v1/admin/users", json=body, headers={"X-CSRF-Token": "wrong" + csrf[5:]})
    assert r.status_code == 403
    assert count(engine, "SELECT count(*) FROM app_user WHERE name = :n", n=name) == 0  # nothing written
    r = web.post("/api/v1/admin/users", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text
    assert count(engine, "SELECT count(*) FROM app_user WHERE name = :n AND role = 'planner'", n=name) == 1
    # reads need no CSRF token; bearer-token writes neither (API clients and devices)
    assert web.get("/api/v1/admin/users").status_code == 200


def test_bearer_writes_need_no_csrf_token(client, make_user, engine):
    _, token = make_user("admin")
    name = f"bearer_made_{uuid.uuid4().hex[:6]}"
    r = client.post("/api/v1/admin/users", json={"name": name, "role": "planner"}, headers=auth(token))
    assert r.status_code == 201, r.text
    assert count(engine, "SELECT count(*) FROM app_user WHERE name = :n", n=name) == 1


def test_cookie_authenticated_fast_intake_goes_through_the_route(web, make_user, engine, app):
    from tests.field.test_reports import spot

    user, _ = make_user("inspector")
    csrf = _login(web, user.name, PASSWORD).json()["csrf_token"]
    lon, lat = spot()
    desc = f"会话上报 {uuid.uuid4().hex[:8]}"
    body = {"category_code": "E10301", "lon": lon, "lat": lat, "accuracy": 6, "description": desc}
    key = uuid.uuid4().hex
    r = web.post("/api/v1/reports/json", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    assert count(engine, "SELECT count(*) FROM field_report WHERE description = :d", d=desc) == 0
    r = web.post("/api/v1/reports/json", json=body, headers={"Idempotency-Key": key, "X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text
    assert count(engine, "SELECT count(*) FROM field_report WHERE description = :d AND user_id = :u",
                 d=desc, u=user.id) == 1
    # a planner's session is refused by the inspectors' gate (403), nothing written
    planner, _ = make_user("planner")
    other = TestClient(app)
    pcsrf = _login(other, planner.name, PASSWORD).json()["csrf_token"]
    body["description"] = desc + " planner"
    r = other.post("/api/v1/reports/json", json=body, headers={"X-CSRF-Token": pcsrf})
    assert r.status_code == 403
    assert count(engine, "SELECT count(*) FROM field_report WHERE description = :d", d=body["description"]) == 0


def test_lockout_per_name_refuses_even_the_right_password(web, make_user, auth_settings, engine):
    auth_settings(login_max_failures_per_name=3, login_max_failures_per_address=50, login_window_minutes=10)
    user, _ = make_user("operator")
    for _ in range(3):
        assert _login(web, user.name, "wrong-password-x").status_code == 401
    r = _login(web, user.name, PASSWORD)
    assert r.status_code == 429
    wait = int(r.headers["retry-after"])
    assert 500 < wait <= 600
    assert "登录失败次数过多" in r.json()["detail"] and "set-cookie" not in r.headers
    assert _login(web, user.name.upper(), PASSWORD).status_code == 429  # the same name in other case
    # another user from the same address is not locked by this name's failures
    other, _ = make_user("operator")
    assert _login(web, other.name, PASSWORD).status_code == 200
    # once the failures leave the window, the right password works again (and clears the count)
    with engine.begin() as c:
        c.execute(text("UPDATE login_failure SET at = at - interval '11 minutes'"))
    assert _login(web, user.name, PASSWORD).status_code == 200


def test_lockout_per_address(web, make_user, auth_settings):
    auth_settings(login_max_failures_per_name=50, login_max_failures_per_address=4, login_window_minutes=5)
    user, _ = make_user("operator")
    for i in range(4):
        assert _login(web, f"guess_{i}_{uuid.uuid4().hex[:4]}", "whatever-pass").status_code == 401
    r = _login(web, user.name, PASSWORD)
    assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 300
    assert "网络地址" in r.json()["detail"]
    # a token sign-in from the locked address is refused too
    _, token = make_user("inspector")
    assert web.post("/api/v1/auth/login", json={"token": token}).status_code == 429


def test_sign_out_ends_the_session(web, make_user, engine):
    user, _ = make_user("supervisor")
    csrf = _login(web, user.name, PASSWORD).json()["csrf_token"]
    sid = web.cookies.get("cg_session")
    assert web.get("/api/v1/auth/me").status_code == 200
    assert web.post("/api/v1/auth/logout").status_code == 403  # another site's page may not sign us out
    r = web.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json() == {"signed_out": True}
    cleared = r.headers["set-cookie"]
    assert cleared.startswith("cg_session=") and ("Max-Age=0" in cleared or "expires=" in cleared.lower())
    assert web.cookies.get("cg_session") is None
    assert count(engine, "SELECT count(*) FROM user_session WHERE user_id = :u", u=user.id) == 0
    # the old cookie, sent again, opens nothing
    r = web.get("/api/v1/supervisor/cells", cookies={"cg_session": sid})
    assert r.status_code == 401 and "登录" in r.json()["detail"]
    r = web.get("/api/v1/auth/me", cookies={"cg_session": sid})
    assert r.status_code == 200 and r.json()["user"] is None  # nobody signed in (a page asks this on opening)
    assert r.headers["set-cookie"].startswith("cg_session=")  # and the dead cookie is cleared


def test_token_link_is_exchanged_for_a_session(web, make_user):
    user, token = make_user("inspector", password=None)
    r = web.post("/api/v1/auth/login", json={"token": token})
    assert r.status_code == 200 and r.json()["via"] == "token" and token not in r.text
    assert web.get("/api/v1/auth/me").json()["user"]["id"] == user.id
    bad = web.post("/api/v1/auth/login", json={"token": "cg_" + "x" * 40})
    assert bad.status_code == 401
    # a user without a password cannot sign in with one (the same answer as a wrong one)
    assert _login(web, user.name, "anything-at-all").status_code == 401


def test_bad_sign_in_bodies_are_422_without_echo(web):
    for body in ({}, {"name": "x"}, {"password": "secret-pw-1234"}, {"name": "x", "password": "y", "token": "z"},
                 {"name": "x", "password": "a" * 300}):
        r = web.post("/api/v1/auth/login", json=body)
        assert r.status_code == 422, body
        assert "secret-pw-1234" not in r.text and "a" * 300 not in r.text


def test_sign_in_from_another_sites_page_is_refused(web, make_user):
    user, _ = make_user("operator")
    r = _login(web, user.name, PASSWORD, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers
    assert _login(web, user.name, PASSWORD, headers={"Origin": "http://testserver"}).status_code == 200


def test_secure_cookie_over_https_and_behind_a_trusted_proxy(app, client, make_user, monkeypatch):
    from citygrid import settings

    user, _ = make_user("operator")
    with TestClient(app, base_url="https://testserver") as c:
        assert "Secure" in _login(c, user.name, PASSWORD).headers["set-cookie"]
    c = TestClient(app)
    proto = {"X-Forwarded-Proto": "https"}
    assert "Secure" not in _login(c, user.name, PASSWORD, headers=proto).headers["set-cookie"]  # not believed
    monkeypatch.setenv("CITYGRID_API_TRUSTED_PROXY_HOPS", "1")
    settings.api.cache_clear()
    try:
        assert "Secure" in _login(c, user.name, PASSWORD, headers=proto).headers["set-cookie"]
    finally:
        monkeypatch.undo()
        settings.api.cache_clear()


def test_disabled_user_and_new_password_end_sessions(web, make_user, engine):
    from layers.core import users as lusers

    user, token = make_user("operator")
    _login(web, user.name, PASSWORD)
    assert web.get("/api/v1/auth/me").status_code == 200
    with engine.begin() as c:
        lusers.set_password(c, user.id, "another-good-password")
    assert web.get("/api/v1/auth/me").json()["user"] is None
    assert web.get("/api/v1/cases", params={"limit": 1}).status_code == 401
    assert _login(web, user.name, PASSWORD).status_code == 401
    assert _login(web, user.name, "another-good-password").status_code == 200
    with engine.begin() as c:
        lusers.set_active(c, user.id, False)
    assert web.get("/api/v1/cases", params={"limit": 1}).status_code == 401
    assert _login(web, user.name, "another-good-password").status_code == 401
    assert web.get("/api/v1/auth/me", headers=auth(token)).json()["token_refused"] == "unknown"  # (inactive)
    assert web.get("/api/v1/cases", params={"limit": 1}, headers=auth(token)).status_code == 401


def test_password_rules(engine):
    from layers.core import users as lusers
    from layers.core.errors import InputError

    with engine.begin() as c:
        for bad in ("short", " " * 12, "line\nbreak-password", "x" * 300):
            with pytest.raises(InputError) as e:
                lusers.add_user(c, f"pw_{uuid.uuid4().hex[:6]}", "planner", password=bad)
            assert bad.strip() == "" or bad not in str(e.value)


def test_passwords_and_session_ids_never_logged(web, make_user, caplog):
    caplog.set_level(logging.DEBUG)
    user, _ = make_user("operator")
    _login(web, user.name, "wrong-password-zz")
    r = _login(web, user.name, PASSWORD)
    sid = web.cookies.get("cg_session")
    csrf = r.json()["csrf_token"]
    web.get("/api/v1/auth/me")
    web.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    for secret in (PASSWORD, "wrong-password-zz", sid):
        assert secret not in logged


def _tile(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    import math

    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return z, x, y


def test_layers_and_tiles_see_the_session(web, client, make_user):
    """The catalog and the vector tiles take the session cookie as they take a token: a staff layer
    opens, and a public layer's cached anonymous tile (the pure-ASGI fast path) is not what a signed-in
    user gets."""
    user, _ = make_user("supervisor")
    z, x, y = _tile(121.1712, 31.8905, 12)
    assert client.get(f"/api/v1/tiles/cases/{z}/{x}/{y}.mvt").status_code == 401
    anon = {layer["name"]: layer["form"] for layer in client.get("/api/v1/layers").json()["layers"]}
    assert "cases" not in anon and anon["case_cells"] == "public"
    _login(web, user.name, PASSWORD)
    signed = {layer["name"]: layer["form"] for layer in web.get("/api/v1/layers").json()["layers"]}
    assert signed["cases"] == "full" and signed["case_cells"] == "full"
    r = web.get(f"/api/v1/tiles/cases/{z}/{x}/{y}.mvt")
    assert r.status_code == 200 and r.headers["cache-control"].startswith("private")
    z, x, y = _tile(121.1712, 31.8905, 15)
    for _ in range(3):  # then anonymous requests are answered from the cache (the fast path), as public
        pub = client.get(f"/api/v1/tiles/grid_cells/{z}/{x}/{y}.mvt")
    assert pub.status_code == 200 and pub.headers["x-tile-cache"] == "hit" and pub.headers["cache-control"].startswith("public")
    mine = web.get(f"/api/v1/tiles/grid_cells/{z}/{x}/{y}.mvt")
    assert mine.status_code == 200 and mine.headers["cache-control"].startswith("private")
    assert "Cookie" in mine.headers["vary"]


def test_sessions_end_when_idle_or_past_their_end(web, make_user, engine, auth_settings):
    import hashlib

    auth_settings(session_idle_minutes=30, session_hours=8)
    user, _ = make_user("operator")
    out = _login(web, user.name, PASSWORD).json()
    h = hashlib.sha256(web.cookies.get("cg_session").encode()).hexdigest()
    with engine.connect() as c:
        life = c.execute(text("SELECT extract(epoch FROM expires_at - created_at) FROM user_session WHERE id_hash = :h"),
                         {"h": h}).scalar_one()
    assert life == pytest.approx(8 * 3600, abs=2)
    # last seen is written at most once a minute, apart from the request's transaction
    with engine.begin() as c:
        c.execute(text("UPDATE user_session SET last_seen_at = now() - interval '5 minutes' WHERE id_hash = :h"), {"h": h})
    assert web.get("/api/v1/cases", params={"limit": 1}).status_code == 200
    with engine.connect() as c:
        ago = c.execute(text("SELECT extract(epoch FROM now() - last_seen_at) FROM user_session WHERE id_hash = :h"),
                        {"h": h}).scalar_one()
    assert ago < 5
    # idle past the setting: the session opens nothing any more
    with engine.begin() as c:
        c.execute(text("UPDATE user_session SET last_seen_at = now() - interval '31 minutes' WHERE id_hash = :h"), {"h": h})
    assert web.get("/api/v1/cases", params={"limit": 1}).status_code == 401
    # a fresh session past its absolute end: the same
    out = _login(web, user.name, PASSWORD).json()
    assert out["csrf_token"]
    h = hashlib.sha256(web.cookies.get("cg_session").encode()).hexdigest()
    assert web.get("/api/v1/cases", params={"limit": 1}).status_code == 200
    with engine.begin() as c:
        c.execute(text("UPDATE user_session SET expires_at = now() - interval '1 second' WHERE id_hash = :h"), {"h": h})
    assert web.get("/api/v1/cases", params={"limit": 1}).status_code == 401
