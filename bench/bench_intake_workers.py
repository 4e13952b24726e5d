"""Intake throughput with 1 and 2 worker processes (issue 14): JSON reports per second through
``POST /api/v1/reports/json`` against ``citygrid serve --workers N`` (a real subprocess each), with C
concurrent clients for S seconds (an asyncio client in a process of its own), beside the anchor from
the same run: a bare FastAPI + asyncpg endpoint inserting one point row (bench/bench_field.py's), one
process. Each report is a case (snapped, deadlines, 'received' event, rollup): they belong to the bench
user 'bench_field_inspector' of the demo database.

    python bench/bench_intake_workers.py [--seconds 10] [--conns 32]

The machine's cores bound what a second worker can add: the server processes, PostgreSQL and the client
share them (this development machine: 2 cores, shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_field import ANCHOR_APP, free_port, start  # noqa: E402
from bench.common import Table, demo_engine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

LOAD = textwrap.dedent("""
    import asyncio, json, random, sys, time, uuid, httpx
    url, token, seconds, conns, kind = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    ok = bad = 0
    lat = []
    async def client(c, stop):
        global ok, bad
        while time.monotonic() < stop:
            lon, la = 121.12 + random.random() * 0.10, 31.86 + random.random() * 0.06
            if kind == "report":
                body = {"category_code": "E10301", "lon": lon, "lat": la, "accuracy": 8}
                h = {"Authorization": "Bearer " + token, "Idempotency-Key": uuid.uuid4().hex}
            else:
                body, h = {"lon": lon, "lat": la}, {}
            t0 = time.monotonic()
            r = await c.post(url, json=body, headers=h)
            lat.append(time.monotonic() - t0)
            if r.status_code in (200, 201):
                ok += 1
            else:
                bad += 1
    async def main():
        limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
        async with httpx.AsyncClient(timeout=60, limits=limits) as c:
            t0 = time.monotonic()
            stop = t0 + seconds
            await asyncio.gather(*(client(c, stop) for _ in range(conns)))
            el = time.monotonic() - t0
        lat.sort()
        print(json.dumps({"ok": ok, "bad": bad, "seconds": el, "rps": ok / el,
                          "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99) - 1]}))
    asyncio.run(main())
""")


def load(url: str, token: str, seconds: float, conns: int, kind: str) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD, url, token, str(seconds), str(conns), kind],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--conns", type=int, default=32)
    args = ap.parse_args()
    import httpx
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from citygrid.dbcluster import database_url
    from layers.core import users as lusers

    engine, city = demo_engine()
    url = database_url(log=lambda *_: None)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_field_anchor (id bigserial PRIMARY KEY, "
                          "geom geometry(Point, 4326), at timestamptz NOT NULL DEFAULT now())"))
        name = "bench_field_inspector"
        if conn.execute(text("SELECT 1 FROM app_user WHERE name = :n"), {"n": name}).first():
            tok = lusers.issue_token(conn, name)[1]
        else:
            tok = lusers.add_user(conn, name, "inspector")[1]
    u = make_url(url)
    dsn = (f"postgresql://{u.username}@/{u.database}?host={u.query.get('host') or u.host}"
           f"&port={u.query.get('port') or u.port or 5432}")
    env = {**os.environ, "CITYGRID_DATA_DIR": tempfile.mkdtemp(prefix="bench_intake_"), "DATABASE_URL": url,
           "PYTHONPATH": str(ROOT)}
    t = Table(f"intake throughput: JSON reports, {args.conns} concurrent clients, {args.seconds:.0f} s each")
    procs = []
    try:
        port = free_port()
        procs.append(start(["-c", ANCHOR_APP, dsn, str(port)], port, env, "/docs"))
        anchor = load(f"http://127.0.0.1:{port}/point", "", args.seconds, args.conns, "point")
        procs.pop().terminate()
        figures = {}
        for workers in (1, 2):
            port = free_port()
            proc = start(["-m", "citygrid.cli", "serve", "--workers", str(workers), "--port", str(port)], port, env,
                         "/api/v1/health")
            procs.append(proc)
            base = f"http://127.0.0.1:{port}"
            for _ in range(20 * workers):  # warm every worker (pools, the grid index)
                httpx.post(f"{base}/api/v1/reports/json", json={"category_code": "E10301", "lon": 121.17, "lat": 31.89,
                                                                "accuracy": 8},
                           headers={"Authorization": f"Bearer {tok}", "Idempotency-Key": os.urandom(8).hex()}, timeout=60)
            figures[workers] = load(f"{base}/api/v1/reports/json", tok, args.seconds, args.conns, "report")
            proc.terminate()
            proc.wait(30)
            procs.pop()
            time.sleep(1)
        for workers, f in figures.items():
            t.add(f"JSON reports, {workers} worker{'s' if workers > 1 else ''}",
                  f"{f['rps']:,.0f} reports/s (p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms; {f['bad']} refused)",
                  f"bare asyncpg insert, 1 process: {anchor['rps']:,.0f}/s ({f['rps'] / anchor['rps']:.0%})",
                  f"{figures[2]['rps'] / figures[1]['rps']:.2f}× with 2" if workers == 2 else "")
        t.print()
    finally:
        for p in procs:
            p.terminate()
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
