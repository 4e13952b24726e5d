"""Snapping benchmark (issue: foundation). `make bench` or `citygrid bench snap`.

1,000,000 random points over the Haimen grid's bounding box (working CRS EPSG:4549), snapped by
  * this project's regular-grid path (arithmetic)         target ≥ 50 M points/s
  * the same from WGS-84 (transform + snap) vs pyproj's transform alone      target ≤ 1.25×
  * this project's irregular-grid path vs geopandas.sjoin  target ≥ 2× faster; shapely STRtree beside
  * PostGIS: the set-based bulk join vs the naive ST_Contains join           target ≥ 10× faster
and checks that every path gives the same cells.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Table, best_of, demo_engine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-postgis", action="store_true")
    args = ap.parse_args()

    import geopandas as gpd
    import pyproj
    import shapely
    from sqlalchemy import text

    from gis import snap as gsnap
    from layers.core import grid as lgrid

    engine, city = demo_engine()
    with engine.connect() as conn:
        info = lgrid.active_grid(conn, city)
        grid = lgrid.load_grid(conn, info)
    n_cells = len(grid.codes)
    geoms = grid.geoms
    minx, miny, maxx, maxy = shapely.total_bounds(geoms)
    rng = np.random.default_rng(2026)
    n = args.points
    x = rng.uniform(minx, maxx, n)
    y = rng.uniform(miny, maxy, n)
    print(f"Haimen grid: {n_cells} cells ({info.kind}, {info.cell_size:g} m, EPSG:{info.srid}); "
          f"{n:,} random points over its bbox")

    t = Table(f"snapping {n:,} points (best of {args.repeat})")

    # 1. Regular grid, points in the working CRS.
    t_reg, idx_reg = best_of(lambda: grid.locate(x, y), args.repeat)
    inside = int((idx_reg >= 0).sum())
    t.add("regular grid, working CRS", f"{n / t_reg / 1e6:.1f} M pts/s ({t_reg * 1e3:.1f} ms)", "",
          f"≥ 50 M/s: {'PASS' if n / t_reg >= 50e6 else 'MISS'}")

    # 2. From WGS-84: transform + snap vs pyproj's own transform.
    to_wgs = pyproj.Transformer.from_crs(f"EPSG:{info.srid}", "EPSG:4326", always_xy=True)
    lon, lat = to_wgs.transform(x, y)
    fwd = pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{info.srid}", always_xy=True)
    t_proj, _ = best_of(lambda: fwd.transform(lon, lat), args.repeat)

    from gis import crs as gcrs

    def wgs_path():
        wx, wy = gcrs.transform_xy(lon, lat, "EPSG:4326", f"EPSG:{info.srid}")
        return grid.locate(wx, wy)

    t_wgs, idx_wgs = best_of(wgs_path, args.repeat)
    ratio = t_wgs / t_proj
    t.add("regular grid, from WGS-84", f"{t_wgs * 1e3:.0f} ms", f"pyproj transform {t_proj * 1e3:.0f} ms",
          f"≤ 1.25×: {ratio:.2f}× {'PASS' if ratio <= 1.25 else 'MISS'}")

    # 3. Irregular path (the same cells treated as arbitrary polygons) vs sjoin and STRtree.
    import time as _time
    t0 = _time.perf_counter()
    poly_index = gsnap.PolygonGridIndex(geoms)
    t_build = _time.perf_counter() - t0
    t_irr, idx_irr = best_of(lambda: poly_index.locate(x, y), args.repeat)
    cells_df = gpd.GeoDataFrame({"cell": np.arange(n_cells)}, geometry=geoms, crs=info.srid)
    _ = cells_df.sindex  # built before timing, like our index

    def sjoin():
        pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(x, y), crs=info.srid)
        j = gpd.sjoin(pts, cells_df, how="left", predicate="intersects")
        j = j[~j.index.duplicated(keep="first")]
        return j["cell"].fillna(-1).to_numpy(dtype=np.int64)

    t_sj, idx_sj = best_of(sjoin, max(1, args.repeat - 1))
    tree = shapely.STRtree(geoms)

    def strtree():
        pts = shapely.points(x, y)
        pi, ci = tree.query(pts, predicate="intersects")
        out = np.full(n, -1, dtype=np.int64)
        out[pi[::-1]] = ci[::-1]  # first match wins
        return out

    t_tree, idx_tree = best_of(strtree, max(1, args.repeat - 1))
    t.add("irregular grid index", f"{n / t_irr / 1e6:.2f} M pts/s ({t_irr * 1e3:.0f} ms; build {t_build:.1f} s)",
          f"geopandas.sjoin {t_sj * 1e3:.0f} ms", f"≥ 2×: {t_sj / t_irr:.1f}× {'PASS' if t_sj / t_irr >= 2 else 'MISS'}")
    t.add("shapely STRtree query", f"{t_tree * 1e3:.0f} ms", "", f"(irregular index {t_tree / t_irr:.1f}× faster)")

    # Agreement (random points hit an edge with probability ~0, so every path must agree exactly).
    same = {
        "WGS-84 path": int((idx_wgs != idx_reg).sum()),
        "irregular": int((idx_irr != idx_reg).sum()),
        "sjoin": int((idx_sj != idx_reg).sum()),
        "STRtree": int((idx_tree != idx_reg).sum()),
    }

    # 4. PostGIS: bulk (hash join on col/row) vs naive ST_Contains join, on the same points in a table.
    if not args.skip_postgis:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_points"))
            conn.execute(text("CREATE UNLOGGED TABLE bench_points (id int PRIMARY KEY, geom geometry(Point), "
                              "cell_id bigint)"))
            buf = io.StringIO()
            wkb = shapely.to_wkb(shapely.set_srid(shapely.points(x, y), info.srid), hex=True, include_srid=True)
            for i in range(n):
                buf.write(f"{i}\t{wkb[i]}\n")
            with conn.connection.driver_connection.cursor() as cur:
                with cur.copy("COPY bench_points (id, geom) FROM STDIN") as cp:
                    cp.write(buf.getvalue())
            conn.execute(text("ANALYZE bench_points"))

        def run_sql(sql: str):
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL statement_timeout = 0"))
                conn.execute(text("DROP TABLE IF EXISTS bench_result"))
                conn.execute(text("CREATE UNLOGGED TABLE bench_result AS " + sql), {"g": info.id, "size": info.cell_size})
                res = conn.execute(text("SELECT id, cell FROM bench_result")).all()
            out = np.full(n, -1, dtype=np.int64)
            ids = np.array([r[0] for r in res], dtype=np.int64)
            cells = np.array([r[1] for r in res], dtype=np.int64)
            out[ids] = cells
            return out

        bulk_sql = """
            SELECT p.id, c.id AS cell FROM bench_points p JOIN grid_cell c
              ON c.grid_id = :g AND c.col = floor(ST_X(p.geom) / :size)::int
             AND c."row" = floor(ST_Y(p.geom) / :size)::int
             AND (NOT c.partial OR ST_Intersects(c.geom, p.geom))"""
        naive_sql = """
            SELECT p.id, c.id AS cell FROM bench_points p JOIN grid_cell c
              ON c.grid_id = :g AND ST_Contains(c.geom, p.geom)"""
        t_bulk, pg_bulk = best_of(lambda: run_sql(bulk_sql), 2)
        t_naive, pg_naive = best_of(lambda: run_sql(naive_sql), 1)
        t.add("PostGIS bulk join", f"{t_bulk:.2f} s ({n / t_bulk / 1e3:.0f} k pts/s)", f"naive ST_Contains {t_naive:.2f} s",
              f"≥ 10×: {t_naive / t_bulk:.1f}× {'PASS' if t_naive / t_bulk >= 10 else 'MISS'}")

        def update_path():
            with engine.begin() as conn:
                conn.execute(text("UPDATE bench_points SET cell_id = NULL"))
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL statement_timeout = 0"))
                return lgrid.bulk_snap_table(conn, info, "bench_points")

        t_upd, n_upd = best_of(update_path, 1)
        t.add("PostGIS bulk_snap_table (UPDATE)", f"{t_upd:.2f} s for {n_upd:,} rows", "", "(includes writing)")
        # PostGIS cell ids → positions in our cell arrays for comparison.
        pos = {int(cid): i for i, cid in enumerate(grid.ids)}
        to_pos = np.vectorize(lambda c: pos.get(int(c), -1) if c >= 0 else -1, otypes=[np.int64])
        same["PostGIS bulk"] = int((to_pos(pg_bulk) != idx_reg).sum())
        same["PostGIS naive"] = int((to_pos(pg_naive) != idx_reg).sum())
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_result"))
            conn.execute(text("DROP TABLE IF EXISTS bench_points"))

    t.print()
    print(f"\npoints inside the city: {inside:,} of {n:,}")
    print("disagreements with the regular path: " + ", ".join(f"{k} {v}" for k, v in same.items()))
    if any(same.values()):
        print("FAIL: the paths disagree")
        return 1
    print("all paths give the same cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
