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


def _tile(client, headers, z: int = 12) -> tuple[str, set[int]]:
    """(who answered, case ids) of the cases layer's vector tile holding the test's cases."""
    import math

    import mapbox_vector_tile

    lon, lat = 121.16, 31.88
    x = int((lon + 180) / 360 * 2**z)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * 2**z)
    client.cookies.clear()
    r = client.get(f"/api/v1/tiles/cases/{z}/{x}/{y}.mvt", headers=headers)
    assert r.status_code == 200, r.text
    layer = mapbox_vector_tile.decode(r.content).get("cases", {"features": []})
    return r.headers["x-citygrid-read"], {f["id"] for f in layer["features"]}


def test_own_writes_from_the_primary_others_from_the_lagging_standby(cluster, monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from citygrid import settings
    from layers.core.users import add_user

    monkeypatch.setenv("CITYGRID_DATA_DIR", str(cluster.data))
    settings.paths.cache_clear()
    engine, _city, _tok = owncluster.prepare_database(cluster.url())
    with engine.begin() as conn:
        _, op_token = add_user(conn, "replica_operator", "operator")
        _, sup_token = add_user(conn, "replica_supervisor", "supervisor")
    op, sup = auth(op_token), auth(sup_token)
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
