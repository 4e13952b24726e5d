"""A SYNTHETIC province for scale tests: the county-level units of Nantong (``haimen/
nantong_districts_gcj02.geojson`` in the shared data, pre-2020 layout) as cities of their own, Haimen
being the demo city itself, and N cases over three years spread over them by area.

Everything is labelled synthetic (``source_ref`` starts with ``province:``, the description says so). The
cases are written the way an import writes them (COPY in rounds, the bulk path of
``layers.cases.hotline`` when the session may: foreign keys checked once per round, the rollup trigger
once per statement), one committed transaction per round, so 10 M cases need no 10 M-row transaction.
Growing is additive: ``grow(conn_factory, 1_000_000)`` after 100 k adds 900 k.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time

import numpy as np
import shapely
from sqlalchemy import Connection, text

from citygrid import settings
from layers.cases import hotline, partitions
from layers.cases import workflow as wf
from layers.core import city as lcity
from layers.core import grid as lgrid
from layers.core.city import CityInfo
from layers.core.errors import NotFound

DISTRICTS = "haimen/nantong_districts_gcj02.geojson"
HAIMEN_ADCODE_OLD = "320684"  # 海门市 in the pre-2020 layout: the demo city 海门区 (320614)
CATS = ["E10101", "E10102", "E10201", "E10301", "E20101", "E50101", "E50201", "010102", "010103", "011001", "H10101"]
CHANNELS = ["电话", "微信", "网站", "APP"]
YEARS_DAYS = 3 * 365
PROVINCE_CELL_M = 500.0  # the other cities' grids: 500 m cells (Haimen keeps its 100 m demo grid)


def province_cities(conn: Connection, *, cell_size: float = PROVINCE_CELL_M, log=print) -> list[CityInfo]:
    """The province's cities (created with their grids on first call): Haimen first."""
    from layers.demo.haimen import load_haimen

    cities = [load_haimen(conn, log=lambda *_: None)]
    path = settings.paths().shared_data / DISTRICTS
    doc = json.loads(path.read_text(encoding="utf-8"))
    for f in doc["features"]:
        adcode, name = str(f["properties"]["adcode"]), f["properties"]["name"]
        if adcode == HAIMEN_ADCODE_OLD:
            continue
        slug = f"nt-{adcode}"
        try:
            city = lcity.get_city(conn, slug)
        except NotFound:
            t0 = time.perf_counter()
            geom = shapely.geometry.shape(f["geometry"])
            city = lcity.create_city(conn, slug=slug, name=f"{name} (合成省 synthetic)", adcode=adcode,
                                     boundary=geom, src_crs="GCJ-02")
            lcity.generate_grid(conn, city, size=cell_size)
            wf.ensure_departments(conn, city)
            if log:
                log(f"province: {name} {slug} with a {cell_size:.0f} m grid in {time.perf_counter() - t0:.1f} s")
        cities.append(city)
    return cities


def existing(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM case_file WHERE source_ref LIKE 'province:%'")).scalar_one())


def _copy(raw, table: str, columns: tuple, rows: list) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(zip(*rows, strict=True))
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)") as cp:
        cp.write(buf.getvalue().encode())


def _ts(secs: np.ndarray) -> np.ndarray:
    us = np.round(secs * 1e6).astype("int64").astype("datetime64[us]")
    return np.char.add(np.datetime_as_string(us, unit="us"), "Z").astype(object)


CASE_COLS = ("id", "city_id", "case_no", "source", "channel", "source_ref", "received_at", "category_code",
             "category_name", "description", "location", "location_source", "cell_id", "cell_code", "area_code",
             "state", "closed_at", "updated_at")
EVENT_COLS = ("case_id", "at", "kind", "actor_role", "from_state", "to_state", "data")


def write_round(conn: Connection, city: CityInfo, n: int, first_no: int, rng: np.random.Generator,
                end: dt.datetime, centres: np.ndarray) -> int:
    """``n`` synthetic cases of ``city`` received over the three years before ``end``, with their events."""
    g = lgrid.snapper(conn, city)
    cen = shapely.centroid(g.geoms)
    cx, cy = shapely.get_x(cen), shapely.get_y(cen)
    hot = rng.random(n) < 0.6
    c = np.where(hot, rng.choice(centres, n), rng.integers(0, len(cx), n))
    spread = np.where(hot, 700.0, 150.0)
    x = cx[c] + rng.normal(0, 1, n) * spread
    y = cy[c] + rng.normal(0, 1, n) * spread
    idx = g.locate(x, y)
    x, y, idx = np.where(idx >= 0, x, cx[c]), np.where(idx >= 0, y, cy[c]), np.where(idx >= 0, idx, c)
    located = rng.random(n) >= 0.01  # 1 % arrive without a location: the needs-location queue
    t_end = end.timestamp()
    recv = t_end - rng.random(n) * YEARS_DAYS * 86400
    recv = np.floor(recv / 86400) * 86400 + (8 + rng.random(n) * 12) * 3600 - 8 * 3600  # 08–20 h Beijing
    # Open: the last 10 days, and cases without a location from the last 90 (they wait to be placed).
    recent = (recv > t_end - 10 * 86400) | (~located & (recv > t_end - 90 * 86400))
    closed = ~recent & (rng.random(n) < 0.97)
    void = ~recent & ~closed
    state = np.where(closed, "closed", np.where(void, "void", "collected")).astype(object)
    closed_at = recv + (0.3 + rng.gamma(2.0, 1.2, n)) * 86400
    cats = np.array(CATS, dtype=object)[rng.integers(0, len(CATS), n)]
    names = {k: wf.category(k)["name"] for k in CATS}
    ids = np.array(conn.execute(text("SELECT nextval('case_file_id_seq') FROM generate_series(1, :n)"),
                                {"n": n}).scalars().all(), dtype=np.int64)
    nos = np.char.add(f"P{city.adcode}-", np.char.zfill(np.arange(first_no, first_no + n).astype(str), 9))
    pts = shapely.to_wkb(shapely.set_srid(shapely.points(x, y), city.srid), hex=True, include_srid=True)
    codes = g.codes[idx]
    none = np.full(n, None, dtype=object)
    recv_t, closed_t = _ts(recv), _ts(closed_at)
    case_rows = [ids.astype(object), [city.id] * n, nos.astype(object), ["hotline"] * n,
                 np.array(CHANNELS, dtype=object)[rng.integers(0, len(CHANNELS), n)],
                 np.char.add("province:", nos).astype(object), recv_t, cats, [names[k] for k in cats],
                 ["合成数据 synthetic province case"] * n, np.where(located, pts, None),
                 np.where(located, "import", None), np.where(located, g.ids[idx].astype(object), None),
                 np.where(located, codes, None), np.where(located, np.array([s[:12] for s in codes], dtype=object), None),
                 state, np.where(closed, closed_t, None), np.where(closed, closed_t, recv_t)]
    del none
    ev_case = np.concatenate([ids, ids[closed], ids[void]]).astype(object)
    ev_at = np.concatenate([recv_t, closed_t[closed], recv_t[void]])
    k = len(ev_case)
    kinds = ["received"] * n + ["closed"] * int(closed.sum()) + ["voided"] * int(void.sum())
    from_s = [None] * n + ["collected"] * (k - n)
    to_s = ["collected"] * n + ["closed"] * int(closed.sum()) + ["void"] * int(void.sum())
    data = ['{"synthetic": true}'] * k
    # Their months' partitions (layers.cases.partitions), before the COPY, while the connection is free.
    partitions.ensure_for(conn, recv_t, closed_t[closed])
    raw = conn.connection.driver_connection
    bulk = hotline.bulk_mode(conn)
    if bulk:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
    _copy(raw, "case_file", CASE_COLS, case_rows)
    _copy(raw, "case_event", EVENT_COLS, [ev_case, ev_at, kinds, ["system"] * k, from_s, to_s, data])
    if bulk:
        conn.execute(text("SET LOCAL session_replication_role = origin"))
        hotline.check_foreign_keys(conn, int(ids.min()), int(ids.max()))
    return n


def grow(engine, total: int, *, end: dt.datetime | None = None, round_size: int = 100_000, seed: int = 2027,
         log=print) -> dict:
    """Add synthetic province cases until there are ``total``; returns what was done."""
    with engine.begin() as conn:
        cities = province_cities(conn, log=log)
        have = existing(conn)
        areas = np.array([conn.execute(text("SELECT ST_Area(boundary) FROM city WHERE id = :c"),
                                       {"c": c.id}).scalar_one() for c in cities])
    end = end or dt.datetime(2026, 11, 30, 16, 0, tzinfo=dt.UTC)
    share = areas / areas.sum()
    todo = max(0, total - have)
    rng = np.random.default_rng(seed + have)
    t0 = time.perf_counter()
    written = 0
    centres = {}
    while written < todo:
        n = min(round_size, todo - written)
        per_city = rng.multinomial(n, share)
        with engine.begin() as conn:
            for city, m in zip(cities, per_city, strict=True):
                if m == 0:
                    continue
                if city.id not in centres:
                    cr = np.random.default_rng(city.id)
                    centres[city.id] = cr.integers(0, len(lgrid.snapper(conn, city).ids), 20)
                first = int(conn.execute(text("SELECT count(*) FROM case_file WHERE city_id = :c AND source_ref "
                                              "LIKE 'province:%'"), {"c": city.id}).scalar_one())
                write_round(conn, city, int(m), first, rng, end, centres[city.id])
        written += n
        if log:
            el = time.perf_counter() - t0
            log(f"province: {have + written:,} cases ({written / el:,.0f}/s)")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) case_file, case_event, case_rollup, case_rollup_change"))
    return {"cities": [c.slug for c in cities], "before": have, "added": todo,
            "seconds": round(time.perf_counter() - t0, 1)}
