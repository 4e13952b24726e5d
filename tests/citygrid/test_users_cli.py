"""``citygrid users add NAME --role ROLE --password-stdin`` and ``citygrid users passwd NAME
--password-stdin`` (issue 13), run as a real process against the test database: the password is read
from standard input, never printed, and opens a session at the API."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[2]


def _citygrid(url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "citygrid.cli", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_users_add_and_passwd_from_stdin(db_url, engine, client):
    name = f"cli_{uuid.uuid4().hex[:6]}"
    r = _citygrid(db_url, "users", "add", name, "--role", "operator", "--password-stdin", stdin="cli-password-one\n")
    assert r.returncode == 0, r.stderr
    assert "password set" in r.stdout and "cli-password-one" not in r.stdout + r.stderr
    with engine.connect() as c:
        stored = c.execute(text("SELECT password_hash FROM app_user WHERE name = :n"), {"n": name}).scalar_one()
    assert stored.startswith("$argon2id$")
    assert client.post("/api/v1/auth/login", json={"name": name, "password": "cli-password-one"}).status_code == 200
    r = _citygrid(db_url, "users", "passwd", name, "--password-stdin", stdin="cli-password-two\n")
    assert r.returncode == 0, r.stderr
    assert "cli-password-two" not in r.stdout + r.stderr
    assert client.get("/api/v1/auth/me").json()["user"] is None  # the session ended with the new password
    assert client.get("/api/v1/cases", params={"limit": 1}).status_code == 401
    assert client.post("/api/v1/auth/login", json={"name": name, "password": "cli-password-one"}).status_code == 401
    assert client.post("/api/v1/auth/login", json={"name": name, "password": "cli-password-two"}).status_code == 200
    client.cookies.clear()
    # a too short password is refused with a message, nothing changed
    r = _citygrid(db_url, "users", "passwd", name, "--password-stdin", stdin="short\n")
    assert r.returncode == 2 and "至少" in r.stderr and "short" not in r.stderr.replace("shortest", "")
    bad = _citygrid(db_url, "users", "add", f"{name}_x", "--role", "planner", "--password-stdin", stdin="tiny\n")
    assert bad.returncode == 2
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM app_user WHERE name = :n"), {"n": f"{name}_x"}).scalar_one() == 0
    # disable / enable
    assert _citygrid(db_url, "users", "disable", name).returncode == 0
    assert client.post("/api/v1/auth/login", json={"name": name, "password": "cli-password-two"}).status_code == 401
    assert _citygrid(db_url, "users", "enable", name).returncode == 0
    assert client.post("/api/v1/auth/login", json={"name": name, "password": "cli-password-two"}).status_code == 200
    client.cookies.clear()
    with engine.begin() as c:
        c.execute(text("DELETE FROM login_failure"))
