"""Province scale (issue 14): the cost of the everyday answers as a SYNTHETIC province grows.

The province (layers/demo/province.py): Nantong's county-level units as cities, Haimen the demo city
itself, cases over three years spread by area. For each size (cumulative: 100 k, then 1 M adds 900 k,
…) the answers are timed for Haimen: the case list's first page and a case detail, heat and hot spots
over 30 days, KPIs and the bulletin (HTML, maps included) for one month, tiles z12–z16, an OGC items page,
a month's case export (CSV), the needs-location queue. Windowed answers should cost the same at 10 M as
at 1 M (≤ 1.5×); the bulletin ≤ 30 s at 10 M. Each figure is the best of 3 (the first, cold, beside it);
the anchor is the same answer at the smallest size of the run (the ratio column).

    python bench/bench_province.py                  # 100k (what `make bench` runs)
    python bench/bench_province.py --sizes 100k,1M  # the cost curve
    make bench SCALE=10M                            # 100k, 1M, 10M (hours on a small machine)

Run it against a database of its own (DATABASE_URL): the province's cases stay (growing is additive).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Table, demo_engine  # noqa: E402

END = dt.datetime(2026, 11, 30, 16, 0, tzinfo=dt.UTC)  # 2026-12-01 00:00 Beijing
WINDOW = (dt.date(2026, 11, 1), dt.date(2026, 11, 30))  # 30 days
MONTH = "2026-10"


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "km" else s) * mult)


def _tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2 ** z
    return int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)


def measure(engine, city, scale: float = 1.0) -> dict[str, tuple[float, float, str]]:
    """name -> (best seconds, first seconds, what it returned).

    ``scale`` < 1 shortens every window (30 days, the month) to that fraction (``--same-rows``: a
    window holding as many cases at 10 M as the full window at 1 M, so that what is left is the cost of
    the history alone). The bulletin is a month by definition: skipped then."""
    from sqlalchemy import text

    from layers.analytics import bulletin, hot_spots, kpi
    from layers.analytics import heatmap as heat
    from layers.cases import workflow as wf
    from layers.core.users import User, add_user
    from layers.publish import catalog as lcat
    from layers.publish import export as lexp
    from layers.publish import ogc as logc
    from layers.publish import tiles as ltiles

    with engine.begin() as conn:
        row = conn.execute(text("SELECT id, name, role, department, area_code FROM app_user WHERE name = 'bench_province_op'")).first()
        op = User(*row) if row else add_user(conn, "bench_province_op", "operator")[0]
        newest = conn.execute(text("SELECT id FROM case_file WHERE city_id = :c ORDER BY received_at DESC LIMIT 1"),
                              {"c": city.id}).scalar_one()
    s, e = WINDOW
    m0, m1 = kpi.month_bounds(MONTH)
    if scale < 1.0:
        s = e - dt.timedelta(days=max(1, round((e - s).days * scale)))
        m1 = m0 + dt.timedelta(days=max(1, round((m1 - m0).days * scale)))
    bj = dt.timezone(dt.timedelta(hours=8))
    m0_t, m1_t = dt.datetime.combine(m0, dt.time(), bj), dt.datetime.combine(m1, dt.time(), bj)
    lon, lat = 121.1831, 31.9012

    def tiles_z12_16(conn, window=False):
        layer = lcat.get_layer(conn, city, "cases")
        size = 0
        since, until = (dt.datetime.combine(s, dt.time(), bj), dt.datetime.combine(e, dt.time(), bj)) if window else (None, None)
        for z in range(12, 17):
            x, y = _tile_of(lon, lat, z)
            ltiles.cache.clear()
            data, _, _ = ltiles.get_tile(conn, city, layer, "full", z, x, y, since, until)
            size += len(data)
        return f"{size:,} B"

    def ogc_page(conn):
        layer = lcat.get_layer(conn, city, "cases")
        doc, _ = logc.items(conn, city, layer, "full", base="", q="", bbox=None, bbox_crs="EPSG:4326",
                            datetime_=f"{m0_t.isoformat()}/{m1_t.isoformat()}", limit=100, offset=0,
                            crs=None)
        return f"{len(doc['features'])} items"

    def export_month(conn):
        layer = lcat.get_layer(conn, city, "cases")
        f = lcat.Filters(since=m0_t, until=m1_t)
        with tempfile.TemporaryDirectory() as tmp:
            _, _, rows = lexp.export_layers(conn, city, [(layer, "full")], "csv", "EPSG:4326", f, Path(tmp))
        return f"{sum(rows.values()):,} rows"

    jobs = {
        "case list, first page": lambda c: f"{wf.list_cases(c, city, op, limit=50)['total']:,} total",
        "case detail": lambda c: f"{len(wf.case_detail(c, city, newest, op)['events'])} events",
        "heat, 30 days": lambda c: f"{heat.heat_geojson(c, city, s, e)['total']:,} cases",
        "hot spots, 30 days": lambda c: f"{hot_spots.hotspots(c, city, s, e)['report']['cases']:,} cases",
        "KPIs, one month": lambda c: f"{len(kpi.kpis(c, city, m0, m1))} groups",
        "bulletin, one month (HTML + maps)": lambda c: f"{len(bulletin.render_html(c, city, MONTH)):,} chars",
        "tiles z12-z16 (cases layer, uncached)": tiles_z12_16,
        "tiles z12-z16, 30 days (cases layer, ?datetime=)": lambda c: tiles_z12_16(c, window=True),
        "OGC items page (100, one month)": ogc_page,
        "case export, one month (CSV)": export_month,
        "needs-location queue": lambda c: f"{wf.list_cases(c, city, op, needs_location=True, limit=50)['total']:,} queued",
    }
    if scale < 1.0:
        del jobs["bulletin, one month (HTML + maps)"]
    out = {}
    for name, fn in jobs.items():
        times, what = [], ""
        for _ in range(1 if name.startswith("bulletin") else 3):
            with engine.connect() as conn:
                t0 = time.perf_counter()
                what = fn(conn)
                times.append(time.perf_counter() - t0)
                conn.rollback()
        out[name] = (min(times), times[0], what)
        print(f"  {name}: {min(times) * 1000:,.0f} ms (first {times[0] * 1000:,.0f} ms) {what}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default=os.environ.get("SCALE_SIZES") or "100k",
                    help="comma-separated cumulative sizes, e.g. 100k,1M,10M")
    ap.add_argument("--scale", default=os.environ.get("SCALE"), help="the largest size: 100k, 1M or 10M")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--same-rows", action="store_true",
                    help="past 1M, shorten the windows to 1M/size of their length (3 days of 30 at 10M): the "
                         "windows then hold as many cases as at 1M, and the ratio is the cost of the history alone")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.scale:
        top = parse_size(args.scale)
        sizes = [n for n in (100_000, 1_000_000, 10_000_000) if n <= top] or [top]
    from layers.cases import calendar as lcal
    from layers.demo import province

    engine, city = demo_engine()
    lcal.bind(engine)
    results: dict[int, dict] = {}
    grow_s: dict[int, dict] = {}
    for n in sizes:
        print(f"### province at {n:,} cases", flush=True)
        grow_s[n] = province.grow(engine, n, end=END)
        scale = min(1.0, 1_000_000 / n) if args.same_rows else 1.0
        if scale < 1.0:
            print(f"  (--same-rows: windows at {scale:.0%} of their length)", flush=True)
        results[n] = measure(engine, city, scale)
    t = Table(f"province scale (Haimen's answers; the province has {', '.join(f'{n:,}' for n in sizes)} cases)")
    base, prev = sizes[0], sizes[-2] if len(sizes) > 1 else sizes[0]
    for name in results[base]:
        figs = "  ".join(f"{n // 1000:,}k: {results[n][name][0] * 1000:,.0f} ms" for n in sizes if name in results[n])
        if name not in results[sizes[-1]]:
            t.add(name, figs, "", "")
            continue
        ratio = (f"{sizes[-1] // 1000:,}k / {prev // 1000:,}k: {results[sizes[-1]][name][0] / results[prev][name][0]:.2f}×"
                 if len(sizes) > 1 else "")
        t.add(name, figs + f"  ({results[sizes[-1]][name][2]})", ratio,
              "bulletin ≤ 30 s" if name.startswith("bulletin") else ("windowed: ≤ 1.5× from 1M to 10M"
                                                                     if "30 days" in name or "month" in name else ""))
    for n in sizes:
        g = grow_s[n]
        if g["added"]:
            t.add(f"  generating +{g['added']:,} cases", f"{g['seconds']:.0f} s = {g['added'] / max(g['seconds'], 1e-9):,.0f} cases/s",
                  "", "")
    t.print()
    if args.json:
        args.json.write_text(json.dumps({str(n): {k: v[:2] for k, v in r.items()} for n, r in results.items()}, indent=1))
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
