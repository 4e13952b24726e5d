"""No request can stall or crash the server (issue 10): the event loop never blocks, bodies are capped,
anonymous callers are rate-limited, export jobs are capped and shared, a database outage is a 503,
every answer carries security headers, and errors show no server paths."""

from __future__ import annotations

import io
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from shapely.geometry import box
from sqlalchemy import text

from tests.conftest import auth, metric_city

SUBMIT, STATUS = "/api/v1/public/requests", "/api/v1/public/status"
# A small test city of its own (5 km × 5 km of 100 m cells) for the load test's 50,000 cases.
LOAD_BOX = box(660_000, 3_570_000, 665_000, 3_575_000)


def _lonlat(x: float, y: float) -> tuple[float, float]:
    from gis import crs as gcrs

    lon, lat = gcrs.transform_xy(np.array([x]), np.array([y]), "EPSG:4549", "EPSG:4326")
    return float(lon[0]), float(lat[0])


def _jpeg(w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 180, 60)).save(buf, "JPEG")
    return buf.getvalue()


# -- 1. the event loop never blocks ----------------------------------------------------------------

@pytest.fixture(scope="module")
def load_city(engine, haimen):  # after Haimen: pages and tests list the demo city first
    with engine.begin() as conn:
        city, _ = metric_city(conn, "loadtest", "负载测试市", "990301", LOAD_BOX)
    return city


def test_event_loop_never_blocks(engine, db_url, load_city, tokens, tmp_path):
    """A real uvicorn server (a subprocess) answers with p99 < 100 ms while it takes four large
    uploads (a 7000×7000 PNG, a 6000×6000 PNG, two ~9 MB JPEGs of noise) and imports 50,000 cases.
    Before: the PNG alone stalled health for 2.4 s (the upload route decoded on the event loop)."""
    from bench.bench_cases import make_csv
    from bench.bench_public_load import HealthProbe, run_load, serve, uploads
    from layers.cases import citizen

    path = tmp_path / "cases.csv"
    with engine.connect() as conn:
        make_csv(conn, load_city, 50_000, path, seed=int(time.time()))
    files = uploads()
    spot = _lonlat(662_512.0, 3_572_488.0)
    # Measured at most twice: this machine's two cores are shared with other test runs, and a burst of
    # theirs (a stall of the machine, not of this server) can spoil one measurement. The code before
    # stalled the loop for seconds at every upload: it fails both.
    for attempt in (1, 2):
        before = set(citizen.photo_dir().iterdir())
        proc, base = serve(db_url)  # the same CITYGRID_DATA_DIR as this process (conftest sets it)
        try:
            with HealthProbe(base) as idle:
                time.sleep(2.5)
            out = run_load(base, files, path, tokens["operator"], load_city.slug, dry_run=attempt == 2, spot=spot)
        finally:
            proc.terminate()
            proc.wait(10)
        h, a, lo = out["health"], idle.stats(), out["loop"]
        slowest = sorted(((round(t, 2), round(x * 1000)) for t, x in out["timeline"]), key=lambda p: -p[1])[:8]
        print(f"\nattempt {attempt} under load: health {h}, loop only (/openapi.json) {lo}; idle health (anchor) {a}; "
              f"slowest health (s since start, ms): {slowest}")
        # Health adds a round trip to PostgreSQL — a server shared with every other test run here, whose
        # latency is not this service's — so its p99 is held to the target when the database answers the
        # anchor fast, and never to seconds (before: a 2.4 s stall per upload).
        fast = lo["p99_ms"] < 100 and h["p99_ms"] < (100 if a["p99_ms"] < 20 else 500)
        if fast or attempt == 2:
            break
    assert not out["health_errors"]
    assert h["n"] >= 50 and lo["n"] >= 50, (h, lo)  # requests sent every 50 ms through the whole load
    # The event loop never blocks: what it serves alone answers in < 100 ms (p99) all through the load.
    assert lo["p99_ms"] < 100, lo
    assert h["p99_ms"] < (100 if a["p99_ms"] < 20 else 500), (h, a)
    got = {what: (status, body) for what, status, body in out["uploads"]}
    status, body = got["7000x7000 PNG"]  # refused from its header, before any pixel was decoded
    assert status == 422 and "49,000,000 pixels" in body["detail"] and "40,000,000" in body["detail"]
    for what in ("6000x6000 PNG", "JPEG of noise"):
        assert got[what][0] == 201 and got[what][1]["case_no"], got[what]
    status, rep = out["import"]
    assert status == 200, rep
    assert rep["rows"] == 50_000 and rep["accounted"], rep
    if rep["dry_run"]:  # the second attempt: the file was imported by the first
        return
    assert rep["imported"] >= 49_900, rep
    with engine.connect() as c:
        n = c.execute(text("SELECT count(*) FROM case_file WHERE city_id = :c AND source = 'hotline'"),
                      {"c": load_city.id}).scalar_one()
    assert n >= rep["imported"]
    new = set(citizen.photo_dir().iterdir()) - before  # the three accepted photos, and no other
    assert len(new) == 3


def test_pixel_cap_is_checked_before_decoding():
    from bench.bench_public_load import solid_png
    from gis import photos

    assert Image.MAX_IMAGE_PIXELS == photos.DEFAULT_MAX_PIXELS == 40_000_000
    bomb = solid_png(20_000, 20_000)  # 400 MP: decoding it would take ~1.2 GB
    t0 = time.perf_counter()
    with pytest.raises(photos.PhotoError, match="400,?000,?000 pixels"):  # Pillow's own guard, above 2 × the cap
        photos.public_copy(bomb)
    assert time.perf_counter() - t0 < 0.5
    with pytest.raises(photos.PhotoError, match="more than the limit"):
        photos.public_copy(solid_png(7000, 7000))
    assert len(photos.public_copy(solid_png(3000, 2000))) > 1000


# -- 3. a refused submission leaves no photo behind -------------------------------------------------

def test_refused_submission_leaves_no_photo(client, haimen):
    from layers.cases import citizen

    before = set(citizen.photo_dir().iterdir())
    r = client.post(SUBMIT, data={"category_code": "E10301", "description": "门口垃圾 rubbish", "lon": "116.40",
                                  "lat": "39.90", "crs": "EPSG:4326"},  # Beijing: outside the city
                    files={"photo": ("p.jpg", _jpeg(), "image/jpeg")})
    assert r.status_code == 422 and "outside" in r.json()["detail"], r.text
    r = client.post(SUBMIT, data={"category_code": "NOPE99", "description": "x", "lon": "121.17", "lat": "31.89",
                                  "crs": "EPSG:4326"}, files={"photo": ("p.jpg", _jpeg(), "image/jpeg")})
    assert r.status_code == 422, r.text
    assert set(citizen.photo_dir().iterdir()) == before
    # An accepted one keeps exactly its photo.
    r = client.post(SUBMIT, data={"category_code": "E10301", "description": "门口垃圾 rubbish", "lon": "121.17",
                                  "lat": "31.89", "crs": "EPSG:4326"}, files={"photo": ("p.jpg", _jpeg(), "image/jpeg")})
    assert r.status_code == 201, r.text
    assert len(set(citizen.photo_dir().iterdir()) - before) == 1


# -- 2. limits: body size ----------------------------------------------------------------------------

def _raw_request(base: str, head: str, body: bytes = b"", wait: float = 10.0) -> tuple[int, bytes, float]:
    """Send a raw HTTP/1.1 request; (status, answer, seconds until the answer)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        t0 = time.perf_counter()
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < 20:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        took = time.perf_counter() - t0
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return int(data.split(b" ", 2)[1]), data, took


def test_body_cap_answers_before_reading_the_body(live_server):
    # Content-Length of 50 MB and not one byte sent: the answer comes at once (the body is never awaited).
    head = ("POST /api/v1/public/status HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 52428800\r\n\r\n")
    status, data, took = _raw_request(live_server, head, wait=5)
    assert status == 413 and took < 2, (status, took)
    assert b"1,048,576 bytes" in data
    # The same for an upload route, with its own (larger) cap.
    head = ("POST /api/v1/public/requests HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 60000000\r\n\r\n")
    status, data, took = _raw_request(live_server, head, wait=5)
    assert status == 413 and took < 2 and f"{11 * 1024 * 1024:,}".encode() in data


def test_body_cap_while_streaming_without_a_length(live_server):
    def chunks():
        for _ in range(40):
            yield b" " * 65536  # 2.5 MiB of JSON whitespace, chunked: no Content-Length

    r = httpx.post(live_server + STATUS, content=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "1,048,576" in r.json()["detail"]
    # Under the cap, the route answers as always (here: a 422 for the missing fields).
    r = httpx.post(live_server + STATUS, content=b"{}" + b" " * 500_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    # The intake fast path keeps its own 64 KiB cap.
    r = httpx.post(live_server + "/api/v1/reports/json", content=b"{" + b" " * 70_000 + b"}",
                   headers={"Content-Type": "application/json", "Authorization": "Bearer cg_x"})
    assert r.status_code == 413


def test_per_route_caps(client, haimen):
    from api.limits import body_cap

    assert body_cap("POST", "/api/v1/public/status") == 1 << 20
    assert body_cap("POST", "/api/v1/public/requests") == 11 << 20
    assert body_cap("POST", "/api/v1/cases/import") > 50_000_000
    assert body_cap("POST", "/api/v1/reports") > 9 * 15_000_000
    assert body_cap("POST", "/api/v1/cases/12/verify") == body_cap("POST", "/api/v1/reports")
    assert body_cap("POST", "/api/v1/snap") > 100_000 * 30  # the largest point list fits
    # A 2 MiB JSON body to the snap endpoint passes the default cap's size: it is not a 413.
    pts = [[121.17, 31.89]] * 60_000
    r = client.post("/api/v1/snap", json={"points": pts}, headers={"Authorization": "Bearer cg_x"})
    assert r.status_code == 401


# -- 2. limits: rate limits --------------------------------------------------------------------------

@pytest.fixture
def strict_limits(app):
    """The app's rate limits set low for a test (fresh counters), restored after it."""
    from api.limits import RateLimits
    from citygrid import settings

    old = app.state.rate_limits
    app.state.rate_limits = RateLimits(settings.ApiSettings(rate_limit_submit="2/minute", rate_limit_lookup="3/minute",
                                                            rate_limit_export="2/minute"))
    yield app.state.rate_limits
    app.state.rate_limits = old


def _addr() -> str:
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"


def test_anonymous_rate_limits_per_address(app, client, haimen, tokens, strict_limits):
    a, b = TestClient(app, client=(_addr(), 1000)), TestClient(app, client=(_addr(), 1000))
    bad = {"category_code": "E10301", "description": ""}  # refused (422), but counted all the same
    assert [a.post(SUBMIT, data=bad).status_code for _ in range(2)] == [422, 422]
    r = a.post(SUBMIT, data=bad)
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
    assert "too many requests" in r.json()["detail"]
    assert b.post(SUBMIT, data=bad).status_code == 422  # another address is not affected
    # Look-ups (status and rate share one limit).
    q = {"case_no": "x", "query_code": "000000"}
    got = [b.post(STATUS, json=q).status_code for _ in range(2)] + [b.post("/api/v1/public/rate", json={**q, "rating": "satisfied"}).status_code]
    assert got == [404, 404, 404]
    r = b.post(STATUS, json=q)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # Anonymous exports; staff with a token are not limited.
    url = "/api/v1/layers/admin_areas/export?format=csv"
    assert [a.get(url).status_code for _ in range(2)] == [200, 200]
    assert a.get(url).status_code == 429
    assert a.get(url, headers={"Authorization": "Bearer cg_unknown"}).status_code == 429  # a bad token is anonymous
    assert a.get(url, headers=auth(tokens["planner"])).status_code == 200


def test_rate_limit_honours_trusted_proxy_hops(app, haimen, strict_limits, monkeypatch):
    from citygrid import settings

    monkeypatch.setenv("CITYGRID_API_TRUSTED_PROXY_HOPS", "1")
    settings.api.cache_clear()
    try:
        proxy = TestClient(app, client=(_addr(), 1000))
        bad = {"category_code": "E10301", "description": ""}
        one, two = _addr(), _addr()
        for _ in range(2):
            assert proxy.post(SUBMIT, data=bad, headers={"X-Forwarded-For": f"6.6.6.6, {one}"}).status_code == 422
        assert proxy.post(SUBMIT, data=bad, headers={"X-Forwarded-For": f"7.7.7.7, {one}"}).status_code == 429
        assert proxy.post(SUBMIT, data=bad, headers={"X-Forwarded-For": two}).status_code == 422
    finally:
        settings.api.cache_clear()


# -- 2. limits: export jobs ----------------------------------------------------------------------------

def _wait_job(base: str, job: dict, headers=None, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = httpx.get(base + job["status_url"], headers=headers or {}).json()
        if st["status"] != "running":
            return st
        time.sleep(0.1)
    raise AssertionError(f"job not finished: {st}")


def test_46_concurrent_export_jobs_never_500(app, live_server, engine, haimen):
    """Before: 46 concurrent anonymous export-job posts gave 11 × 500 (pool timeout)."""
    from api.limits import RateLimits
    from citygrid import settings

    app.state.rate_limits = RateLimits(settings.ApiSettings(rate_limit_export="1000/minute"))
    combos = [(f, c) for f in ("gpkg", "geojson", "csv", "fgb", "parquet", "shp") for c in ("EPSG:4326", "EPSG:4490", "GCJ-02")]
    asks = [combos[i % len(combos)] for i in range(46)]
    results: list = []

    def post(fmt_crs):
        fmt, crs = fmt_crs
        r = httpx.post(f"{live_server}/api/v1/layers/grid_cells/export-jobs", timeout=120,
                       params={"format": fmt, "crs": crs, "area": "320614001"})
        results.append((fmt_crs, r.status_code, r.json(), r.headers.get("Retry-After")))

    threads = [threading.Thread(target=post, args=(a,)) for a in asks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(s for _, s, _, _ in results)
    assert len(results) == 46 and all(s in (202, 429) for s in statuses), statuses
    accepted = [(a, body) for a, s, body, _ in results if s == 202]
    refused = [(body, ra) for _, s, body, ra in results if s == 429]
    assert accepted and refused
    assert all(ra and int(ra) > 0 and "export jobs" in body["detail"] for body, ra in refused)
    # The same ask is one job (shared while it runs, or done); the others wait for a free slot (429: the
    # cap of this client's running jobs — a slot frees as soon as a job is done, so which asks got one
    # depends on timing; the caps themselves: test_export_job_caps_per_city_and_client).
    by_ask: dict = {}
    for a, body in accepted:
        by_ask.setdefault(a, set()).add(body["id"])
    assert all(len(ids) == 1 for ids in by_ask.values()), by_ask
    assert len(by_ask) < len(combos)
    for ids in by_ask.values():
        st = _wait_job(live_server, {"status_url": f"/api/v1/export-jobs/{next(iter(ids))}"})
        assert st["status"] == "done" and st["rows"] > 1000, st
    app.state.rate_limits = RateLimits()


def test_identical_public_export_reuses_the_file_until_the_layer_changes(app, live_server, engine, haimen):
    from api.limits import RateLimits

    app.state.rate_limits = RateLimits()
    ask = {"format": "csv", "crs": "EPSG:4326", "area": "320614002"}
    url = f"{live_server}/api/v1/layers/grid_cells/export-jobs"
    first = httpx.post(url, params=ask).json()
    done = _wait_job(live_server, first)
    assert done["status"] == "done"
    second = httpx.post(url, params=ask)
    assert second.status_code == 202 and second.json()["id"] == first["id"] and second.json()["status"] == "done"
    f1 = httpx.get(live_server + first["file_url"])
    assert f1.status_code == 200 and f1.content.count(b"\n") == done["rows"] + 1
    other = httpx.post(url, params={**ask, "crs": "EPSG:4490"}).json()  # another ask: another job
    assert other["id"] != first["id"]
    _wait_job(live_server, other)
    with engine.begin() as c:  # the layer changes: the cached file is no longer the layer
        c.execute(text("UPDATE layer_version SET version = version + 1 WHERE layer = 'grid'"))
    third = httpx.post(url, params=ask).json()
    assert third["id"] != first["id"]
    assert _wait_job(live_server, third)["status"] == "done"
    with engine.connect() as c:
        n = c.execute(text("SELECT count(*) FROM export_job WHERE request->>'cache_key' IS NOT NULL "
                           "AND id IN (:a, :b)"), {"a": first["id"], "b": third["id"]}).scalar_one()
        stored = c.execute(text("SELECT request::text FROM export_job WHERE id = :a"), {"a": first["id"]}).scalar_one()
    assert n == 2 and "127.0.0.1" not in stored  # the client is kept as a digest, not its address


def test_export_job_caps_per_city_and_client(engine, haimen, monkeypatch):
    from layers.publish import catalog as lcat
    from layers.publish import export as lexp

    monkeypatch.setenv("CITYGRID_EXPORT_MAX_JOBS_PER_CITY", "2")
    monkeypatch.setenv("CITYGRID_EXPORT_MAX_JOBS_PER_CLIENT", "1")
    with engine.connect() as conn:
        layer = lcat.get_layer(conn, haimen, "grid_cells")
    pair = [(layer, "full")]
    # Held open: a running job is one whose advisory lock is held (here by this test's connection).
    holders = []
    try:
        for client in ("user:901", "user:902"):
            c = engine.connect()
            holders.append(c)
            jid = f"test-cap-{uuid.uuid4().hex[:8]}"
            c.execute(text("SELECT pg_advisory_lock(:c, hashtext(:id))"), {"c": lexp.LOCK_CLASS, "id": jid})
            c.execute(text("""INSERT INTO export_job (id, city_id, layers, format, crs, request, total, media)
                              VALUES (:id, :city, '{grid_cells}', 'csv', 'EPSG:4326', CAST(:r AS jsonb), 1, 'text/csv')"""),
                      {"id": jid, "city": haimen.id, "r": f'{{"client": "{client}"}}'})
            c.commit()
        with pytest.raises(lexp.TooManyJobs) as e:
            lexp.start_job(engine, haimen, pair, "csv", "EPSG:4326", None, owner=None, client="user:903")
        assert e.value.scope == "city"
        monkeypatch.setenv("CITYGRID_EXPORT_MAX_JOBS_PER_CITY", "5")
        with pytest.raises(lexp.TooManyJobs) as e:
            lexp.start_job(engine, haimen, pair, "csv", "EPSG:4326", None, owner=None, client="user:901")
        assert e.value.scope == "client"
    finally:
        for c in holders:
            c.execute(text("UPDATE export_job SET status = 'failed', error = 'test', finished_at = now() "
                           "WHERE id LIKE 'test-cap-%' AND status = 'running'"))
            c.commit()
            c.close()


# -- 4. 503 while the database cannot be reached ---------------------------------------------------

def test_database_unreachable_is_503_with_retry_after(tokens):
    from api.app import create_app

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(f"postgresql+psycopg://citygrid@127.0.0.1:{port}/nowhere?connect_timeout=2")
    with TestClient(app, raise_server_exceptions=False) as c:
        for method, url, kw in (("GET", "/api/v1/public/notices", {}),
                                ("GET", "/api/v1/cases", {"headers": auth(tokens["operator"])}),
                                ("POST", STATUS, {"json": {"case_no": "x", "query_code": "1"}}),
                                ("POST", "/api/v1/reports/json", {"json": {"category_code": "E10301"},
                                                                   "headers": auth(tokens["inspector"])}),
                                ("GET", "/api/v1/health", {})):
            r = c.request(method, url, **kw)
            assert r.status_code == 503, (url, r.status_code, r.text)
            assert int(r.headers["Retry-After"]) >= 1, url
            assert "127.0.0.1" not in r.text and str(port) not in r.text


def test_statement_errors_are_not_503():
    """Only a database that cannot be reached is a 503: a statement the server refused is not."""
    import psycopg
    import sqlalchemy.exc as sa

    from api.limits import is_unavailable

    assert is_unavailable(sa.OperationalError("x", {}, psycopg.OperationalError("connection refused")))
    assert is_unavailable(sa.TimeoutError("QueuePool limit of size 10 overflow 35 reached"))
    assert not is_unavailable(sa.OperationalError("x", {}, psycopg.errors.QueryCanceled("statement timeout")))
    assert not is_unavailable(ValueError("x"))


# -- 5. security headers, health, server paths ---------------------------------------------------------

def test_security_headers_on_every_answer(client, haimen):
    for url in ("/", "/public", "/operator", "/static/vendor/leaflet/leaflet.js", "/api/v1/health",
                "/api/v1/public/notices", "/api/v1/nothing-here", "/docs", "/open311/v2/services.json"):
        r = client.get(url)
        assert r.headers["x-content-type-options"] == "nosniff", url
        assert r.headers["x-frame-options"] == "DENY", url
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], url
        assert r.headers["referrer-policy"] in ("strict-origin-when-cross-origin", "no-referrer"), url
    page = client.get("/public").headers["content-security-policy"]
    # no page has an inline script any more (their code is in .js files): scripts only from the site itself,
    # never inline (a hash would be listed for an inline script, never 'unsafe-inline')
    script_src = page.split("script-src")[1].split(";")[0]
    assert script_src.startswith(" 'self'") and "'unsafe-inline'" not in script_src and "http" not in script_src
    assert "'unsafe-eval'" not in page
    assert client.get("/api/v1/health").headers["content-security-policy"].startswith("default-src 'none'")
    assert client.post(STATUS, content=b"x" * (2 << 20)).headers["x-content-type-options"] == "nosniff"  # a 413 too


@pytest.mark.browser
def test_pages_run_under_their_csp(browser, live_server, haimen):
    """Every page loads in Chromium under its Content-Security-Policy without a single violation (the
    inline scripts are allowed by hash, the vendored Leaflet by origin), and its script runs."""
    for name, ready in (("", "document.getElementById('health').textContent.includes('EPSG')"),
                        ("public", "document.querySelectorAll('#category option').length > 1"),
                        ("operator", "document.readyState === 'complete'"),
                        ("inspector", "document.readyState === 'complete'"),
                        ("supervisor", "!!document.querySelector('.leaflet-container')"),
                        ("planner", "!!document.querySelector('.leaflet-container')"),
                        ("login", "document.body.dataset.ready === '1'"),
                        ("admin", "document.body.dataset.ready === '1'")):
        page = browser.new_page(locale="zh-CN")
        violations: list[str] = []
        page.on("console", lambda m, v=violations: v.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(f"{live_server}/{name}")
        page.wait_for_function(ready, timeout=15000)
        page.wait_for_timeout(300)
        assert not violations, (name, violations)
        page.close()


def test_gis_read_error_shows_no_server_path(client, tokens, haimen):
    r = client.post("/api/v1/admin/cities", headers=auth(tokens["admin"]),
                    data={"slug": "badfile", "name": "坏文件", "adcode": "990302"},
                    files={"file": ("boundary.gpkg", b"this is not a geopackage", "application/octet-stream")})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "boundary.gpkg" in detail and "/tmp" not in detail and "citygrid-" not in detail, detail
    assert tempfile.gettempdir() not in detail
    assert not Path(detail).is_absolute()
