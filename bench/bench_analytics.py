"""Analytics benchmark (issue 6). `make bench` or `.venv/bin/python bench/bench_analytics.py`.

* Gi* z-scores over the ~115k-cell Haimen grid, weights included: this project (queen weights from
  col/row + sparse Gi*) beside esda.G_Local(star=True, transform='B') with libpysal Queen weights
  from the cell polygons, same run, same counts.             target ≥ 10× faster, identical z (1e-9)
* heat for a 30-day window holding 1,000,000 cases (rollup → quartic KDE on the grid), in a bench
  city ``bench-analytics`` (a copy of Haimen's boundary and grid) of the demo database.  target < 200 ms
* the /supervisor dashboard's first load in Chromium on the Haimen demo (synthetic year).  target < 2 s
* hot spots (issue 12): the whole analysis (scale selection, weights, exact test, FDR) for the last 30
  days of the demo on the 114,778-cell grid, beside esda.G_Local(permutations=999) with libpysal Queen
  weights on the same cells                                      target ≥ 10×
  /api/v1/supervisor/hotspots for 30 days, warm                    target < 1 s
  complete spatial randomness: 3,500 uniformly random cases on the Haimen grid (5 seeds): significant
  hot cells, ours beside the normal-approximation Gi* (queen, BH-FDR)   target 0 (≤ FDR level)
* the daily scan's false alerts at the default threshold (RI ≥ 365 days, 999 replicates) on shuffled
  days                                                           target ≤ 1 a year
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Table, bench_city, best_of, demo_engine  # noqa: E402

BENCH_SLUG = "bench-analytics"


def bench_gi(engine, city, t: Table, repeat: int) -> None:
    import esda
    import geopandas as gpd
    import libpysal

    from gis import hotspots as ghot
    from layers.analytics import cache as lcache

    with engine.connect() as conn:
        arr = lcache.grid_arrays(conn, city)
    g = arr.grid
    rng = np.random.default_rng(6)
    # clustered counts: a smooth intensity surface, Poisson draws
    lam = 0.2 + 3 * np.exp(-(((arr.cx - arr.cx.mean()) / 4000) ** 2 + ((arr.cy - arr.cy.mean()) / 3000) ** 2))
    y = rng.poisson(lam).astype(float)

    def ours():
        W = lcache._queen_of_cells(g)  # col/row arithmetic + exact checks of the boundary-clipped cells
        return ghot.getis_ord_gi_star(y, W)

    t_ours, z = best_of(ours, repeat)

    def anchor():
        w = libpysal.weights.Queen.from_dataframe(gpd.GeoDataFrame(geometry=g.geoms), use_index=False,
                                                  silence_warnings=True)
        return esda.G_Local(y, w, transform="B", star=True, permutations=0).Zs

    t_esda, zs = best_of(anchor, 1)
    diff = float(np.max(np.abs(z - zs)))
    ratio = t_esda / t_ours
    t.add(f"Gi* {len(y):,} cells, weights included", f"{t_ours * 1e3:.0f} ms",
          f"esda+libpysal {t_esda * 1e3:.0f} ms ({ratio:.0f}×)",
          f"≥ 10× & |Δz| ≤ 1e-9: {'PASS' if ratio >= 10 and diff <= 1e-9 else 'MISS'} (|Δz| = {diff:.1e})")


def _bench_city(engine, haimen):
    return bench_city(engine, haimen, BENCH_SLUG, "基准测试 (海门副本)")


def bench_heat(engine, haimen, t: Table, repeat: int, n_cases: int) -> None:
    from sqlalchemy import text

    from layers.analytics import cache as lcache
    from layers.analytics import heatmap as la
    from layers.analytics import rollups
    from layers.core import grid as lgrid
    from layers.demo.synthetic import CaseBatch, bulk_insert_cases

    city = _bench_city(engine, haimen)
    start, end = dt.date(2026, 10, 2), dt.date(2026, 10, 31)
    with engine.begin() as conn:
        have = conn.execute(text("SELECT count(*) FROM case_file WHERE city_id = :c"), {"c": city.id}).scalar()
        if have < n_cases:
            g = lgrid.snapper(conn, city)
            import shapely

            cen = shapely.centroid(g.geoms)
            cx, cy = shapely.get_x(cen), shapely.get_y(cen)
            rng = np.random.default_rng(1)
            centres = rng.choice(len(cx), 40, replace=False)
            tz = dt.timezone(dt.timedelta(hours=8))
            t0 = dt.datetime(2026, 10, 2, tzinfo=tz)
            chunk = 200_000
            for s in range(have, n_cases, chunk):
                m = min(chunk, n_cases - s)
                hot = rng.random(m) < 0.7
                ci = rng.choice(centres, m)
                x = np.where(hot, cx[ci] + rng.normal(0, 700, m), rng.uniform(cx.min(), cx.max(), m))
                y = np.where(hot, cy[ci] + rng.normal(0, 700, m), rng.uniform(cy.min(), cy.max(), m))
                secs = rng.uniform(0, 30 * 86400, m)
                cats = rng.choice([f"0{k}01" for k in range(1, 7)], m)
                chans = rng.choice(["电话", "微信", "APP"], m)
                bulk_insert_cases(conn, city, CaseBatch(
                    case_no=[f"BENCH{s + i:08d}" for i in range(m)],
                    received_at=[t0 + dt.timedelta(seconds=float(v)) for v in secs],
                    category_code=cats.tolist(), channel=chans.tolist(), source=["other"] * m, x=x, y=y))
                print(f"  bench cases: {s + m:,}")
    with engine.connect() as conn:
        n = conn.execute(text("SELECT sum(n) FROM case_rollup WHERE city_id = :c AND day BETWEEN :a AND :b"),
                         {"c": city.id, "a": start, "b": end}).scalar()
        lcache.grid_arrays(conn, city)  # the grid in memory (once per process)
        t_cold = time.perf_counter()
        la.heat(conn, city, start, end)  # first call: loads the day cache from the rollup
        t_cold = time.perf_counter() - t_cold
        t_heat, h = best_of(lambda: la.heat(conn, city, start, end), repeat)

        def uncached():  # the anchor: the same from one rollup query per request
            from gis import heat as gheat

            arr = lcache.grid_arrays(conn, city)
            ids, cnt = rollups.cell_counts(conn, city, start, end)
            pos = arr.positions(ids)
            g = arr.grid
            return gheat.quartic_kde_regular(g.cols[pos], g.rows[pos], cnt, 100.0, h["bandwidth"],
                                             out_cols=g.cols, out_rows=g.rows)

        t_sql, dens = best_of(uncached, 1)
        same = np.allclose(dens, h["density"], rtol=1e-9, atol=1e-9)
    # a new batch of 1,000 cases arrives (committed): the next heat reloads only the changed days
    with engine.begin() as conn:
        g = lgrid.snapper(conn, city)
        import shapely

        cen = shapely.centroid(g.geoms[:1000])
        tz = dt.timezone(dt.timedelta(hours=8))
        k = conn.execute(text("SELECT count(*) FROM case_file WHERE city_id = :c"), {"c": city.id}).scalar()
        bulk_insert_cases(conn, city, CaseBatch(
            case_no=[f"BENCHX{k + i:08d}" for i in range(1000)],
            received_at=[dt.datetime(2026, 10, 31, 12, tzinfo=tz)] * 1000, category_code=["0101"] * 1000,
            channel=["电话"] * 1000, source=["other"] * 1000, x=shapely.get_x(cen), y=shapely.get_y(cen)))
    with engine.connect() as conn:
        t_inc = time.perf_counter()
        h2 = la.heat(conn, city, start, end)
        t_inc = time.perf_counter() - t_inc
        assert h2["total"] == h["total"] + 1000, (h2["total"], h["total"])
    t.add(f"heat, 30 days, {int(n):,} cases (rollup→KDE)", f"{t_heat * 1e3:.0f} ms",
          f"per-request rollup query {t_sql * 1e3:.0f} ms (same density: {same}); first load "
          f"{t_cold * 1e3:.0f} ms; after +1,000 cases {t_inc * 1e3:.0f} ms",
          f"< 200 ms: {'PASS' if t_heat < 0.2 else 'MISS'}")


def bench_dashboard(engine, haimen, t: Table) -> None:
    import uuid

    import uvicorn
    from playwright.sync_api import sync_playwright
    from sqlalchemy import text

    from api.app import create_app
    from citygrid.dbcluster import database_url
    from layers.core.users import add_user
    from layers.demo import synthetic

    with engine.begin() as conn:
        made = synthetic.load_synthetic_year(conn, haimen, log=lambda m: print("  " + m))
        if made:
            print(f"  Haimen synthetic year: {made:,} cases")
        uid, token = add_user(conn, f"bench_sup_{uuid.uuid4().hex[:8]}", "supervisor")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(database_url(log=lambda *_: None)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/supervisor?city=haimen#token={token}"
    times = []
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"])
            for _k in range(4):  # the first warms the server's grid cache; report the best of the rest
                page = b.new_page(viewport={"width": 1400, "height": 900})
                t0 = time.perf_counter()
                page.goto(url)
                # polled through page.evaluate: Playwright's wait_for_function evaluates a string inside the
                # page, which the pages' Content-Security-Policy (no 'unsafe-eval') refuses
                deadline = time.monotonic() + 60
                while not page.evaluate("window.dashboardReady === true || !!window.dashboardError"):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the dashboard did not finish in 60 s")
                    time.sleep(0.01)
                times.append(time.perf_counter() - t0)
                err = page.evaluate("window.dashboardError || null")
                page.close()
                if err:
                    raise RuntimeError(err)
            b.close()
    finally:
        server.should_exit = True
        th.join(timeout=10)
        with engine.begin() as conn:
            conn.execute(text("UPDATE app_user SET active = false WHERE id = :u"), {"u": uid if isinstance(uid, int)
                                                                                      else uid.id})
    best = min(times[1:])
    t.add("dashboard first load (Chromium, Haimen)", f"{best * 1e3:.0f} ms",
          f"cold server {times[0] * 1e3:.0f} ms", f"< 2 s: {'PASS' if best < 2 else 'MISS'}")


def _demo_year(engine, haimen):
    from layers.demo import synthetic

    with engine.begin() as conn:
        made = synthetic.load_synthetic_year(conn, haimen, log=lambda m: print("  " + m))
        if made:
            print(f"  Haimen synthetic year: {made:,} cases")


def bench_hotspots(engine, city, t: Table, repeat: int) -> None:
    import esda
    import geopandas as gpd
    import libpysal
    from sqlalchemy import text

    from gis import hotspots as ghot
    from layers.analytics import cache as lcache
    from layers.analytics import hot_spots as lhot

    _demo_year(engine, city)
    with engine.connect() as conn:
        end = conn.execute(text("SELECT max(day) FROM case_rollup WHERE city_id = :c"), {"c": city.id}).scalar()
        start = end - dt.timedelta(days=29)
        arr = lcache.grid_arrays(conn, city)
        x = lcache.dense_counts(conn, city, arr, start, end)

    def ours():
        arr.weights.pop("area", None)  # cell areas are part of the weights: recomputed every run
        return lhot.hotspots_of_counts(arr, x)

    t_ours, h = best_of(ours, repeat)

    def anchor():
        w = libpysal.weights.Queen.from_dataframe(gpd.GeoDataFrame(geometry=arr.grid.geoms), use_index=False,
                                                  silence_warnings=True)
        return esda.G_Local(x, w, transform="B", star=True, permutations=999, seed=1)

    t_esda, gl = best_of(anchor, 1)
    ratio = t_esda / t_ours
    rep = h["report"]
    p_sim_min = float(np.min(gl.p_sim))
    esda_fdr = int((gl.p_sim <= ghot.fdr_threshold(gl.p_sim, 0.05)).sum())
    ours_hot = int((h["bins"] > 0).sum())
    t.add(f"hot spots, demo {start}…{end}: {rep['cases']:,} cases, {arr.n:,} cells",
          f"{t_ours * 1e3:.0f} ms (unit {rep['unit_m']:g} m, {rep['units']:,} units, {ours_hot:,} hot cells)",
          f"esda G_Local(999)+libpysal Queen {t_esda:.1f} s ({ratio:.0f}×); its p_sim ≥ {p_sim_min:.4f}; "
          f"p_sim + BH 5 %: {esda_fdr:,} cells", f"≥ 10×: {'PASS' if ratio >= 10 else 'MISS'}")

    # complete spatial randomness on the Haimen grid, in process (cases placed uniformly by area)
    cells = []
    old = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        y = np.bincount(rng.choice(arr.n, 3_500, p=lhot.cell_areas(arr) / lhot.cell_areas(arr).sum()),
                        minlength=arr.n).astype(float)
        r = lhot.hotspots_of_counts(arr, y)
        cells.append(int((r["bins"] > 0).sum()))
        z = ghot.getis_ord_gi_star(y, lcache.weights(arr, "queen"))
        old.append(int((ghot.classify_hotspots(z, fdr=True) > 0).sum()))
    t.add("CSR: 3,500 random cases on the Haimen grid (5 seeds)", f"hot cells {cells}",
          f"normal-approximation Gi* (queen, BH-FDR) {old}",
          f"0 in most runs: {'PASS' if sorted(cells)[2] == 0 else 'MISS'}")
    # emerging hot spots on 12 random weeks (~800 cases a week, as the demo)
    from gis import exact_hotspots as gex
    from layers.analytics import hot_spots as lhot

    rng = np.random.default_rng(7)
    share = lhot.cell_areas(arr) / lhot.cell_areas(arr).sum()
    cube = np.stack([np.bincount(rng.choice(arr.n, 800, p=share), minlength=arr.n) for _ in range(12)]).astype(float)
    cols, rows, size = lhot.analysis_keys(arr)
    cats, scale, _ = gex.exact_emerging(cube, cols, rows, arr.cx, arr.cy, size, base=lhot.cell_areas(arr))
    flagged = int((cats[scale.unit] != ghot.NO_PATTERN).sum())
    old_flagged = int((ghot.emerging_hotspots(cube, lcache.weights(arr, "queen")) != ghot.NO_PATTERN).sum())
    t.add("CSR: emerging hot spots, 12 random weeks × 800 cases", f"cells with a pattern {flagged}",
          f"normal-approximation space-time Gi* {old_flagged}", f"≈ 0: {'PASS' if flagged <= 0.01 * arr.n else 'MISS'}")


def bench_scan_null(t: Table, runs: int) -> None:
    """The daily scan's false-alert rate at the default threshold (recurrence ≥ 365 days, 999 replicates)
    on data without space-time interaction: a fixed spatial pattern and daily profile, days shuffled."""
    from scipy import stats

    from gis.bursts import space_time_permutation_scan
    from layers.analytics import alerts as lalerts

    cfg = lalerts.alert_config()
    rng = np.random.default_rng(365)
    cc, rr = np.meshgrid(np.arange(30), np.arange(20))
    cx, cy = cc.ravel() * 100.0, rr.ravel() * 100.0
    alerts, t0 = 0, time.perf_counter()
    for _ in range(runs):
        n = 1_100  # ~40 cases a day over the 28-day study period
        cell = np.where(rng.random(n) < 0.4, rng.integers(0, 60, n), rng.integers(0, cx.size, n))
        day = rng.permutation(np.arange(n) % 28)
        counts = np.zeros((cx.size, 28), dtype=np.int64)
        np.add.at(counts, (cell, day), 1)
        cl = space_time_permutation_scan(counts, cx, cy, n_sim=cfg["n_sim"], seed=int(rng.integers(1 << 30)),
                                         analysis_interval_days=cfg["analysis_interval_days"])
        alerts += any(c.recurrence_days >= cfg["min_recurrence_days"] for c in cl)
    dt_s = time.perf_counter() - t0
    bound = int(stats.binom.ppf(0.99, runs, 1 / cfg["min_recurrence_days"]))
    t.add(f"scan false alerts, {runs} shuffled days, RI ≥ {cfg['min_recurrence_days']:g} d, R = {cfg['n_sim']}",
          f"{alerts} alert days", f"expected ≤ {runs / cfg['min_recurrence_days']:.2f} ({dt_s:.0f} s)",
          f"≤ {bound} (99 % of Binomial): {'PASS' if alerts <= bound else 'MISS'}")


def bench_hotspots_api(engine, city, t: Table, repeat: int) -> None:
    import uuid

    from fastapi.testclient import TestClient
    from sqlalchemy import text

    from api.app import create_app
    from citygrid.dbcluster import database_url
    from layers.core.users import add_user

    with engine.begin() as conn:
        end = conn.execute(text("SELECT max(day) FROM case_rollup WHERE city_id = :c"), {"c": city.id}).scalar()
        uid, token = add_user(conn, f"bench_hot_{uuid.uuid4().hex[:8]}", "supervisor")
    q = {"city": city.slug, "start": str(end - dt.timedelta(days=29)), "end": str(end)}
    hdr = {"Authorization": f"Bearer {token}"}
    try:
        with TestClient(create_app(database_url(log=lambda *_: None))) as client:
            t0 = time.perf_counter()
            r = client.get("/api/v1/supervisor/hotspots", params=q, headers=hdr)
            cold = time.perf_counter() - t0
            assert r.status_code == 200, r.text

            def warm():
                r = client.get("/api/v1/supervisor/hotspots", params=q, headers=hdr)
                assert r.status_code == 200, r.text
                return r.json()

            t_warm, fc = best_of(warm, max(repeat, 3))
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE app_user SET active = false WHERE id = :u"),
                         {"u": uid if isinstance(uid, int) else uid.id})
    t.add("GET /api/v1/supervisor/hotspots, 30 days, warm", f"{t_warm * 1e3:.0f} ms",
          f"cold {cold * 1e3:.0f} ms; {fc['cases']:,} cases, unit {fc['scale']['unit_m']:g} m, "
          f"{len(fc['features']):,} significant units ({sum(fc['summary'].values()):,} cells)",
          f"< 1 s: {'PASS' if t_warm < 1 else 'MISS'}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", type=int, default=1_000_000)
    ap.add_argument("--skip", nargs="*", default=[], choices=["gi", "heat", "dashboard", "hotspots", "scan"])
    ap.add_argument("--scan-days", type=int, default=40, help="shuffled days for the scan's false-alert rate")
    args = ap.parse_args()
    engine, city = demo_engine()
    t = Table("analytics (issues 6 and 12)")
    if "gi" not in args.skip:
        bench_gi(engine, city, t, args.repeat)
    if "heat" not in args.skip:
        bench_heat(engine, city, t, args.repeat, args.cases)
    if "dashboard" not in args.skip:
        bench_dashboard(engine, city, t)
    if "hotspots" not in args.skip:
        bench_hotspots(engine, city, t, args.repeat)
        bench_hotspots_api(engine, city, t, args.repeat)
    if "scan" not in args.skip:
        bench_scan_null(t, args.scan_days)
    t.print()
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
