"""Background export jobs are durable: kept in the database with their file under CITYGRID_DATA_DIR, so a
finished export is still downloadable after a restart (a new app on the same database), a job whose
process died is marked failed at start-up, and old jobs are removed with their files after the TTL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pyogrio
import pytest
import shapely
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.conftest import ROOT
from tests.publish.test_layers_export import BOX, _db_cells, _name


def _wait_done(client, job, headers, timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = client.get(job["status_url"], headers=headers).json()
        if st["status"] != "running":
            return st
        time.sleep(0.05)
    raise AssertionError(f"job not finished: {st}")


def _row(engine, job_id):
    with engine.connect() as c:
        return c.execute(text("SELECT status, rows, total, filename, error, bytes FROM export_job WHERE id = :i"),
                         {"i": job_id}).first()


def _new_app(db_url):
    """Another process's app on the same database, as after a restart (the lifespan's recovery runs)."""
    from api.app import create_app

    return TestClient(create_app(db_url))


def test_finished_job_survives_a_restart(client, engine, db_url, planner_h, tmp_path):
    from layers.publish import export as lexp

    r = client.post("/api/v1/layers/grid_cells/export-jobs", headers=planner_h,
                    params={"format": "gpkg", "crs": "EPSG:4490", "bbox": BOX})
    assert r.status_code == 202, r.text
    job = r.json()
    st = _wait_done(client, job, planner_h)
    assert st["status"] == "done" and st["rows"] == st["total"] == job["total"] > 50, st
    assert st["layers"] == ["grid_cells"] and st["format"] == "gpkg" and st["crs"] == "EPSG:4490"
    assert st["expires_at"] > st["finished_at"]
    # stored: the row says done, the file lies under the data dir (and nothing else is left there)
    row = _row(engine, job["id"])
    assert row[0] == "done" and row[1] == job["total"] and row[3] == st["filename"]
    where = lexp.jobs_dir() / job["id"]
    assert str(where).startswith(os.environ["CITYGRID_DATA_DIR"])
    assert [p.name for p in where.iterdir()] == [st["filename"]] and row[5] == (where / st["filename"]).stat().st_size
    assert not (lexp.jobs_dir() / f"{job['id']}.part").exists()
    with _new_app(db_url) as c2:  # "restart"
        st2 = c2.get(job["status_url"], headers=planner_h).json()
        assert st2["status"] == "done" and st2["rows"] == job["total"]
        f = c2.get(job["file_url"], headers=planner_h)
        assert f.status_code == 200 and _name(f) == st["filename"] and _name(f).endswith("_EPSG4490.gpkg")
        assert c2.get(job["file_url"]).status_code == 404  # still the owner's only
    p = tmp_path / _name(f)
    p.write_bytes(f.content)
    df = pyogrio.read_dataframe(p)
    truth = _db_cells(engine, 4490)
    assert set(df["code"]) == set(truth) and len(df) == len(truth)
    for code, geom, area in zip(df["code"], df.geometry, df["area_m2"], strict=True):
        assert shapely.equals_exact(geom, truth[code][0], tolerance=1e-9), code
        assert area == pytest.approx(truth[code][1])


def test_interrupted_job_is_failed_at_start_up_and_a_live_one_is_not(client, engine, db_url, planner_h):
    """Two jobs 'running' in the table: one whose worker is gone (no lock: its process died), one still
    being written by a live worker elsewhere (holds the job's advisory lock)."""
    from layers.publish import export as lexp

    with engine.begin() as c:
        planner = c.execute(text("SELECT id FROM app_user WHERE name = 'test_planner'")).scalar_one()
        for jid in ("test-dead-job", "test-live-job"):
            c.execute(text("""INSERT INTO export_job (id, owner_id, city_id, layers, format, crs, total, rows, media)
                              VALUES (:i, :o, 1, '{grid_cells}', 'gpkg', 'EPSG:4490', 1000, 400, 'x')"""),
                      {"i": jid, "o": planner})
    part = lexp.jobs_dir() / "test-dead-job.part"
    part.mkdir(parents=True, exist_ok=True)
    (part / "half.gpkg").write_bytes(b"half a file")
    worker = engine.connect()  # the live worker of the other job
    try:
        worker.execute(text("SELECT pg_advisory_lock(:c, hashtext('test-live-job'))"), {"c": lexp.LOCK_CLASS})
        worker.commit()
        with _new_app(db_url) as c2:
            assert _row(engine, "test-dead-job")[0] == "failed"  # at start-up, before any request
            assert not part.exists()
            st = c2.get("/api/v1/export-jobs/test-dead-job", headers=planner_h).json()
            assert st["status"] == "failed" and "interrupted" in st["error"] and st["rows"] == 400
            f = c2.get("/api/v1/export-jobs/test-dead-job/file", headers=planner_h)
            assert f.status_code == 409 and "interrupted" in f.json()["detail"]
            live = c2.get("/api/v1/export-jobs/test-live-job", headers=planner_h).json()
            assert live["status"] == "running" and live["percent"] == 40.0
            assert c2.get("/api/v1/export-jobs/test-live-job/file", headers=planner_h).status_code == 409
            worker.execute(text("SELECT pg_advisory_unlock_all()"))  # that worker dies now
            worker.commit()
            gone = c2.get("/api/v1/export-jobs/test-live-job", headers=planner_h).json()
            assert gone["status"] == "failed" and "interrupted" in gone["error"]  # noticed when read
    finally:
        worker.close()
        with engine.begin() as c:
            c.execute(text("DELETE FROM export_job WHERE id IN ('test-dead-job', 'test-live-job')"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_killed_mid_export_then_restarted(engine, db_url, planner_h, tmp_path):
    """A real restart: uvicorn is killed (SIGKILL) while it writes the whole grid; the next server marks the
    job failed at start-up and leaves no partial file; an export started then finishes and downloads."""
    from layers.publish import export as lexp

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CITYGRID_DB_URL": db_url}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--port", str(port),
           "--log-level", "warning"]

    def serve():
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
                return proc
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read()[-2000:]
                time.sleep(0.2)
        proc.kill()
        raise AssertionError("server did not start")

    base = f"http://127.0.0.1:{port}"
    proc = serve()
    try:
        r = httpx.post(f"{base}/api/v1/layers/grid_cells/export-jobs", params={"format": "geojson", "crs": "GCJ-02"},
                       headers=planner_h, timeout=60)
        assert r.status_code == 202, r.text
        job = r.json()
        for _ in range(600):
            st = httpx.get(base + job["status_url"], headers=planner_h).json()
            if st["rows"] > 0 or st["status"] != "running":
                break
            time.sleep(0.02)
        assert st["status"] == "running" and 0 < st["rows"] < st["total"], st
        assert (lexp.jobs_dir() / f"{job['id']}.part").is_dir()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the dead server's connections are closed by PostgreSQL soon after (its lock goes with them)
    proc = serve()
    try:
        deadline = time.monotonic() + 30
        while True:
            st = httpx.get(base + job["status_url"], headers=planner_h).json()
            if st["status"] != "running" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert st["status"] == "failed" and "interrupted" in st["error"], st
        assert _row(engine, job["id"])[0] == "failed"
        assert not (lexp.jobs_dir() / f"{job['id']}.part").exists() and not (lexp.jobs_dir() / job["id"]).exists()
        f = httpx.get(base + job["file_url"], headers=planner_h)
        assert f.status_code == 409 and "start the export again" in f.json()["detail"]
        r = httpx.post(f"{base}/api/v1/layers/grid_cells/export-jobs", headers=planner_h, timeout=60,
                       params={"format": "fgb", "crs": "EPSG:4326", "bbox": BOX})
        job2 = r.json()
        for _ in range(600):
            st2 = httpx.get(base + job2["status_url"], headers=planner_h).json()
            if st2["status"] != "running":
                break
            time.sleep(0.05)
        assert st2["status"] == "done", st2
        f = httpx.get(base + job2["file_url"], headers=planner_h)
        p = tmp_path / _name(f)
        p.write_bytes(f.content)
        assert set(pyogrio.read_dataframe(p, read_geometry=False)["code"]) == set(_db_cells(engine, 4326))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_old_jobs_are_removed_with_their_files_after_the_ttl(client, engine, planner_h, monkeypatch):
    from layers.publish import export as lexp

    r = client.post("/api/v1/layers/grid_cells/export-jobs", headers=planner_h,
                    params={"format": "csv", "crs": "EPSG:4326", "bbox": BOX})
    job = r.json()
    assert _wait_done(client, job, planner_h)["status"] == "done"
    where = lexp.jobs_dir() / job["id"]
    assert where.is_dir()
    with engine.begin() as c:  # finished 5 hours ago
        c.execute(text("UPDATE export_job SET finished_at = now() - interval '5 hours' WHERE id = :i"),
                  {"i": job["id"]})
    monkeypatch.setenv("CITYGRID_EXPORT_JOB_TTL_HOURS", "6")
    st = client.get(job["status_url"], headers=planner_h).json()
    assert st["status"] == "done" and client.get(job["file_url"], headers=planner_h).status_code == 200
    monkeypatch.setenv("CITYGRID_EXPORT_JOB_TTL_HOURS", "4")
    r = client.get(job["file_url"], headers=planner_h)
    assert r.status_code == 404 and "kept for 4 h" in r.json()["detail"]
    assert _row(engine, job["id"]) is None and not where.exists()
    # and at start-up (or when a job starts): every expired job goes
    with engine.begin() as c:
        c.execute(text("""INSERT INTO export_job (id, city_id, layers, format, crs, total, media, status, filename,
                                                  finished_at)
                          VALUES ('test-old-job', 1, '{grid_cells}', 'csv', 'EPSG:4326', 1, 'x', 'done', 'a.csv',
                                  now() - interval '30 days')"""))
    (lexp.jobs_dir() / "test-old-job").mkdir(parents=True)
    (lexp.jobs_dir() / "test-old-job" / "a.csv").write_text("x")
    assert lexp.recover_jobs(engine)["expired"] >= 1
    assert _row(engine, "test-old-job") is None and not (lexp.jobs_dir() / "test-old-job").exists()


def test_kml_is_wgs84_only(client, engine, planner_h, tmp_path):
    """OGC KML 2.2 is WGS-84 only: KML in another CRS is refused (422, saying so) and writes nothing."""
    with engine.connect() as c:
        before = c.execute(text("SELECT count(*) FROM export_job")).scalar_one()
    for crs in ("EPSG:4490", "EPSG:4549", "GCJ-02"):
        for r in (client.post("/api/v1/layers/grid_cells/export-jobs", params={"format": "kml", "crs": crs},
                              headers=planner_h),
                  client.get("/api/v1/layers/grid_cells/export", params={"format": "kml", "crs": crs, "bbox": BOX},
                             headers=planner_h),
                  client.get("/api/v1/themes/base/export", params={"format": "kml", "crs": crs, "bbox": BOX},
                             headers=planner_h)):
            assert r.status_code == 422, (crs, r.status_code, r.text[:200])
            assert "KML" in r.json()["detail"] and "EPSG:4326" in r.json()["detail"]
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM export_job")).scalar_one() == before
    # the default CRS (EPSG:4490) with format=kml is refused too; EPSG:4326 works and reads back
    assert client.get("/api/v1/layers/grid_cells/export", params={"format": "kml", "bbox": BOX},
                      headers=planner_h).status_code == 422
    r = client.get("/api/v1/layers/grid_cells/export", params={"format": "kml", "crs": "EPSG:4326", "bbox": BOX},
                   headers=planner_h)
    assert r.status_code == 200 and _name(r).endswith("_EPSG4326.kml")
    p = tmp_path / _name(r)
    p.write_bytes(r.content)
    df = pyogrio.read_dataframe(p)
    truth = _db_cells(engine, 4326)
    assert len(df) == len(truth)
    got = shapely.unary_union(df.geometry.values).bounds
    want = shapely.unary_union([g for g, _, _ in truth.values()]).bounds
    assert got == pytest.approx(want, abs=1e-6)


def test_several_layers_only_as_a_multi_layer_format(client, engine, haimen, planner_h):
    """One check (export.check_request) for the direct export and the background job: several layers in a
    single-layer format are refused with a message, before any job is recorded."""
    from layers.core.errors import InputError
    from layers.publish import catalog as lcat
    from layers.publish import export as lexp

    with engine.connect() as c:
        before = c.execute(text("SELECT count(*) FROM export_job")).scalar_one()
        pair = [(lcat.get_layer(c, haimen, "grid_cells"), "full")] * 2
    with pytest.raises(InputError, match="several layers go out together only as gpkg or a shp zip, not csv"):
        lexp.start_job(engine, haimen, pair, "csv", "EPSG:4326", None, owner=None)
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM export_job")).scalar_one() == before
    r = client.get("/api/v1/themes/base/export", params={"format": "csv", "crs": "EPSG:4326", "bbox": BOX},
                   headers=planner_h)
    assert r.status_code == 422 and "several layers go out together" in r.json()["detail"], r.text[:200]
