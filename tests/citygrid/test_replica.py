"""The read replica with a real streaming standby (``citygrid db replica start``), lag included: with
replay paused on the standby, an operator's own new case is still read back (from the primary), while
another user's heavy read (OGC items) is served by the standby, which does not have it yet; a replica
that is away costs nothing but the primary's time."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import psycopg
import pytest

from tests.citygrid import owncluster
from tests.conftest import auth

ITEMS = "/api/v1/ogc/collections/cases/items"


@pytest.fixture
def cluster():
    c = owncluster.make("replica", 54371)
    c.cli("db", "start", CITYGRID_DB_REPLICA_PORT="54372")
    yield c
    owncluster.remove(c)  # the primary and the replica


def _replica_sql(status: dict, sql: str):
    with psycopg.connect(host=status["socket"], port=status["port"], user="citygrid", dbname="citygrid",
                         autocommit=True) as conn:
        return conn.execute(sql).fetchone()


def _new_case(client, headers, k: int) -> int:
    body = {"category_code": "E10101", "channel": "电话", "request_type": "投诉",
            "description": f"副本测试 replica test {k}", "address": "海门街道某小区",
            "location": {"x": 121.16 + 0.003 * k, "y": 31.88, "crs": "EPSG:4326"},
            "contact": {"name": "张三", "phone": "13800000000"}}
    r = client.post("/api/v1/cases", json=body, headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 201, r.text
    assert r.headers["x-citygrid-wal"] == client.cookies.get("citygrid_wal")  # the write's WAL position
    return r.json()["id"]


def _items(client, headers=None, cookies=None) -> tuple[str, set[int]]:
    client.cookies.clear()  # each read says who it is explicitly: token and/or cookie
    for k, v in (cookies or {}).items():
        client.cookies.set(k, v)
    r = client.get(ITEMS, params={"limit": 1000, "f": "json"}, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.headers["x-citygrid-read"], {f["id"] for f in r.json()["features"]}


def _tile_xy(z: int) -> tuple[int, int]:
    """The tile at zoom z holding the test's cases."""
    import math

    lon, lat = 121.16, 31.88
    return int((lon + 180) / 360 * 2**z), int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * 2**z)


def _tile(client, headers, z: int = 12) -> tuple[str, set[int]]:
    """(who answered, case ids) of the cases layer's vector tile holding the test's cases."""
    import mapbox_vector_tile

    x, y = _tile_xy(z)
    client.cookies.clear()
    r = client.get(f"/api/v1/tiles/cases/{z}/{x}/{y}.mvt", headers=headers)
    assert r.status_code == 200, r.text
    layer = mapbox_vector_tile.decode(r.content).get("cases", {"features": []})
    return r.headers["x-citygrid-read"], {f["id"] for f in layer["features"]}


def _get(client, url, headers, cookies=None, **params):
    """A GET that says who it is explicitly (token and/or cookie): the answer and who served it."""
    client.cookies.clear()
    for k, v in (cookies or {}).items():
        client.cookies.set(k, v)
    r = client.get(url, headers=headers, params=params)
    assert r.status_code == 200, (url, r.text)
    return r, r.headers["x-citygrid-read"]


def _export_job(client, headers) -> tuple[str, dict]:
    """Start a background CSV export of the cases layer; (who the job reads, the finished job)."""
    client.cookies.clear()
    r = client.post("/api/v1/layers/cases/export-jobs", headers=headers, params={"format": "csv"})
    assert r.status_code == 202, r.text
    where, job = r.headers["x-citygrid-read"], r.json()
    deadline = time.monotonic() + 60
    while job["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        client.cookies.clear()
        job = client.get(job["status_url"], headers=headers).json()
    assert job["status"] == "done", job
    client.cookies.clear()
    f = client.get(job["file_url"], headers=headers)
    assert f.status_code == 200
    job["file_rows"] = len([ln for ln in f.text.splitlines() if ln.strip()]) - 1  # less the header
    return where, job


def _supervisor_maps(client, sup, cookies=None) -> dict:
    """Heat, hot spots, emerging hot spots, case cells and a heat tile: who served each, and the cases each
    counted (the heat's and the cells' totals, the hot spots' received count)."""
    out = {}
    r, out["heat"] = _get(client, "/api/v1/supervisor/heat", sup, cookies)
    out["heat_total"] = r.json()["total"]
    r, out["hotspots"] = _get(client, "/api/v1/supervisor/hotspots", sup, cookies)
    out["hotspots_received"] = r.json()["counts"]["received"]
    r, out["cells"] = _get(client, "/api/v1/supervisor/cells", sup, cookies)
    out["cells_total"] = r.json()["total"]
    _, out["emerging"] = _get(client, "/api/v1/supervisor/emerging", sup, cookies, steps=3, step_days=1)
    x, y = _tile_xy(12)
    _, out["heat_tile"] = _get(client, f"/api/v1/supervisor/heat/tiles/12/{x}/{y}.mvt", sup, cookies)
    _, out["options"] = _get(client, "/api/v1/supervisor/options", sup, cookies)
    return out


def test_own_writes_from_the_primary_others_from_the_lagging_standby(cluster, monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from citygrid import settings
    from layers.core.users import add_user

    monkeypatch.setenv("CITYGRID_DATA_DIR", str(cluster.data))
    # the heat's day cache compacts the rollup change log past a size: never on the (read-only) standby
    monkeypatch.setattr("layers.analytics.cache.CHANGE_LOG_COMPACT_AT", 0)
    settings.paths.cache_clear()
    engine, _city, _tok = owncluster.prepare_database(cluster.url())
    with engine.begin() as conn:
        _, op_token = add_user(conn, "replica_operator", "operator")
        _, sup_token = add_user(conn, "replica_supervisor", "supervisor")
        _, exp_token = add_user(conn, "replica_exporter", "supervisor")  # starts export jobs (a write of its own)
    op, sup, exporter = auth(op_token), auth(sup_token), auth(exp_token)
    try:
        st = json.loads(cluster.cli("db", "replica", "start", CITYGRID_DB_REPLICA_PORT="54372").stdout)
        assert st["running"] and st["streaming"] and st["port"] == 54372
        assert _replica_sql(st, "SELECT pg_is_in_recovery()")[0] is True
        monkeypatch.setenv("CITYGRID_DB_READ_URL", st["url"])
        with TestClient(create_app(cluster.url())) as client:
            first = _new_case(client, op, 0)
            # the standby catches up; then everyone's heavy reads go to it
            deadline = time.monotonic() + 30
            while _items(client, op)[0] != "replica" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _items(client, op) == ("replica", {first})
            assert _items(client, sup) == ("replica", {first})

            # Lag: replay paused on the standby; the operator writes a new case.
            _replica_sql(st, "SELECT pg_wal_replay_pause()")
            second = _new_case(client, op, 1)
            cookie = client.cookies.get("citygrid_wal")
            assert cookie and "/" in cookie
            # the operator's own new case is read back (from the primary) ...
            assert _items(client, op) == ("primary", {first, second})
            # ... while another user's heavy read is served by the standby, which has not replayed it
            assert _items(client, sup) == ("replica", {first})
            # vector tiles too: the operator's tile has the new case, the supervisor's (standby) not yet
            assert _tile(client, op) == ("primary", {first, second})
            assert _tile(client, sup) == ("replica", {first})
            # analytics too: the supervisor's statistics come from the standby (one case so far there)
            r = client.get("/api/v1/supervisor/summary", headers=sup)
            assert r.status_code == 200 and r.headers["x-citygrid-read"] == "replica"
            assert sum(d["n"] for d in r.json()["by_day"]) == 1
            r = client.get("/api/v1/supervisor/kpis", headers=sup, params={"month": dt.date.today().strftime("%Y-%m")})
            assert r.status_code == 200 and r.headers["x-citygrid-read"] == "replica", r.text
            # heat, hot spots, emerging hot spots, cells, heat tiles, filter options: the standby (one case)
            maps = _supervisor_maps(client, sup)
            assert {k: v for k, v in maps.items() if isinstance(v, str)} == dict.fromkeys(
                ("heat", "hotspots", "cells", "emerging", "heat_tile", "options"), "replica"), maps
            assert maps["heat_total"] == maps["hotspots_received"] == maps["cells_total"] == 1, maps
            # ... and with the operator's write position (its cookie): the primary, both cases
            maps = _supervisor_maps(client, sup, cookies={"citygrid_wal": cookie})
            assert set(v for v in maps.values() if isinstance(v, str)) == {"primary"}, maps
            assert maps["heat_total"] == maps["hotspots_received"] == maps["cells_total"] == 2, maps
            # a background export job reads the standby: the file has the one case the standby has
            where, job = _export_job(client, exporter)
            assert where == "replica" and job["rows"] == job["total"] == job["file_rows"] == 1, job
            # the operator's own export (its new case not on the standby yet): read from the primary
            where, job = _export_job(client, op)
            assert where == "primary" and job["rows"] == job["total"] == job["file_rows"] == 2, job
            # the cookie carries the position to any worker: a browser sending it reads from the primary
            assert _items(client, sup, cookies={"citygrid_wal": cookie}) == ("primary", {first, second})
            # so does the X-Citygrid-Wal header, sent back by an API client without cookies
            assert _items(client, {**sup, "X-Citygrid-Wal": cookie}) == ("primary", {first, second})
            assert json.loads(cluster.cli("db", "replica", "status", CITYGRID_DB_REPLICA_PORT="54372").stdout
                              )["replay_paused"] is True

            # Replay resumes: the operator's reads go back to the standby once it has the case.
            _replica_sql(st, "SELECT pg_wal_replay_resume()")
            deadline = time.monotonic() + 30
            while _items(client, op)[0] != "replica" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _items(client, op) == ("replica", {first, second})
            assert _items(client, sup) == ("replica", {first, second})

            # The standby goes away: reads fall back to the primary, nothing fails.
            cluster.cli("db", "replica", "stop", CITYGRID_DB_REPLICA_PORT="54372")
            assert _items(client, sup) == ("primary", {first, second})
            third = _new_case(client, op, 2)
            assert _items(client, op) == ("primary", {first, second, third})
    finally:
        engine.dispose()
        settings.paths.cache_clear()
