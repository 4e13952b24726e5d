"""Bearer tokens that expire and can be revoked, with their last use; query codes kept as a keyed
hash (HMAC with the server's secret key, never in the database); the upgrade of existing rows."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import random
import stat
import subprocess
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.conftest import ROOT, auth, count
from tests.field.test_reports import spot

EXPIRED = "令牌已过期 token expired"
REVOKED = "令牌已吊销 token revoked"


def new_user(engine, role="inspector", **kw):
    from layers.core.users import add_user

    with engine.begin() as conn:
        return add_user(conn, f"tok_{role}_{uuid.uuid4().hex[:8]}", role, **kw)


def expire(engine, user_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("""UPDATE app_user SET token_issued_at = now() - interval '2 days',
                                                 token_expires_at = now() - interval '1 second' WHERE id = :u"""),
                     {"u": user_id})


def report(client, token, **extra):
    lon, lat = spot()
    body = {"category_code": "E10301", "lon": lon, "lat": lat, "accuracy": 5, "description": "令牌 token", **extra}
    return client.post("/api/v1/reports/json", json=body,
                       headers={**auth(token), "Idempotency-Key": uuid.uuid4().hex})


def reports_of(engine, user_id: int) -> int:
    return count(engine, "SELECT count(*) FROM field_report WHERE user_id = :u", u=user_id)


def token_row(engine, user_id: int) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(text("""SELECT xmin::text AS xmin, last_used_at, token_issued_at, token_expires_at,
                                                token_revoked_at FROM app_user WHERE id = :u"""),
                                 {"u": user_id}).mappings().one())


# -- expiry --------------------------------------------------------------------------------------

def test_new_tokens_expire_after_the_configured_days(engine, monkeypatch):
    from citygrid import settings
    from layers.core.errors import InputError

    user, _ = new_user(engine)
    row = token_row(engine, user.id)
    assert row["token_expires_at"] - row["token_issued_at"] == dt.timedelta(days=settings.auth().token_days) \
        == dt.timedelta(days=90)
    user, _ = new_user(engine, expires_in_days=7)
    row = token_row(engine, user.id)
    assert row["token_expires_at"] - row["token_issued_at"] == dt.timedelta(days=7)
    monkeypatch.setenv("CITYGRID_AUTH_TOKEN_DAYS", "30")
    settings.auth.cache_clear()
    try:
        user, _ = new_user(engine)
        row = token_row(engine, user.id)
        assert row["token_expires_at"] - row["token_issued_at"] == dt.timedelta(days=30)
    finally:
        monkeypatch.delenv("CITYGRID_AUTH_TOKEN_DAYS")
        settings.auth.cache_clear()
    for bad in (0, -1, 3651, True):
        with pytest.raises(InputError, match="1 to 3650 days"):
            new_user(engine, expires_in_days=bad)


def test_an_expired_token_is_refused_on_every_path(client, engine):
    """The role gate (Allow), the fast intake's check inside cg_file_reports, its check before a
    refusal (TokenClaim.verify) and the synchronous path of reports naming an asset."""
    user, tok = new_user(engine)
    assert client.get("/api/v1/reports", headers=auth(tok)).status_code == 200
    r = report(client, tok)
    assert r.status_code == 201, r.text
    expire(engine, user.id)
    r = client.get("/api/v1/reports", headers=auth(tok))
    assert r.status_code == 401 and r.json()["detail"].startswith(EXPIRED) and r.headers["www-authenticate"] == "Bearer"
    r = report(client, tok)  # the token is checked inside the database write
    assert r.status_code == 401 and r.json()["detail"].startswith(EXPIRED), r.text
    r = report(client, tok, lon=100.0, lat=20.0)  # a refusal: the token is checked first
    assert r.status_code == 401 and r.json()["detail"].startswith(EXPIRED), r.text
    r = report(client, tok, asset_code="NOPE")  # the synchronous path (asset registry)
    assert r.status_code == 401 and r.json()["detail"].startswith(EXPIRED), r.text
    assert reports_of(engine, user.id) == 1  # only the one before expiry


def test_the_write_function_answers_401_with_the_reason(engine, db_url, haimen):
    """cg_file_reports_as itself (a batch of several tokens): unknown, expired, revoked, valid."""
    import json

    import psycopg

    from layers.core.grid import snapper
    from layers.core.users import hash_token
    from layers.field import reports as lreports

    ok_user, ok = new_user(engine)
    old_user, old = new_user(engine)
    gone_user, gone = new_user(engine)
    expire(engine, old_user.id)
    with engine.begin() as conn:
        conn.execute(text("UPDATE app_user SET token_revoked_at = now() WHERE id = :u"), {"u": gone_user.id})
        grid = snapper(conn, haimen)
    plans = []
    for _ in range(4):
        lon, lat = spot()
        inp = lreports.ReportInput(category_code="E10301", description="批 batch", lon=lon, lat=lat, accuracy_m=5,
                                   crs="EPSG:4326")
        loc = lreports.locate_report(haimen, grid, inp, [], min_photos=0)
        plans.append(lreports.plan_report(haimen, grid, loc, inp, None, uuid.uuid4().hex,
                                          lreports.request_hash(inp, [])))
    items = [{"token_hash": h, "roles": ["inspector"], "p": p}
             for h, p in zip((hash_token("cg_nobody"), hash_token(old), hash_token(gone), hash_token(ok)), plans,
                             strict=True)]
    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as c:
        outs = c.execute("SELECT cg_file_reports_as(%s::jsonb)", (json.dumps(items, default=str),)).fetchone()[0]
    assert [o["status"] for o in outs] == [401, 401, 401, 201]
    assert [o.get("reason") for o in outs[:3]] == ["unknown", "expired", "revoked"]
    assert [reports_of(engine, u.id) for u in (old_user, gone_user, ok_user)] == [0, 0, 1]


# -- revocation and new tokens: the command line and the admin API ---------------------------------

@pytest.fixture
def cli(db_url, monkeypatch):
    """``citygrid …`` in process, on the test database; returns (exit code, stdout, stderr)."""
    from citygrid import settings
    from citygrid.cli import main

    monkeypatch.setenv("DATABASE_URL", db_url)
    settings.database.cache_clear()

    yield lambda *argv: main(list(argv))
    monkeypatch.delenv("DATABASE_URL")
    settings.database.cache_clear()


def test_revoke_and_renew_on_the_command_line(client, engine, cli, capsys):
    user, tok = new_user(engine)
    assert report(client, tok).status_code == 201
    assert cli("users", "revoke", user.name) == 0
    assert "token revoked" in capsys.readouterr().out
    r = client.get("/api/v1/reports", headers=auth(tok))
    assert r.status_code == 401 and r.json()["detail"].startswith(REVOKED)
    r = report(client, tok)
    assert r.status_code == 401 and r.json()["detail"].startswith(REVOKED), r.text
    assert reports_of(engine, user.id) == 1
    # A new token (3 days): it works, the old one is unknown now.
    assert cli("users", "renew", user.name, "--expires-in", "3") == 0
    out = capsys.readouterr().out
    new = out.split("new token: ")[1].split()[0]
    assert new.startswith("cg_") and new != tok
    assert report(client, new).status_code == 201
    r = client.get("/api/v1/reports", headers=auth(tok))
    assert r.status_code == 401 and "unknown" in r.json()["detail"]
    row = token_row(engine, user.id)
    assert row["token_revoked_at"] is None and row["token_expires_at"] - row["token_issued_at"] == dt.timedelta(days=3)
    # The list shows state, expiry and last use, never a token or its hash.
    assert cli("users", "list") == 0
    listing = capsys.readouterr().out
    line = next(x for x in listing.splitlines() if user.name in x)
    assert "token valid" in line and "last used 20" in line
    from layers.core.users import hash_token

    assert new not in listing and hash_token(new) not in listing and "cg_" not in listing
    # Mistakes are told, not raised.
    assert cli("users", "revoke", "nobody-" + uuid.uuid4().hex) == 2
    assert "no user" in capsys.readouterr().err
    assert cli("users", "add", "x" + uuid.uuid4().hex[:8], "--role", "planner", "--expires-in", "0") == 2
    assert "1 to 3650 days" in capsys.readouterr().err


def test_admin_lists_revokes_and_issues_tokens(client, engine, tokens):
    from layers.core.users import hash_token

    admin = auth(tokens["admin"])
    user, tok = new_user(engine)
    assert client.get("/api/v1/reports", headers=auth(tok)).status_code == 200
    r = client.get("/api/v1/admin/users", headers=admin)
    assert r.status_code == 200
    me = next(u for u in r.json() if u["id"] == user.id)
    assert me["token_state"] == "valid" and me["last_used_at"] is not None and me["token_expires_at"]
    assert me["name"] == user.name and me["role"] == "inspector" and me["token_revoked_at"] is None
    assert all("token_hash" not in u and "token" not in u for u in r.json())
    assert hash_token(tok) not in r.text and tok not in r.text
    for role in ("planner", "operator", "supervisor"):
        assert client.post(f"/api/v1/admin/users/{user.id}/revoke", headers=auth(tokens[role])).status_code == 403
    assert client.post(f"/api/v1/admin/users/{user.id}/revoke").status_code == 401
    r = client.post(f"/api/v1/admin/users/{user.id}/revoke", headers=admin)
    assert r.status_code == 200 and r.json()["token_state"] == "revoked" and r.json()["token_revoked_at"]
    assert hash_token(tok) not in r.text
    r = client.get("/api/v1/reports", headers=auth(tok))
    assert r.status_code == 401 and r.json()["detail"].startswith(REVOKED)
    r = client.post(f"/api/v1/admin/users/{user.id}/token", json={"expires_in_days": 5}, headers=admin)
    assert r.status_code == 201 and r.json()["token_state"] == "valid" and r.json()["last_used_at"] is None
    new = r.json()["token"]
    assert hash_token(new) not in r.text and new != tok
    issued = dt.datetime.fromisoformat(r.json()["token_issued_at"])
    assert dt.datetime.fromisoformat(r.json()["token_expires_at"]) - issued == dt.timedelta(days=5)
    assert client.get("/api/v1/reports", headers=auth(new)).status_code == 200
    assert "unknown" in client.get("/api/v1/reports", headers=auth(tok)).json()["detail"]
    # Without a body: the configured days. Bad input: 422 / 404.
    r = client.post(f"/api/v1/admin/users/{user.id}/token", headers=admin)
    assert r.status_code == 201 and r.json()["token"] != new
    assert client.post(f"/api/v1/admin/users/{user.id}/token", json={"expires_in_days": 0},
                       headers=admin).status_code == 422
    with engine.connect() as conn:
        admin_id = conn.execute(text("SELECT id FROM app_user WHERE name = 'test_admin'")).scalar_one()
    r = client.post(f"/api/v1/admin/users/{admin_id}/revoke", headers=admin)
    assert r.status_code == 409 and "your own token" in r.json()["detail"]
    assert client.get("/api/v1/admin/users", headers=admin).status_code == 200
    r = client.post("/api/v1/admin/users/2000000000/revoke", headers=admin)
    assert r.status_code == 404 and "no user" in r.json()["detail"]
    r = client.post("/api/v1/admin/users", headers=admin, json={"name": "tok_" + uuid.uuid4().hex[:8],
                                                                "role": "inspector", "expires_in_days": 2})
    assert r.status_code == 201 and r.json()["token"].startswith("cg_") and r.json()["token_state"] == "valid"
    assert "token_hash" not in r.json()


# -- last use --------------------------------------------------------------------------------------

def test_last_use_written_at_most_once_a_minute(client, engine):
    """No write on every request: the row keeps its version (xmin) while the last use is recent."""
    user, tok = new_user(engine)
    assert token_row(engine, user.id)["last_used_at"] is None
    assert client.get("/api/v1/reports", headers=auth(tok)).status_code == 200
    first = token_row(engine, user.id)
    assert first["last_used_at"] is not None
    for _ in range(3):
        assert client.get("/api/v1/reports", headers=auth(tok)).status_code == 200
        assert report(client, tok).status_code == 201  # the fast intake (its check inside the database)
    assert token_row(engine, user.id) == first
    with engine.begin() as conn:
        conn.execute(text("UPDATE app_user SET last_used_at = now() - interval '61 seconds' WHERE id = :u"),
                     {"u": user.id})
    stale = token_row(engine, user.id)["last_used_at"]
    assert report(client, tok).status_code == 201  # the fast intake writes it when it is a minute old
    later = token_row(engine, user.id)["last_used_at"]
    assert later > stale and later >= first["last_used_at"]
    # A token never used goes through the fast intake first.
    other, tok2 = new_user(engine)
    assert report(client, tok2).status_code == 201
    assert token_row(engine, other.id)["last_used_at"] is not None
    # A request refused for its role is a use of the token all the same (not rolled back with it).
    planner, tok3 = new_user(engine, role="planner")
    assert client.get("/api/v1/reports", headers=auth(tok3)).status_code == 403
    assert token_row(engine, planner.id)["last_used_at"] is not None


def test_last_use_never_waits_for_a_lock(client, engine):
    """A request whose user's row is held by another transaction is not held up by it: the last
    use is simply not written this time."""
    user, tok = new_user(engine)
    holder = engine.connect()
    tx = holder.begin()
    holder.execute(text("UPDATE app_user SET last_used_at = now() - interval '1 hour' WHERE id = :u"), {"u": user.id})
    try:
        box = {}

        def go():
            box["get"] = client.get("/api/v1/reports", headers=auth(tok)).status_code
            box["post"] = report(client, tok).status_code

        t = threading.Thread(target=go)
        started = time.monotonic()
        t.start()
        t.join(20)
        assert box == {"get": 200, "post": 201} and time.monotonic() - started < 20
    finally:
        tx.rollback()
        holder.close()
    assert token_row(engine, user.id)["last_used_at"] is None


# -- query codes -----------------------------------------------------------------------------------

def submit(client, address=None):
    lon, lat = spot()
    c = client if address is None else TestClient(client.app, client=(address, 40000))
    r = c.post("/api/v1/public/requests", data={"category_code": "E10301", "description": "码 code",
                                                "lon": str(lon), "lat": str(lat), "crs": "EPSG:4326"})
    assert r.status_code == 201, r.text
    return r.json()["case_no"], r.json()["query_code"]


def stored(engine, case_no: str) -> tuple[str, int]:
    with engine.connect() as conn:
        h, scheme = conn.execute(text("SELECT query_code_hash, query_code_scheme FROM case_file WHERE case_no = :n"),
                                 {"n": case_no}).one()
    return h.strip(), scheme


def lookup(client, case_no, code):
    c = TestClient(client.app, client=(f"10.{random.randrange(256)}.{random.randrange(256)}.7", 40000))
    return c.post("/api/v1/public/status", json={"case_no": case_no, "query_code": code})


def test_a_copy_of_the_database_is_not_enough_to_find_a_query_code(client, engine, tokens):
    """Every code of the citizen and the hotline channel is stored keyed: trying all 10^6 codes
    against the stored value without the server's key finds nothing (before: sha256 of number:code)."""
    no, code = submit(client)
    r = client.post("/api/v1/cases", json={"category_code": "E10101", "channel": "电话", "address": "某路 1 号",
                                           "description": "垃圾堆放"},
                    headers=auth(tokens["operator"]))
    assert r.status_code == 201
    hotline = (r.json()["case_no"], r.json()["query_code"])
    for case_no, qc in ((no, code), hotline):
        with engine.connect() as conn:
            h = conn.execute(text("SELECT query_code_hash FROM case_file WHERE case_no = :n"),
                             {"n": case_no}).scalar_one().strip()
        hits = [c for c in (f"{i:06d}" for i in range(10**6))
                if hashlib.sha256(f"{case_no}:{c}".encode()).hexdigest() == h]
        assert hits == []
        assert stored(engine, case_no) == (h, 2)
        assert lookup(client, case_no, qc).status_code == 200
    # The write functions are sent the keyed digest, never the code.
    from layers.cases import workflow as wf

    with engine.connect() as conn:
        from layers.core.city import get_city

        plan = wf.plan_case(get_city(conn, "haimen"), None, source="citizen", channel="网站", category_code="E10301",
                            received_at=dt.datetime.now(dt.UTC))
    assert plan.params["query_code"] == wf.keyed_query_code(plan.query_code) != plan.query_code
    assert plan.query_code not in str(plan.params)


@pytest.fixture
def other_key(monkeypatch):
    from citygrid import secretkey, settings

    def use(key: str | None):
        if key is None:
            monkeypatch.delenv("CITYGRID_SECRET_KEY", raising=False)
        else:
            monkeypatch.setenv("CITYGRID_SECRET_KEY", key)
        settings.auth.cache_clear()
        secretkey.server_key.cache_clear()

    yield use
    use(None)


def test_the_code_is_checked_with_the_server_key(client, engine, other_key):
    no, code = submit(client)
    assert lookup(client, no, code).status_code == 200
    other_key("another key of at least thirty-two characters")
    r = lookup(client, no, code)  # the right code, the wrong server key
    assert r.status_code == 404
    other_key("short")
    from citygrid.secretkey import SecretKeyError, server_key

    with pytest.raises(SecretKeyError, match="at least 32"):
        server_key()
    other_key(None)
    assert lookup(client, no, code).status_code == 200


def test_the_key_file_is_made_once_with_mode_600(tmp_path):
    """Unset CITYGRID_SECRET_KEY: the first process to need the key writes it; processes racing to
    do so all end up with the same key."""
    env = {k: v for k, v in os.environ.items() if k != "CITYGRID_SECRET_KEY"}
    env.update(CITYGRID_VAR_DIR=str(tmp_path / "var"), PYTHONPATH=str(ROOT))
    prog = "from citygrid.secretkey import server_key; print(server_key().decode())"
    procs = [subprocess.Popen([sys.executable, "-c", prog], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    path = tmp_path / "var" / "secret_key"
    assert keys == {path.read_text().strip()} and len(keys.pop()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret_key"]  # no temporary file left


# -- the upgrade of existing rows (migration 0017) ---------------------------------------------------

def test_migration_keys_old_codes_and_gives_old_tokens_an_end(db_url):
    """A database at 0012 with a user and a case written the old way (sha256 of number:code):
    after 0017 the token works and expires in the configured days, the code is keyed (scheme 1)
    and still opens its case; a wrong one does not."""
    from alembic import command

    from citygrid import dbcluster, settings
    from layers.cases import citizen
    from layers.core.db import alembic_config, make_engine
    from layers.core.users import hash_token, user_for_token
    from tests.conftest import TEST_DB, _recreate_database

    name = f"{TEST_DB}_mig"
    cluster = dbcluster.start(log=lambda *_: None)
    _recreate_database(cluster, name)
    eng = make_engine(cluster.url(name), pool_size=1)
    try:
        cfg = alembic_config()
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0012")
        tok, no, code = "cg_old_token_" + uuid.uuid4().hex, "32061420260101" + "00000042", "123456"
        with eng.begin() as conn:
            conn.execute(text("INSERT INTO app_user (name, role, token_hash) VALUES ('old', 'operator', :h)"),
                         {"h": hash_token(tok)})
            city = conn.execute(text("""
                INSERT INTO city (slug, name, adcode, working_srid, source_crs, boundary, area_m2)
                VALUES ('old', 'Old', '320614', 4549, 'EPSG:4549',
                        ST_Multi(ST_MakeEnvelope(0, 0, 100, 100, 4549)), 10000) RETURNING id""")).scalar_one()
            for case_no, h in ((no, hashlib.sha256(f"{no}:{code}".encode()).hexdigest()), (no + "9", None)):
                conn.execute(text("""
                    INSERT INTO case_file (city_id, case_no, source, channel, received_at, category_code, state,
                                           query_code_hash)
                    VALUES (:c, :n, 'citizen', '网站', now(), 'E10301', 'collected', :h)"""),
                             {"c": city, "n": case_no, "h": h})
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0017")
        with eng.begin() as conn:
            user = user_for_token(conn, tok)
            assert user is not None and user.name == "old"
            left = conn.execute(text("SELECT token_expires_at - now() FROM app_user WHERE name = 'old'")).scalar_one()
            assert abs(left - dt.timedelta(days=settings.auth().token_days)) < dt.timedelta(minutes=5)
            h, scheme = conn.execute(text("SELECT query_code_hash, query_code_scheme FROM case_file "
                                          "WHERE case_no = :n"), {"n": no}).one()
            assert scheme == 1 and h != hashlib.sha256(f"{no}:{code}".encode()).hexdigest()
            from citygrid.secretkey import server_key

            assert h == hmac.new(server_key(), b"query-code-v1:" + hashlib.sha256(f"{no}:{code}".encode())
                                 .hexdigest().encode(), hashlib.sha256).hexdigest()
            assert citizen._find(conn, SimpleNamespace(id=city), no, code)["case_no"] == no
            for wrong_no, wrong_code in ((no, "123457"), (no + "9", code)):
                with pytest.raises(citizen.NotFound):
                    citizen._find(conn, SimpleNamespace(id=city), wrong_no, wrong_code)
            assert conn.execute(text("SELECT query_code_scheme FROM case_file WHERE case_no = :n"),
                                {"n": no + "9"}).scalar_one() == 1  # (no code: nothing to key)
    finally:
        eng.dispose()
        import psycopg

        with psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, user=settings.database().user,
                             dbname="postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_docs_say_where_the_key_lives():
    for doc in ("README.md", "docker/README.md"):
        assert "CITYGRID_SECRET_KEY" in (ROOT / doc).read_text(encoding="utf-8"), doc
    compose = (ROOT / "docker" / "compose.yaml").read_text(encoding="utf-8")
    migrate = compose.split("migrate:")[1].split("\n  app:")[0]
    assert "appdata:/var/lib/citygrid" in migrate  # the migration keys old codes with the app's key
