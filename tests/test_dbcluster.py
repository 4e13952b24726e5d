"""The project's own PostgreSQL + PostGIS cluster: unprivileged, socket-only, started from nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CITYGRID_DB_URL")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "citygrid.cli", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=300)


def test_own_cluster_runs_unprivileged_and_socket_only(db_url):
    st = json.loads(_cli("db", "status").stdout)
    assert st["running"] is True
    assert st["os_user"] != "root"
    with psycopg.connect(host=st["socket"], port=st["port"], user="citygrid", dbname="postgres") as conn:
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == ""
        assert conn.execute("SELECT 1 FROM pg_available_extensions WHERE name='postgis'").fetchone()
        owner = conn.execute("SELECT pg_catalog.current_setting('data_directory')").fetchone()[0]
    assert Path(owner).stat().st_uid != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the unreachable-checkout case arises when started as root")
def test_fresh_cluster_where_the_os_user_cannot_enter():
    """A checkout under a folder the postgres user cannot enter: the cluster's files go elsewhere, and say so."""
    hidden = Path(tempfile.mkdtemp(prefix="citygrid-hidden-", dir="/root"))
    os.chmod(hidden, 0o700)
    env = {"CITYGRID_VAR_DIR": str(hidden / "var"), "CITYGRID_DB_PORT": "54391"}
    try:
        r = _cli("db", "start", env=env)
        assert r.returncode == 0, r.stderr + r.stdout
        assert "cannot enter" in r.stdout and "/var/lib/citygrid/" in r.stdout
        st = json.loads(_cli("db", "status", env=env).stdout)
        assert st["running"] and st["pgdata"].startswith("/var/lib/citygrid/")
        with psycopg.connect(host=st["socket"], port=54391, user="citygrid", dbname="citygrid") as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            assert conn.execute("SELECT postgis_lib_version()").fetchone()[0].startswith("3.")
        again = _cli("db", "start", env=env)  # a second start reuses the running cluster
        assert again.returncode == 0 and "initdb" not in again.stdout
        assert _cli("db", "stop", env=env).returncode == 0
        assert json.loads(_cli("db", "status", env=env).stdout)["running"] is False
    finally:
        _cli("db", "destroy", env=env)
        shutil.rmtree(hidden, ignore_errors=True)
