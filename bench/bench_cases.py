"""Case benchmarks (issue 5). `make bench` or `python bench/bench_cases.py`.

* CSV import of 100,000 hotline cases into Haimen, end to end (parse, map, locate, snap, deadlines,
  COPY of cases + events + contacts), beside the anchor measured in the same run: the same kind of
  rows opened one by one with ``layers.cases.workflow.open_case`` (per-row INSERTs). Target ≥ 10,000 cases/s.
  The import runs in a transaction that is rolled back: the demo database keeps nothing (the tables
  are vacuumed before and after, so that no run inserts into the dead rows of the one before).
* Workflow transitions per second with 20 concurrent clients (threads, one connection and one
  committed transaction per transition: accept → dispatch → start → feedback → verify_ok → close),
  beside one client alone. These cases are committed in a small bench city ``bench-cases`` (a box
  inside Haimen, 100 m grid) so that the demo city's own data stays clean; case events are
  append-only, so they stay there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Table, demo_engine  # noqa: E402

CATS = ["E10101", "E10102", "E10201", "E10301", "E20101", "E50101", "E50201", "010102", "010103", "011001", "H10101"]
CHANS = ["电话", "微信", "网站", "APP", "督查员"]
TYPES = ["投诉", "求助", "咨询", "建议", "举报"]


def make_csv(conn, city, n: int, path: Path, seed: int = 2026) -> None:
    import pandas as pd
    import shapely

    from gis import crs as gcrs
    from layers.core import grid as lgrid

    grid = lgrid.snapper(conn, city)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(grid.geoms), n)
    c = shapely.point_on_surface(grid.geoms[pick])
    lon, lat = gcrs.transform_xy(shapely.get_x(c), shapely.get_y(c), city.working_crs, "EPSG:4326")
    no_loc = rng.random(n) < 0.02  # 2 % without coordinates (address only)
    start = dt.datetime(2026, 3, 1)
    t = [start + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 30 * 86400, n)]
    tag = rng.integers(0, 1 << 30)
    df = pd.DataFrame({
        "工单编号": [f"B{tag}-{i}" for i in range(n)],
        "受理时间": [x.strftime("%Y-%m-%d %H:%M:%S") for x in t],
        "类别": rng.choice(CATS, n), "渠道": rng.choice(CHANS, n), "诉求类型": rng.choice(TYPES, n),
        "诉求内容": "市民反映问题 bench row", "地址": rng.choice(["海门街道", "三厂街道某路", "某某小区门口"], n),
        "经度": np.where(no_loc, "", np.char.mod("%.6f", lon)), "纬度": np.where(no_loc, "", np.char.mod("%.6f", lat)),
        "来电人": "某先生", "联系电话": [f"139{i:08d}" for i in range(n)]})
    df.to_csv(path, index=False, encoding="utf-8")


IMPORT_TABLES = ("case_file", "case_event", "case_contact", "case_rollup", "case_rollup_change", "case_key")


def vacuum(engine) -> None:
    """VACUUM the tables an import writes. The measured import is rolled back, which leaves its
    10^5 rows dead in the tables and indexes: without this, the next run inserts into that bloat
    while autovacuum cleans it on the same two cores, and measures the bench's own leftovers."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        from sqlalchemy import text

        conn.execute(text(f"VACUUM (ANALYZE) {', '.join(IMPORT_TABLES)}"))


def backend_cpu(conn) -> float:
    """CPU seconds (user + system) the connection's PostgreSQL backend has used so far (same machine):
    what the server spent, whatever else the shared cores were doing."""
    import os

    from sqlalchemy import text

    pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _import_once(engine, city, path, bulk, payloads=None):
    """One measured import of ``path`` (rolled back): (report, seconds, rows written); the report's
    ``server_cpu`` is the backend's CPU seconds for the import."""
    from sqlalchemy import text

    from layers.cases import hotline

    copy = hotline._Pipeline._copy
    if payloads is not None:
        def keep(self, table, columns, payload):
            payloads.append((table, columns, payload))
            return copy(self, table, columns, payload)
        hotline._Pipeline._copy = keep
    vacuum(engine)
    try:
        with engine.connect() as conn:
            tx = conn.begin()
            c0 = backend_cpu(conn)
            t0 = time.perf_counter()
            rep = hotline.import_cases(conn, city, path, progress=False, bulk=bulk)
            secs = time.perf_counter() - t0
            rep.pipeline["server_cpu"] = backend_cpu(conn) - c0
            written = conn.execute(text("SELECT count(*) FROM case_file WHERE city_id = :c AND source_ref LIKE :p"),
                                   {"c": city.id, "p": "B%"}).scalar_one()
            tx.rollback()
    finally:
        hotline._Pipeline._copy = copy
    return rep, secs, written


def bare_copy(engine, payloads) -> float:
    """The anchor: the same COPY payloads into tables like the import's with no index, key or trigger
    (unlogged), in one transaction rolled back — what the server's COPY alone costs."""
    with engine.connect() as conn:
        tx = conn.begin()
        raw = conn.connection.driver_connection
        for table in IMPORT_TABLES[:3]:
            raw.execute(f"CREATE UNLOGGED TABLE bare_{table} (LIKE {table} INCLUDING DEFAULTS)")
        c0 = backend_cpu(conn)
        t0 = time.perf_counter()
        for table, columns, payload in payloads:
            with raw.cursor() as cur, cur.copy(f"COPY bare_{table} ({', '.join(columns)}) FROM STDIN "
                                               "WITH (FORMAT csv)") as cp:
                cp.write(payload)
        secs = time.perf_counter() - t0
        cpu = backend_cpu(conn) - c0
        tx.rollback()
    return secs, cpu


def bench_import(engine, city, n: int, t: Table) -> None:
    from layers.cases import hotline
    from layers.cases import workflow as wf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cases.csv"
        with engine.connect() as conn:
            make_csv(conn, city, n, path)
            hotline.import_cases(conn, city, path, progress=False, dry_run=True)  # warm the grid index
            bulk_ok = hotline.bulk_mode(conn)
        with engine.begin() as conn:  # the month's partitions exist (steady state: made once per month)
            from layers.cases import partitions

            partitions.ensure_months(conn, dt.date(2026, 3, 1), dt.date(2026, 4, 30))
        payloads: list = []
        rep, secs, written = _import_once(engine, city, path, None, payloads)
        bare, bare_cpu = bare_copy(engine, payloads)
        # The same import with the per-row foreign-key checks (a session that is not a superuser).
        rep_row, secs_row, _ = _import_once(engine, city, path, False)
        vacuum(engine)
        assert rep.as_dict()["accounted"] and rep.imported >= 0.999 * n, rep.as_dict()
        assert written == rep.imported and not rep.sentinel_points
        rate = n / secs
        # Anchor: open_case row by row (per-row INSERTs, same rules) on a sample.
        import pandas as pd
        from shapely.geometry import Point

        from gis import crs as gcrs

        sample = pd.read_csv(path, dtype=str, keep_default_na=False).head(2000)
        sample = sample[sample["经度"] != ""]
        x, y = gcrs.transform_xy(sample["经度"].astype(float).to_numpy(), sample["纬度"].astype(float).to_numpy(),
                                 "EPSG:4326", city.working_crs)
        with engine.connect() as conn:
            tx = conn.begin()
            t0 = time.perf_counter()
            for i, row in enumerate(sample.itertuples(index=False)):
                wf.open_case(conn, city, source="hotline", channel=row[3], category_code=row[2],
                             received_at=dt.datetime.fromisoformat(row[1]), location=Point(x[i], y[i]),
                             description=row[5], address=row[6], request_type=row[4], source_ref=f"A{row[0]}",
                             contact={"name": row[9], "phone": row[10]})
            per_row = len(sample) / (time.perf_counter() - t0)
            tx.rollback()
    rows_copied = sum(rep.pipeline["rows"].values())
    t.add(f"CSV import, {n:,} rows end to end ({'bulk: keys checked per import' if rep.pipeline['bulk'] else 'per-row keys'})",
          f"{rate:,.0f} rows/s ({secs:.1f} s; {rep.located:,} located, "
          f"{rep.needs_location:,} queued, {rep.rejected} rejected)",
          f"bare COPY of the same {rows_copied:,} rows (3 tables, no index/key/trigger): {bare:.1f} s = "
          f"{n / bare:,.0f} cases/s", f"≥ 10,000/s: {'PASS' if rate >= 10_000 else 'MISS'}")
    t.add("  the same import, foreign keys checked per row (non-superuser path)",
          f"{n / secs_row:,.0f} rows/s ({secs_row:.1f} s)", f"open_case per row: {per_row:,.0f} cases/s "
          f"({rate / per_row:.0f}× slower than the import)", "" if bulk_ok else "(bulk mode unavailable here)")
    pre = rep.seconds - rep.stages.get("write", 0)
    t.add("  of which: parse+validate+locate+snap+number (Python, before the write)", f"{pre:.1f} s = {n / pre:,.0f} rows/s",
          "stages " + ", ".join(f"{k} {v:.1f}s" for k, v in rep.stages.items()), "")
    pl = rep.pipeline
    db = sum(pl["copy_seconds"].values())
    t.add(f"  of which: the write, {pl['rounds']} pipelined rounds (build ‖ COPY)",
          f"{rep.stages['write']:.1f} s wall: build {pl['build_seconds']:.1f} s (Python) beside "
          f"COPY {db:.1f} s = {n / db:,.0f} rows/s (PostgreSQL), key check {pl['fk_check_seconds']:.1f} s",
          "COPY " + ", ".join(f"{k} {v:.1f}s" for k, v in pl["copy_seconds"].items()), "")
    plr = rep_row.pipeline
    t.add("  per-row keys: COPY", ", ".join(f"{k} {v:.1f}s" for k, v in plr["copy_seconds"].items()), "", "")
    t.add("  server CPU (PostgreSQL backend), the noise-free figure",
          f"import {pl['server_cpu']:.1f} s ({'bulk' if pl['bulk'] else 'per-row'} keys) = {n / pl['server_cpu']:,.0f} cases/s "
          f"of one core; per-row keys {plr['server_cpu']:.1f} s", f"bare COPY {bare_cpu:.1f} s", "")


def bench_city(engine):
    from shapely.geometry import box

    from gis import crs as gcrs
    from layers.cases import workflow as wf
    from layers.core import city as lcity
    from layers.core.errors import NotFound
    from layers.core.users import add_user

    with engine.begin() as conn:
        try:
            city = lcity.get_city(conn, "bench-cases")
        except NotFound:
            city = lcity.create_city(conn, slug="bench-cases", name="并发测试 bench", adcode="999099",
                                     boundary=box(121.15, 31.87, 121.25, 31.95), src_crs="EPSG:4326")
            lcity.generate_grid(conn, city, size=100)
        wf.ensure_departments(conn, city)
        users = {}
        from sqlalchemy import text

        for role, dep in (("operator", None), ("department", "urban_mgmt"), ("inspector", None)):
            name = f"bench_cases_{role}"
            row = conn.execute(text("SELECT id, name, role, department, area_code FROM app_user WHERE name = :n"),
                               {"n": name}).first()
            if row is None:
                u, _ = add_user(conn, name, role, department=dep)
            else:
                from layers.core.users import User

                u = User(*row)
            users[role] = u
    del gcrs
    return city, users


def run_clients(engine, city, users, clients: int, cases_per_client: int) -> tuple[int, float]:
    from shapely.geometry import Point

    from layers.cases import workflow as wf

    rng = np.random.default_rng(clients)
    ids: list[list[int]] = []
    with engine.begin() as conn:
        g = __import__("layers.core.grid", fromlist=["snapper"]).snapper(conn, city)
        cells = rng.integers(0, len(g.geoms), clients * cases_per_client)
        import shapely

        cen = shapely.point_on_surface(g.geoms[cells])
        all_ids = []
        for k in range(clients * cases_per_client):
            o = wf.open_case(conn, city, source="hotline", channel="电话", category_code="E50101",
                             received_at=wf.lcal.now() - dt.timedelta(days=400 + k),  # no 并单 between them
                             location=Point(shapely.get_x(cen[k]), shapely.get_y(cen[k])))
            all_ids.append(o.id)
    ids = [all_ids[i::clients] for i in range(clients)]
    steps = [("accept", users["operator"], {}), ("dispatch", users["operator"], {"department": "urban_mgmt",
                                                                                  "override_reason": "bench"}),
             ("start", users["department"], {}), ("feedback", users["department"], {"note": "done"}),
             ("verify_ok", users["inspector"], {"photos": ["check.jpg"]}), ("close", users["operator"], {})]
    done = [0] * clients
    errors: list[str] = []

    def client(i):
        try:
            for cid in ids[i]:
                for action, user, kw in steps:
                    with engine.begin() as conn:
                        wf.transition(conn, cid, action, user, **kw)
                    done[i] += 1
        except Exception as e:  # noqa: BLE001 - report, do not hang
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    secs = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors[0])
    return sum(done), secs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--cases-per-client", type=int, default=20)
    ap.add_argument("--import-only", action="store_true", help="only the CSV import (and its anchor)")
    args = ap.parse_args()
    from citygrid.dbcluster import database_url
    from layers.core.db import make_engine

    engine, city = demo_engine()
    with engine.begin() as conn:
        from layers.cases import workflow as wf

        wf.ensure_departments(conn, city)
    t = Table("cases: import and workflow")
    bench_import(engine, city, args.cases, t)
    if args.import_only:
        t.print()
        engine.dispose()
        return 0

    wide = make_engine(database_url(log=lambda *_: None), pool_size=args.clients + 2)
    bcity, users = bench_city(wide)
    n1, s1 = run_clients(wide, bcity, users, 1, args.cases_per_client)
    n20, s20 = run_clients(wide, bcity, users, args.clients, args.cases_per_client)
    t.add(f"workflow transitions, {args.clients} concurrent clients",
          f"{n20 / s20:,.0f} transitions/s ({n20:,} in {s20:.1f} s)",
          f"1 client: {n1 / s1:,.0f}/s ({n20 / s20 / (n1 / s1):.1f}×)", "")
    t.print()
    wide.dispose()
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
