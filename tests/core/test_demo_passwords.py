"""Demo users get passwords (issue 13): random per install, kept beside their tokens and printed by
``citygrid demo``/``run``; or the one configured. Each signs in at the API with it."""

from __future__ import annotations

import json
import stat

from sqlalchemy import text


def test_demo_users_sign_in_with_their_passwords(engine, client, tmp_path, monkeypatch, capsys):
    from citygrid import cli, settings
    from layers.demo.haimen import DEMO_USERS, ensure_demo_users

    monkeypatch.setenv("CITYGRID_VAR_DIR", str(tmp_path))
    settings.paths.cache_clear()
    try:
        with engine.begin() as c:
            known = ensure_demo_users(c)
        kept = json.loads((tmp_path / "demo_tokens.json").read_text())
        assert stat.S_IMODE((tmp_path / "demo_tokens.json").stat().st_mode) == 0o600
        assert set(kept) == {u[0] for u in DEMO_USERS}
        passwords = {name: e["password"] for name, e in kept.items()}
        assert all(len(p) >= 10 for p in passwords.values()) and len(set(passwords.values())) == len(passwords)
        for name, pw in passwords.items():
            r = client.post("/api/v1/auth/login", json={"name": name, "password": pw})
            assert r.status_code == 200, (name, r.text)
            assert r.json()["user"]["name"] == name
        client.cookies.clear()
        # run again: the same passwords (nothing re-hashed), and printed for the user
        with engine.connect() as c:
            before = dict(c.execute(text("SELECT name, password_hash FROM app_user WHERE name = ANY(:n)"),
                                    {"n": list(passwords)}).all())
        with engine.begin() as c:
            again = ensure_demo_users(c)
        assert {n: e["password"] for n, e in again.items()} == passwords
        with engine.connect() as c:
            after = dict(c.execute(text("SELECT name, password_hash FROM app_user WHERE name = ANY(:n)"),
                                   {"n": list(passwords)}).all())
        assert after == before
        cli._print_demo(known)
        out = capsys.readouterr().out
        assert "/login" in out and all(pw in out for pw in passwords.values())
        # a configured demo password replaces them
        monkeypatch.setenv("CITYGRID_AUTH_DEMO_PASSWORD", "demo-password-123")
        settings.auth.cache_clear()
        with engine.begin() as c:
            ensure_demo_users(c)
        r = client.post("/api/v1/auth/login", json={"name": "operator1", "password": "demo-password-123"})
        assert r.status_code == 200
        client.cookies.clear()
    finally:
        monkeypatch.undo()
        settings.paths.cache_clear()
        settings.auth.cache_clear()
        with engine.begin() as c:
            c.execute(text("DELETE FROM login_failure"))
