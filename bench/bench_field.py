"""Field intake benchmark (issue 4). `make bench` or `.venv/bin/python bench/bench_field.py`.

Measured in the same run, against uvicorn (one worker each) on local ports, on the demo database:
  * anchor: a bare FastAPI + asyncpg endpoint inserting one point row (table bench_field_anchor)
  * full JSON reports (POST /api/v1/reports/json: auth, validation, snapping, asset/duplicate check,
    idempotency claim, case file + 'received' event): requests/s and p99 with 50 concurrent clients
    (wrk, a Lua script giving each request its own Idempotency-Key and place)      target ≥ 40 % of the
    anchor's rate, p99 < 100 ms
  * photo reports (multipart, the 2.2 MB HMD_Nokia phone photo: sniff, decode, EXIF, public copy,
    thumbnail, files staged and promoted) per second with 4 concurrent clients
  * a replay of 1,000 duplicate idempotent submissions (one key): requests/s, and exactly one report.
The reports it files belong to a bench user 'bench_field_inspector'; its photos go to a temporary
data directory.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Table, demo_engine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

OUR_APP = ("import sys, uvicorn; from api.app import create_app; "
           "uvicorn.run(create_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]), log_level='error', "
           "access_log=False)")

ANCHOR_APP = textwrap.dedent("""
    import sys, asyncpg, uvicorn
    from contextlib import asynccontextmanager
    from fastapi import FastAPI
    from pydantic import BaseModel

    DSN = sys.argv[1]

    @asynccontextmanager
    async def lifespan(app):
        app.state.pool = await asyncpg.create_pool(DSN, min_size=16, max_size=16,
                                                   server_settings={"application_name": "bench_field_anchor"})
        yield
        await app.state.pool.close()

    app = FastAPI(lifespan=lifespan)

    class P(BaseModel):
        lon: float
        lat: float

    @app.post("/point")
    async def point(p: P):
        async with app.state.pool.acquire() as c:
            i = await c.fetchval("INSERT INTO bench_field_anchor (geom) VALUES "
                                 "(ST_SetSRID(ST_MakePoint($1, $2), 4326)) RETURNING id", p.lon, p.lat)
        return {"id": i}

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="error", access_log=False)
""")

REPORT_LUA = textwrap.dedent("""
    local counter = 0
    local tid = 0
    local threads = {}
    function setup(thread) tid = tid + 1; thread:set("id", tid) end
    function init(args) math.randomseed(os.time() * 1000 + id); run = args[1] or "r" end
    request = function()
      counter = counter + 1
      local lon = 121.12 + math.random() * 0.10
      local lat = 31.86 + math.random() * 0.06
      local body = string.format('{"category_code": "E10301", "lon": %.7f, "lat": %.7f, "accuracy": 8}', lon, lat)
      local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer TOKEN",
                       ["Idempotency-Key"] = string.format("%s-%d-%d", run, id, counter)}
      return wrk.format("POST", PATH, headers, body)
    end
    local non2xx = 0
    response = function(status, headers, body) if status ~= 201 then non2xx = non2xx + 1 end end
""")

ANCHOR_LUA = textwrap.dedent("""
    request = function()
      local body = string.format('{"lon": %.7f, "lat": %.7f}', 121.12 + math.random() * 0.1, 31.86 + math.random() * 0.06)
      return wrk.format("POST", "/point", {["Content-Type"] = "application/json"}, body)
    end
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], port: int, env: dict, ready_path: str) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-3000:])
        try:
            httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def wrk(url: str, script: str, *, seconds: int, conns: int, threads: int = 2, extra: list[str] = ()) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "30s", "--latency", "-s", path, url,
                              *(["--", *extra] if extra else [])], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(label):
        m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "requests": requests, "p50": ms("50"), "p99": ms("99"), "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": errors.group(1) if errors else "", "raw": out}


def cpu_ms(pids) -> float:
    """CPU time (user + system) used so far by the processes ``pids``, in milliseconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total * 1000.0 / tick


def backends(engine, app_name: str, since) -> list[int]:
    """The PostgreSQL backends a server opened (by application name, started after ``since``)."""
    from sqlalchemy import text

    with engine.connect() as c:
        return list(c.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = :a "
                                   "AND backend_start >= :t AND pid <> pg_backend_pid()"),
                              {"a": app_name, "t": since}).scalars())


def measured(fn, server_pid: int, db_pids: list[int]):
    """fn()'s result with the CPU its server and its database backends spent per request."""
    a, b = cpu_ms([server_pid]), cpu_ms(db_pids)
    out = fn()
    n = max(1, out["requests"])
    out["server_cpu"] = (cpu_ms([server_pid]) - a) / n
    out["db_cpu"] = (cpu_ms(db_pids) - b) / n
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--photo-seconds", type=int, default=15)
    args = ap.parse_args()

    import httpx
    from sqlalchemy import text

    from citygrid.dbcluster import database_url
    from layers.core import users as lusers
    from layers.field.reports import config

    engine, city = demo_engine()
    url = database_url(log=lambda *_: None)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_field_anchor"))
        conn.execute(text("CREATE TABLE bench_field_anchor (id bigserial PRIMARY KEY, geom geometry(Point, 4326), "
                          "at timestamptz NOT NULL DEFAULT now())"))
        conn.execute(text("CREATE INDEX ON bench_field_anchor USING gist (geom)"))
        name = "bench_field_inspector"
        conn.execute(text("DELETE FROM app_user WHERE name = :n AND NOT EXISTS "
                          "(SELECT 1 FROM field_report r WHERE r.user_id = app_user.id)"), {"n": name})
        if conn.execute(text("SELECT 1 FROM app_user WHERE name = :n"), {"n": name}).first():
            tok = lusers.issue_token(conn, name)[1]  # a fresh one: the last may have expired
        else:
            tok = lusers.add_user(conn, name, "inspector")[1]
    from sqlalchemy.engine import make_url

    u = make_url(url)
    dsn = f"postgresql://{u.username}@/{u.database}?host={u.query.get('host') or u.host}&port={u.query.get('port') or u.port or 5432}"

    var = tempfile.mkdtemp(prefix="bench_field_")
    env = {**os.environ, "CITYGRID_DATA_DIR": var}
    t = Table(f"field intake, {args.conns} concurrent clients, {args.seconds} s each (wrk), one uvicorn worker each")
    procs = []
    try:
        import datetime as dt

        with engine.connect() as c:
            started = c.execute(text("SELECT now()")).scalar_one() - dt.timedelta(seconds=1)
        ap_port, our_port = free_port(), free_port()
        procs.append(start(["-c", ANCHOR_APP, dsn, str(ap_port)], ap_port, env, "/docs"))
        # The connection pool must be at least as large as the server's thread pool (40): with fewer
        # connections, threads waiting for a connection can hold every worker thread while requests
        # that hold connections wait for a thread — a deadlock until the pool timeout.
        our_env = {**env, "CITYGRID_DB_POOL_SIZE": "40", "CITYGRID_DB_MAX_OVERFLOW": "10",
                   "CITYGRID_DB_ASYNC_POOL_MIN": os.environ.get("CITYGRID_DB_ASYNC_POOL_MAX", "10")}
        procs.append(start(["-c", OUR_APP, url, str(our_port)], our_port, our_env, "/api/v1/health"))
        base = f"http://127.0.0.1:{our_port}"
        hdr = {"Authorization": f"Bearer {tok}"}
        # Warm both (connection pools, the grid index).
        for _ in range(20):
            httpx.post(f"http://127.0.0.1:{ap_port}/point", json={"lon": 121.17, "lat": 31.89})
            r = httpx.post(f"{base}/api/v1/reports/json", headers={**hdr, "Idempotency-Key": uuid.uuid4().hex},
                           json={"category_code": "E10301", "lon": 121.17, "lat": 31.89, "accuracy": 8})
            assert r.status_code in (200, 201), r.text

        # One client, one report at a time: the latency of the path itself, without contention.
        import random

        seq = []
        with httpx.Client(timeout=30) as c:
            for _ in range(200):
                t0 = time.perf_counter()
                r = c.post(f"{base}/api/v1/reports/json", headers={**hdr, "Idempotency-Key": uuid.uuid4().hex},
                           json={"category_code": "E10301", "lon": 121.12 + random.random() * 0.1,
                                 "lat": 31.86 + random.random() * 0.06, "accuracy": 8})
                seq.append((time.perf_counter() - t0) * 1000)
        seq.sort()
        seq_row = ("JSON reports, 1 client in sequence", f"p50 {seq[100]:.1f} ms, p99 {seq[197]:.1f} ms "
                   f"({1000 / seq[100]:.0f} req/s)")

        anchor = measured(lambda: wrk(f"http://127.0.0.1:{ap_port}", ANCHOR_LUA, seconds=args.seconds,
                                      conns=args.conns),
                          procs[0].pid, backends(engine, "bench_field_anchor", started))
        run = uuid.uuid4().hex[:8]
        lua = REPORT_LUA.replace("TOKEN", tok).replace("PATH", '"/api/v1/reports/json"')
        ours = measured(lambda: wrk(base, lua, seconds=args.seconds, conns=args.conns, extra=[run]),
                        procs[1].pid, backends(engine, "citygrid", started))
        with engine.connect() as c:
            made = c.execute(text("SELECT count(*) FROM field_report WHERE idempotency_key LIKE :k"),
                             {"k": run + "-%"}).scalar_one()
        ratio = ours["rps"] / anchor["rps"]
        t.add("anchor: bare FastAPI + asyncpg insert", f"{anchor['rps']:.0f} req/s, p99 {anchor['p99']:.1f} ms")
        t.add("JSON reports (full path)", f"{ours['rps']:.0f} req/s, p99 {ours['p99']:.1f} ms, p50 {ours['p50']:.1f} ms",
              f"{anchor['rps']:.0f} req/s", f"≥ 40 %: {ratio * 100:.0f} % {'PASS' if ratio >= 0.4 else 'MISS'}; "
              f"p99 < 100 ms: {'PASS' if ours['p99'] < 100 else 'MISS'}")
        t.add("  CPU per request: server / PostgreSQL", f"{ours['server_cpu']:.2f} / {ours['db_cpu']:.2f} ms",
              f"{anchor['server_cpu']:.2f} / {anchor['db_cpu']:.2f} ms")
        t.add(*seq_row)
        t.add("  reports stored / non-2xx / socket errors", f"{made} / {ours['non2xx']} / {ours['errors'] or 'none'}")

        # Photo reports with the 2.2 MB phone photo, 4 concurrent clients.
        from citygrid import settings

        time.sleep(5)  # let the server finish what wrk stopped waiting for
        data = (settings.paths().shared_data / "photos" / "HMD_Nokia_8.3_5G.jpg").read_bytes()
        done, lat_ms = [], []
        stop = time.monotonic() + args.photo_seconds

        def photo_client():
            with httpx.Client(timeout=120) as c:
                while time.monotonic() < stop:
                    t0 = time.perf_counter()
                    try:
                        r = c.post(f"{base}/api/v1/reports", headers={**hdr, "Idempotency-Key": uuid.uuid4().hex},
                                   data={"category_code": "E10301", "lon": "121.17", "lat": "31.89", "accuracy": "8"},
                                   files=[("photos", ("nokia.jpg", data, "image/jpeg"))])
                        done.append(r.status_code)
                    except httpx.HTTPError as e:
                        done.append(type(e).__name__)
                    lat_ms.append((time.perf_counter() - t0) * 1000)

        t0 = time.monotonic()
        ths = [threading.Thread(target=photo_client) for _ in range(4)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        el = time.monotonic() - t0
        ok = sum(1 for s in done if s == 201)
        lat_ms.sort()
        t.add("photo reports (2.2 MB JPEG, 4 clients)", f"{ok / el:.2f} reports/s ({ok} in {el:.0f} s), "
              f"p50 {lat_ms[len(lat_ms) // 2]:.0f} ms", "", f"{len(done) - ok} not 201")

        # Replay: 1,000 duplicate submissions of one report with one key, 50 threads.
        key = f"replay-{uuid.uuid4().hex}"
        body = {"category_code": "E10301", "lon": 121.171, "lat": 31.891, "accuracy": 8}
        first = httpx.post(f"{base}/api/v1/reports/json", headers={**hdr, "Idempotency-Key": key}, json=body,
                           timeout=120)
        assert first.status_code == 201, first.text
        statuses = []
        idx = iter(range(1000))
        lock = threading.Lock()

        def replayer():
            with httpx.Client(timeout=60) as c:
                while True:
                    with lock:
                        if next(idx, None) is None:
                            return
                    r = c.post(f"{base}/api/v1/reports/json", headers={**hdr, "Idempotency-Key": key}, json=body)
                    statuses.append((r.status_code, r.json().get("id")))

        t0 = time.monotonic()
        ths = [threading.Thread(target=replayer) for _ in range(50)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        el = time.monotonic() - t0
        with engine.connect() as c:
            n = c.execute(text("SELECT count(*) FROM field_report WHERE idempotency_key = :k"), {"k": key}).scalar_one()
        same = all(s == 200 and i == first.json()["id"] for s, i in statuses)
        t.add("replay: 1,000 duplicate submissions", f"{len(statuses) / el:.0f} req/s (Python client)", "",
              f"reports with the key: {n} {'PASS' if n == 1 and same and len(statuses) == 1000 else 'FAIL'}")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_field_anchor"))
        import shutil

        shutil.rmtree(var, ignore_errors=True)
    t.print()
    print(f"\nconfig: accuracy gate {config()['accuracy_gate_m']} m; the reports filed stay in the demo database "
          "(user bench_field_inspector).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
