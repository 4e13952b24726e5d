"""With DATABASE_URL set, citygrid uses that server: tried against the PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from tests.conftest import ROOT, SHARED

HOST, PORT, USER = "127.0.0.1", 5432, "postgres"


def _admin_conn():
    try:
        return psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL on {HOST}:{PORT}: {e}")


@pytest.fixture(scope="module")
def external_url():
    with _admin_conn() as conn:
        if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'").fetchone():
            pytest.skip(f"the server on {HOST}:{PORT} has no PostGIS")
        name = f"citygrid_ext_{uuid.uuid4().hex[:8]}"
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{USER}@{HOST}:{PORT}/{name}"
    finally:
        with _admin_conn() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _citygrid(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "citygrid.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_and_api_against_external_server(external_url):
    r = _citygrid(external_url, "db", "start")
    assert r.returncode == 0 and "DATABASE_URL is set" in r.stdout
    r = _citygrid(external_url, "migrate")
    assert r.returncode == 0, r.stderr
    assert "revision" in r.stdout
    r = _citygrid(external_url, "city", "import", str(SHARED / "haimen" / "haimen_boundary_gcj02.geojson"),
                  "--crs", "GCJ-02", "--slug", "hm", "--name", "海门区", "--adcode", "320614", "--cell-size", "1000")
    assert r.returncode == 0, r.stderr
    assert "EPSG:4549" in r.stdout
    r = _citygrid(external_url, "users", "add", "ext_admin", "--role", "admin")
    assert r.returncode == 0 and "token: cg_" in r.stdout
    token = r.stdout.split("token: ")[1].split()[0]
    bad = _citygrid(external_url, "users", "add", "x", "--role", "wizard")
    assert bad.returncode == 2 and "unknown role" in bad.stderr

    from fastapi.testclient import TestClient

    from api.app import create_app
    from citygrid.dbcluster import normalise_url

    with TestClient(create_app(normalise_url(external_url))) as client:
        h = client.get("/api/v1/health").json()
        assert h["status"] == "ok"
        hm = next(c for c in h["cities"] if c["slug"] == "hm")
        assert 1_000 < hm["grid"]["cells"] < 1_400  # ~1150 km² in 1 km cells (plus clipped edge cells)
        r = client.post("/api/v1/snap?city=hm", json={"points": [[121.17, 31.89]]},
                        headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["cells"][0]["code"].startswith("320614")
    with psycopg.connect(external_url) as conn:
        assert conn.execute("SELECT count(*) FROM city WHERE slug = 'hm'").fetchone()[0] == 1
