"""Several worker processes (``citygrid serve --workers 2``, a real subprocess on a free port against the
test database): a write through one worker is seen by every worker's tiles, heat and case lists at
once, and a client's rate limit is counted once across the workers (``database://`` storage)."""

from __future__ import annotations

import datetime as dt
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import mapbox_vector_tile
import pytest

from tests.conftest import auth

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_workers(db_url, haimen, tokens):
    """``citygrid serve --workers 2`` with the worker header on and a small export limit."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": db_url, "CITYGRID_API_WORKER_HEADER": "true",
           "CITYGRID_API_RATE_LIMIT_EXPORT": "5/minute", "CITYGRID_API_RATE_LIMIT_STORAGE": "database://"}
    proc = subprocess.Popen([sys.executable, "-m", "citygrid.cli", "serve", "--workers", "2", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                pids = {httpx.get(f"{base}/api/v1/health", timeout=5).headers["x-citygrid-worker"] for _ in range(20)}
                if len(pids) == 2:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the server stopped: {proc.stderr.read()[-3000:]!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("two workers did not both answer within 120 s")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _from_each_worker(get, check, tries: int = 200) -> dict[str, object]:
    """Call ``get()`` (one request, new connection) until both workers have answered and each answer passed
    ``check``; returns pid -> last answer. An answer failing ``check`` fails the test at once."""
    seen: dict[str, object] = {}
    lock = threading.Lock()
    bad: list = []

    def one():
        r = get()
        pid = r.headers["x-citygrid-worker"]
        try:
            check(r)
        except Exception as e:  # noqa: BLE001 - reported in the test's thread
            bad.append((pid, e))
        with lock:
            seen[pid] = r

    for _ in range(tries // 4):
        threads = [threading.Thread(target=one) for _ in range(4)]  # concurrent: both workers get some
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if bad:
            raise AssertionError(f"worker {bad[0][0]} answered stale: {bad[0][1]}")
        if len(seen) >= 2:
            return seen
    raise AssertionError(f"only workers {sorted(seen)} answered in {tries} requests")


def _tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y


def test_a_write_through_one_worker_is_seen_by_both(two_workers, tokens, engine, haimen):
    base = two_workers
    lon, lat = 121.1831, 31.9012
    z = 16
    x, y = _tile_of(lon, lat, z)
    tile_url = f"{base}/api/v1/tiles/assets/{z}/{x}/{y}.mvt"
    name = f"双进程测试路灯 {uuid.uuid4().hex[:6]}"

    def asset_names(r) -> set[str]:
        assert r.status_code == 200, r.text
        layer = mapbox_vector_tile.decode(r.content).get("assets", {"features": []})
        return {f["properties"].get("name") for f in layer["features"]}

    # the rollup's days are the city's (Asia/Shanghai): after 16:00 UTC a case written now is on tomorrow's
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    heat_q = {"start": str(today - dt.timedelta(days=29)), "end": str(today)}
    sup = auth(tokens["supervisor"])

    def heat_total(r) -> int:
        assert r.status_code == 200, r.text
        return int(r.json()["total"])

    # 1. Warm every worker's caches: the tile (in the tile cache: a hit), the heat (the day cache).
    def get_tile():
        return httpx.get(tile_url, timeout=30)

    def get_heat():
        return httpx.get(f"{base}/api/v1/supervisor/heat", params=heat_q, headers=sup, timeout=60)

    _from_each_worker(get_tile, lambda r: None)
    hits = _from_each_worker(get_tile, lambda r: None)
    assert all(r.headers.get("x-tile-cache") == "hit" for r in hits.values()), \
        {p: r.headers.get("x-tile-cache") for p, r in hits.items()}
    assert all(name not in asset_names(r) for r in hits.values())
    before = {p: heat_total(r) for p, r in _from_each_worker(get_heat, lambda r: None).items()}
    assert len(set(before.values())) == 1, before  # both workers agree before the write
    h0 = next(iter(before.values()))

    # 2. Write through one worker: an asset in the tile, an inspector's report (a case) for the heat and lists.
    r = httpx.post(f"{base}/api/v1/assets", headers=auth(tokens["admin"]), timeout=30,
                   json={"class_code": "0107", "name": name, "dept_code1": "路灯所",
                         "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    assert r.status_code == 201, r.text
    writer = r.headers["x-citygrid-worker"]
    r = httpx.post(f"{base}/api/v1/reports/json", headers={**auth(tokens["inspector"]), "Idempotency-Key": uuid.uuid4().hex},
                   json={"category_code": "E10301", "lon": lon, "lat": lat, "accuracy": 5, "description": "双进程"},
                   timeout=30)
    assert r.status_code == 201, r.text
    case_no = r.json()["case"]["case_no"]

    # 3. Right after, every worker answers with it: the tile (its cache follows the layer's version), the
    # heat (the day cache follows the rollup's change log), the operator's list.
    tiles = _from_each_worker(get_tile, lambda r: None if name in asset_names(r) else pytest.fail(
        f"worker {r.headers['x-citygrid-worker']} served the tile without the new asset"))
    assert writer in tiles and len(tiles) == 2
    _from_each_worker(get_heat, lambda r: None if heat_total(r) == h0 + 1 else pytest.fail(
        f"worker {r.headers['x-citygrid-worker']}: heat total {heat_total(r)}, expected {h0 + 1}"))
    op = auth(tokens["operator"])

    def listed(r):
        assert r.status_code == 200, r.text
        body = r.json()
        items = body["cases"]
        assert case_no in {c["case_no"] for c in items}, f"{case_no} not in the list"

    _from_each_worker(lambda: httpx.get(f"{base}/api/v1/cases", params={"q": case_no}, headers=op, timeout=30), listed)


def test_rate_limit_is_counted_once_across_workers(two_workers, engine):
    """5 anonymous exports a minute per address: 12 asks spread over both workers get exactly 5 answers."""
    from sqlalchemy import text

    base = two_workers
    with engine.begin() as conn:  # the counters of earlier tests from this address
        conn.execute(text("DELETE FROM rate_limit_event"))
    url = f"{base}/api/v1/layers/admin_areas/export"
    got: list[tuple[int, str]] = []
    lock = threading.Lock()

    def one():
        r = httpx.get(url, params={"format": "geojson"}, timeout=120)
        with lock:
            got.append((r.status_code, r.headers["x-citygrid-worker"]))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(s for s, _ in got)
    assert statuses.count(200) == 5 and statuses.count(429) == 7, got
    assert len({p for _, p in got}) == 2, got  # both workers answered, and counted together
