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


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an ordinary user")
def test_ordinary_user_runs_its_own_cluster(tmp_path):
    """As an ordinary user (here: postgres) the cluster runs as that user, in its own var dir."""
    var = Path(tempfile.mkdtemp(prefix="citygrid-user-"))
    shutil.chown(var, "postgres")
    env = {**{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CITYGRID_DB_URL")},
           "CITYGRID_VAR_DIR": str(var / "var"), "CITYGRID_DB_PORT": "54393", "HOME": str(var)}

    def as_user(*args):
        return subprocess.run(["runuser", "-u", "postgres", "--", sys.executable, "-m", "citygrid.cli", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    probe = subprocess.run(["runuser", "-u", "postgres", "--", sys.executable, "-c", "import citygrid"],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        shutil.rmtree(var, ignore_errors=True)
        pytest.skip(f"this machine's Python is not usable by another user: {probe.stderr.strip()[:120]}")
    try:
        r = as_user("db", "start")
        assert r.returncode == 0, r.stderr + r.stdout
        st = json.loads(as_user("db", "status").stdout)
        assert st["running"] and st["os_user"] == "postgres" and st["pgdata"].startswith(str(var))
        assert Path(st["pgdata"]).stat().st_uid == Path(var).stat().st_uid
    finally:
        as_user("db", "stop")
        shutil.rmtree(var, ignore_errors=True)


def test_missing_postgis_as_ordinary_user_names_the_command(monkeypatch):
    """Without PostGIS and without root, start stops with the exact apt-get command."""
    from citygrid import dbcluster

    monkeypatch.setattr(dbcluster, "has_postgis", lambda major: False)
    monkeypatch.setattr(dbcluster, "_is_root", lambda: False)
    majors = dbcluster.installed_majors()
    with pytest.raises(dbcluster.ClusterError) as err:
        dbcluster.choose_major()
    assert f"apt-get install -y --no-install-recommends postgresql-{majors[0]}-postgis-3" in str(err.value)
