"""Assets & layers benchmark (issue 3). `python bench/bench_assets.py` (or `citygrid bench assets`).

1. Export of the whole Haimen grid (~115k cells) to GeoPackage in EPSG:4490, from the demo database:
   this project's exporter (server-side cursor → Arrow batches → GDAL) beside GDAL's own ``ogr2ogr`` reading
   the same SELECT from the same database, and a plain geopandas + pyogrio export.
   Target: ≤ 0.6× ogr2ogr's time.
2. Vector-tile latency p50/p95 at z12–z16 over the grid and the (synthetic, demo) asset layer, over HTTP
   (uvicorn, keep-alive): uncached (first request of each tile) and cached, beside tipg's tile endpoint
   on the same rows (views ``bench_assets_*`` with an SRID typmod so tipg can read them).
   Targets: uncached ≤ tipg's p50 at every zoom; cached < 2 ms. Measured as a map client asks (keep-alive,
   gzip accepted, decoded tile in hand), both servers alike.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import Table, best_of, demo_engine  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def _tiles_over(bbox, z: int, n: int, rng) -> list[tuple[int, int, int]]:
    """n distinct tiles at zoom z whose centres fall in the lon/lat box (denser towards its centre)."""
    x0, y0, x1, y1 = bbox
    out: set = set()
    tries = 0
    while len(out) < n and tries < n * 50:
        tries += 1
        lon = rng.normal((x0 + x1) / 2, (x1 - x0) / 6)
        lat = rng.normal((y0 + y1) / 2, (y1 - y0) / 6)
        if not (x0 <= lon <= x1 and y0 <= lat <= y1):
            continue
        k = 2 ** z
        x = int((lon + 180) / 360 * k)
        y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * k)
        out.add((z, x, y))
    return sorted(out)


def _pct(ts: list[float]) -> tuple[float, float]:
    a = np.array(ts) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def bench_export(engine, city, t: Table, repeat: int) -> None:
    import geopandas as gpd
    from sqlalchemy import text

    from citygrid import dbcluster
    from layers.publish import catalog as lcat
    from layers.publish import export as lexp

    layer = lcat.get_layer(None, city, "grid_cells")
    sql, params, fields = lcat.select(layer, "full", city, geom_sql="ST_Transform(s.geom, 4490)")
    flat_sql = sql.replace(":city_id", str(int(city.id)))
    tmp = Path(tempfile.mkdtemp(prefix="bench-assets-"))
    try:
        def ours():
            d = tmp / f"ours{time.perf_counter_ns()}"
            d.mkdir()
            with engine.connect() as conn, conn.begin():
                path, _, counts = lexp.export_layers(conn, city, [(layer, "full")], "gpkg", "EPSG:4490", None, d)
            return counts["grid_cells"]

        st = dbcluster.status()
        pg = f"PG:host={st['socket']} port={st['port']} dbname=citygrid user=citygrid"

        def ogr():
            out = tmp / f"ogr{time.perf_counter_ns()}.gpkg"
            subprocess.run(["ogr2ogr", "-f", "GPKG", str(out), pg, "-sql", flat_sql, "-nln", "grid_cells",
                            "-a_srs", "EPSG:4490"], check=True, capture_output=True)
            return out

        def plain():
            out = tmp / f"gpd{time.perf_counter_ns()}.gpkg"
            with engine.connect() as conn:
                df = gpd.read_postgis(text(flat_sql), conn, geom_col="geom", crs="EPSG:4490")
            df.to_file(out, layer="grid_cells", driver="GPKG", engine="pyogrio")
            return len(df)

        t_ogr, ogr_path = best_of(ogr, repeat)
        t_ours, n = best_of(ours, repeat)
        t_gpd, n_gpd = best_of(plain, repeat)
        import pyogrio

        n_ogr = pyogrio.read_info(ogr_path)["features"]
        assert n == n_ogr == n_gpd, (n, n_ogr, n_gpd)
        ratio = t_ours / t_ogr
        t.add(f"export {n:,} cells → GPKG EPSG:4490", f"{t_ours:.2f} s", f"ogr2ogr {t_ogr:.2f} s",
              f"≤ 0.6×: {ratio:.2f}× {'PASS' if ratio <= 0.6 else 'MISS'}")
        t.add("  plain geopandas + pyogrio", f"{t_gpd:.2f} s", f"ogr2ogr {t_ogr:.2f} s", f"{t_gpd / t_ogr:.2f}×")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


BENCH_VIEWS = """
DROP VIEW IF EXISTS bench_assets_grid; DROP VIEW IF EXISTS bench_assets_assets;
CREATE VIEW bench_assets_grid AS
  SELECT c.id, c.code, c.col, c."row", c.partial, c.area_m2, c.geom::geometry(MultiPolygon, {srid}) AS geom
  FROM grid_cell c JOIN grid g ON g.id = c.grid_id AND g.active AND g.city_id = {city};
CREATE VIEW bench_assets_assets AS
  SELECT a.id, a.code, a.class_code, a.name, a.status, a.cell_code, a.geom::geometry(Geometry, {srid}) AS geom
  FROM asset a WHERE a.city_id = {city} AND a.retired_at IS NULL;
"""


# tipg over the cluster's Unix socket (its settings only take a URL with a TCP host): the socket directory is
# passed to asyncpg as ``host``.
TIPG_LAUNCHER = """
import os, asyncpg, uvicorn
_orig = asyncpg.create_pool
def _pool(dsn=None, **kw):
    kw["host"] = os.environ["BENCH_PG_SOCKET"]
    kw["port"] = int(os.environ["BENCH_PG_PORT"])
    return _orig(dsn, **kw)
asyncpg.create_pool = _pool
from tipg.main import app
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), log_level="warning", access_log=False)
"""


CLIENT_HEADERS = {"Accept-Encoding": "gzip, deflate", "Connection": "keep-alive"}
TILES_NOTE = ("tiles: time until the client holds the decoded tile — one keep-alive HTTP/1.1 connection, "
              "'Accept-Encoding: gzip, deflate' (as MapLibre and QGIS send), decompression in the client included; "
              "uncached = first request of a tile, cached = the same tile right after; KiB = decoded tile, "
              "'sent' = bytes on the wire")


def bench_tiles(engine, city, t: Table, per_zoom: int, skip_tipg: bool) -> None:
    import httpx
    from sqlalchemy import text

    from citygrid import dbcluster

    with engine.begin() as conn:
        for stmt in BENCH_VIEWS.format(srid=city.srid, city=city.id).split(";"):
            if stmt.strip():
                conn.execute(text(stmt))
        bbox = conn.execute(text("""SELECT ST_XMin(b), ST_YMin(b), ST_XMax(b), ST_YMax(b)
                                    FROM (SELECT ST_Transform(boundary, 4326) b FROM city WHERE id = :c) s"""),
                            {"c": city.id}).one()
    st = dbcluster.status()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CITYGRID_DB_URL": st["url"], "CITYGRID_DB_POOL_SIZE": "4"}
    procs = []
    ours_port = _free_port()
    procs.append(subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--port",
                                   str(ours_port), "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=env,
                                  stderr=subprocess.PIPE, text=True))
    tipg_port = None
    if not skip_tipg:
        tipg_port = _free_port()
        tenv = {**os.environ, "DATABASE_URL": f"postgresql://citygrid@localhost:{st['port']}/citygrid",
                "BENCH_PG_SOCKET": str(st["socket"]), "BENCH_PG_PORT": str(st["port"]), "BENCH_PORT": str(tipg_port),
                "TIPG_DB_SCHEMAS": '["public"]',
                "TIPG_DB_SPATIAL_EXTENT": "false", "TIPG_DB_DATETIME_EXTENT": "false"}
        procs.append(subprocess.Popen([sys.executable, "-c", TIPG_LAUNCHER], cwd="/tmp", env=tenv,
                                      stderr=subprocess.PIPE, text=True))
    try:
        _wait(f"http://127.0.0.1:{ours_port}/api/v1/health", procs[0])
        if tipg_port:
            _wait(f"http://127.0.0.1:{tipg_port}/collections", procs[1])
        rng = np.random.default_rng(2026)
        # Like a map client (MapLibre in a browser, QGIS): one keep-alive connection, gzip accepted; the time
        # is until the client holds the decoded tile (decompression included).
        ours = httpx.Client(base_url=f"http://127.0.0.1:{ours_port}", timeout=60, headers=CLIENT_HEADERS)
        tipg = (httpx.Client(base_url=f"http://127.0.0.1:{tipg_port}", timeout=60, headers=CLIENT_HEADERS)
                if tipg_port else None)
        # warm-up (connections, caches of the OS and PostgreSQL) on tiles not measured
        for z, x, y in _tiles_over(bbox, 11, 5, np.random.default_rng(1)):  # zoom not measured
            ours.get(f"/api/v1/tiles/grid_cells/{z}/{x}/{y}.mvt")
            if tipg:
                tipg.get(f"/collections/public.bench_assets_grid/tiles/WebMercatorQuad/{z}/{x}/{y}")
        for layer, tview in (("grid_cells", "public.bench_assets_grid"), ("assets", "public.bench_assets_assets")):
            for z in range(12, 17):
                tiles = _tiles_over(bbox, z, per_zoom, rng)
                cold, warm, ref = [], [], []
                sizes, wire = [], []
                for z_, x, y in tiles:
                    url = f"/api/v1/tiles/{layer}/{z_}/{x}/{y}.mvt"
                    t0 = time.perf_counter()
                    r = ours.get(url)
                    cold.append(time.perf_counter() - t0)
                    assert r.status_code == 200 and r.headers["x-tile-cache"] == "miss", (url, r.status_code)
                    sizes.append(len(r.content))
                    t0 = time.perf_counter()
                    r2 = ours.get(url)
                    warm.append(time.perf_counter() - t0)
                    assert r2.headers["x-tile-cache"] == "hit" and r2.content == r.content
                    wire.append(int(r2.headers.get("content-length", len(r2.content))))
                    if tipg:
                        t0 = time.perf_counter()
                        rt = tipg.get(f"/collections/{tview}/tiles/WebMercatorQuad/{z_}/{x}/{y}")
                        ref.append(time.perf_counter() - t0)
                        assert rt.status_code == 200, rt.text[:200]
                c50, c95 = _pct(cold)
                w50, w95 = _pct(warm)
                anchor = ""
                verdict = f"cached <2 ms: {'PASS' if w50 < 2 else 'MISS'}"
                if ref:
                    r50, r95 = _pct(ref)
                    anchor = f"tipg p50 {r50:.1f} / p95 {r95:.1f} ms"
                    verdict = f"uncached ≤ tipg p50: {'PASS' if c50 <= r50 else 'MISS'}; " + verdict
                t.add(f"tile {layer} z{z} ({len(tiles)} tiles, {np.mean(sizes) / 1024:.0f} KiB, "
                      f"{np.mean(wire) / 1024:.0f} KiB sent)",
                      f"uncached p50 {c50:.1f} / p95 {c95:.1f} ms · cached p50 {w50:.2f} / p95 {w95:.2f} ms",
                      anchor, verdict)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        with engine.begin() as conn:
            conn.execute(text("DROP VIEW IF EXISTS bench_assets_grid; DROP VIEW IF EXISTS bench_assets_assets"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tiles", type=int, default=30, help="distinct tiles per zoom and layer")
    ap.add_argument("--skip-tipg", action="store_true")
    ap.add_argument("--skip-export", action="store_true")
    ap.add_argument("--skip-tiles", action="store_true")
    args = ap.parse_args()

    from layers.assets.imports import generate_synthetic_inventory

    engine, city = demo_engine()
    with engine.begin() as conn:  # the demo's SYNTHETIC inventory (idempotent), for the asset tiles
        rep = generate_synthetic_inventory(conn, city)
    print(f"Haimen demo database; synthetic assets: {rep['totals']}")
    t = Table("assets & layers: export and vector tiles")
    if not args.skip_export:
        bench_export(engine, city, t, args.repeat)
    if not args.skip_tiles:
        bench_tiles(engine, city, t, args.tiles, args.skip_tipg)
    t.print()
    if not args.skip_tiles:
        print(TILES_NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
