"""SIGKILL the server during 200 concurrent uploads: no acknowledged report is lost, no orphan file
remains after the restart (the start-up recovery promotes or deletes staged files)."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import text

from tests.conftest import ROOT
from tests.field.conftest import jpeg
from tests.field.test_reports import spot

LAUNCH = ("import sys, uvicorn; from api.app import create_app; "
          "uvicorn.run(create_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]), log_level='error')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(db_url: str, var: Path, port: int) -> subprocess.Popen:
    # As deployed: a connection pool at least as large as the server thread pool (40), see the bench.
    env = {**os.environ, "CITYGRID_DATA_DIR": str(var), "CITYGRID_DB_POOL_SIZE": "40", "CITYGRID_DB_MAX_OVERFLOW": "10"}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, db_url, str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(f"server died: {proc.stderr.read().decode()[-2000:]}")
    proc.kill()
    raise RuntimeError("server did not start")


def test_sigkill_during_uploads(db_url, haimen, engine, make_inspector, tmp_path):
    user, h = make_inspector()
    var = tmp_path / "var"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(db_url, var, port)
    n = 200
    lon, lat = spot()
    payloads = [(f"kill-{uuid.uuid4().hex}", jpeg(5000 + i, size=(160, 120))) for i in range(n)]
    acked: dict[str, int] = {}
    lock = threading.Lock()
    killed = threading.Event()
    refused: list[str] = []  # what the uploads that were not acknowledged got (for the failure message)

    def upload(i):
        key, data = payloads[i]
        try:
            with httpx.Client(timeout=30) as c:
                r = c.post(f"{base}/api/v1/reports", headers={**h, "Idempotency-Key": key},
                           data={"category_code": "E10201", "lon": lon + i * 1e-5, "lat": lat, "accuracy": 5},
                           files=[("photos", ("p.jpg", data, "image/jpeg"))])
        except httpx.HTTPError as e:
            with lock:
                refused.append(type(e).__name__)
            return
        if r.status_code not in (200, 201):
            with lock:
                refused.append(f"{r.status_code} {r.text[:120]}")
        if r.status_code in (200, 201):
            with lock:
                acked[key] = r.json()["id"]
                if len(acked) >= 40 and not killed.is_set():
                    killed.set()
                    os.kill(proc.pid, signal.SIGKILL)  # mid-flight: others are being written

    try:
        with ThreadPoolExecutor(50) as ex:
            list(ex.map(upload, range(n)))
        if not killed.is_set():
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert 40 <= len(acked) < n, (len(acked), collections.Counter(refused).most_common(5))

        proc = _start(db_url, var, port)  # recovery runs at start
        store = var / "photos"
        assert not list((store / "tmp").glob("*")), "staged files survived the restart"
        with engine.connect() as c:
            rows = c.execute(text("""
                SELECT r.idempotency_key, r.id, p.sha256, p.public_sha256, p.thumb_sha256 FROM field_report r
                JOIN field_photo p ON p.report_id = r.id WHERE r.user_id = :u"""), {"u": user.id}).all()
        committed = {r[0]: r[1] for r in rows}
        # Every acknowledged report is there, as acknowledged.
        assert all(committed.get(k) == rid for k, rid in acked.items())
        # Every committed report (acknowledged or not) has all its files; no file lacks a row.
        expected = set()
        for _, _, sha, psha, tsha in rows:
            expected |= {("original", sha), ("public", psha), ("thumb", tsha)}
        on_disk = {(p.parent.parent.name, p.name) for p in store.glob("*/*/*") if p.is_file()}
        assert on_disk == expected
        # The outbox resends everything with the same keys: exactly one report per key in the end.
        def resend(i):
            key, data = payloads[i]
            with httpx.Client(timeout=60) as c:
                r = c.post(f"{base}/api/v1/reports", headers={**h, "Idempotency-Key": key},
                           data={"category_code": "E10201", "lon": lon + i * 1e-5, "lat": lat, "accuracy": 5},
                           files=[("photos", ("p.jpg", data, "image/jpeg"))])
            return key, r.status_code, r.json()

        with ThreadPoolExecutor(8) as ex:
            for key, status, body in ex.map(resend, range(n)):
                assert status == (200 if key in committed else 201), body
                if key in acked:
                    assert body["id"] == acked[key]
        with engine.connect() as c:
            per_key = c.execute(text("SELECT count(*), count(DISTINCT idempotency_key) FROM field_report "
                                     "WHERE user_id = :u"), {"u": user.id}).one()
        assert per_key == (n, n)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
