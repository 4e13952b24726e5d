"""Bulk case writers for analytics data, and the Haimen demo's synthetic year.

* :func:`bulk_insert_cases` writes cases straight into ``case_file`` and their events into
  ``case_event`` set-based (one INSERT … SELECT FROM unnest per table): for tests, the synthetic year
  and imported real data (the LA 311 pipeline). Events follow layers/cases/vocab.py.
* :func:`haimen_synthetic_year` makes a year of SYNTHETIC cases for the Haimen demo (labelled:
  ``source_ref`` starts with ``synthetic:`` and the description says so): seasonal and weekly
  patterns, a handful of fixed hot places, and a few injected bursts. The demo loader calls
  ``load_synthetic_year(conn, city)`` (idempotent).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import numpy as np
import shapely
from sqlalchemy import Connection, text

from layers.core import grid as lgrid
from layers.core.city import CityInfo
from layers.core.errors import InputError

TZ8 = dt.timezone(dt.timedelta(hours=8))


@dataclass
class CaseBatch:
    """Column arrays of cases (one entry per case) and their events."""

    case_no: list
    received_at: list  # aware datetimes
    category_code: list
    channel: list
    source: list | None = None
    category_name: list | None = None
    x: np.ndarray | None = None  # working CRS; cell, cell_code and area_code are snapped from it
    y: np.ndarray | None = None
    state: list | None = None
    closed_at: list | None = None
    department_id: list | None = None
    source_ref: list | None = None
    description: list | None = None
    phone: list | None = None  # case_contact (personal data: internal only)
    source_data: list | None = None  # the source's own words (dicts): category label, raw status
    # events: (case index, at, kind, from_state, to_state, department_id, data dict)
    events: list = field(default_factory=list)


def bulk_insert_cases(conn: Connection, city: CityInfo, b: CaseBatch) -> np.ndarray:
    """Insert the batch; returns the new case ids in batch order."""
    n = len(b.case_no)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    cell_ids: list = [None] * n
    cell_codes: list = [None] * n
    area_codes: list = [None] * n
    wkt: list = [None] * n
    if b.x is not None:
        g = lgrid.snapper(conn, city)
        x, y = np.asarray(b.x, float), np.asarray(b.y, float)
        idx = g.locate(x, y)
        ok = idx >= 0
        cell_ids = np.where(ok, g.ids[np.maximum(idx, 0)], -1).tolist()
        cell_ids = [c if c >= 0 else None for c in cell_ids]
        codes = g.codes[np.maximum(idx, 0)]
        cell_codes = [str(codes[i]) if ok[i] else None for i in range(n)]
        area_codes = [c[:12] if c else None for c in cell_codes]
        fin = np.isfinite(x) & np.isfinite(y)
        wkt = np.where(fin, shapely.to_wkt(shapely.points(np.where(fin, x, 0), np.where(fin, y, 0)),
                                           rounding_precision=2), None).tolist()
    col = lambda v, d=None: v if v is not None else [d] * n  # noqa: E731
    # Foreign keys checked once per batch, not per row, when the session may (layers.cases.hotline.bulk_mode).
    from layers.cases import hotline, partitions

    # The monthly partitions of the cases and their events (layers.cases.partitions).
    partitions.ensure_for(conn, b.received_at, (e[1] for e in b.events))
    bulk = hotline.bulk_mode(conn)
    if bulk:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
    ids = conn.execute(text("""
        INSERT INTO case_file (city_id, case_no, source, channel, source_ref, received_at, category_code,
                               category_name, description, location, location_source, cell_id, cell_code,
                               area_code, department_id, state, closed_at, source_data)
        SELECT :city, t.no, t.src, t.ch, t.ref, t.at, t.cat, t.cname, t.descr,
               CASE WHEN t.wkt IS NULL THEN NULL ELSE ST_GeomFromText(t.wkt, :srid) END,
               CASE WHEN t.wkt IS NULL THEN NULL ELSE 'import' END, t.cell, t.cellcode, t.area, t.dep,
               t.state, t.closed, CAST(t.sdata AS jsonb)
        FROM unnest(CAST(:no AS text[]), CAST(:src AS text[]), CAST(:ch AS text[]), CAST(:ref AS text[]),
                    CAST(:at AS timestamptz[]), CAST(:cat AS text[]), CAST(:cname AS text[]),
                    CAST(:descr AS text[]), CAST(:wkt AS text[]), CAST(:cell AS bigint[]),
                    CAST(:cellcode AS text[]), CAST(:area AS text[]), CAST(:dep AS integer[]),
                    CAST(:state AS text[]), CAST(:closed AS timestamptz[]), CAST(:sdata AS text[]))
             WITH ORDINALITY AS t(no, src, ch, ref, at, cat, cname, descr, wkt, cell, cellcode, area, dep, state,
                                  closed, sdata, ord)
        ORDER BY t.ord
        RETURNING id"""), dict(
        city=city.id, srid=city.srid, no=list(b.case_no), src=col(b.source, "other"), ch=list(b.channel),
        ref=col(b.source_ref), at=list(b.received_at), cat=list(b.category_code), cname=col(b.category_name),
        descr=col(b.description), wkt=wkt, cell=cell_ids, cellcode=cell_codes, area=area_codes,
        dep=col(b.department_id), state=col(b.state, "collected"), closed=col(b.closed_at),
        sdata=[json.dumps(d, ensure_ascii=False) if d else None for d in col(b.source_data)])).scalars().all()
    # RETURNING order follows the insert order of a single INSERT … SELECT … ORDER BY
    ids = np.array(ids, dtype=np.int64)
    if b.phone is not None:
        sel = [i for i in range(n) if b.phone[i]]
        if sel:
            conn.execute(text("""
                INSERT INTO case_contact (case_id, phone)
                SELECT * FROM unnest(CAST(:id AS bigint[]), CAST(:ph AS text[]))"""),
                {"id": [int(ids[i]) for i in sel], "ph": [b.phone[i] for i in sel]})
    if b.events:
        ev = b.events
        conn.execute(text("""
            INSERT INTO case_event (case_id, at, kind, actor_role, from_state, to_state, department_id, data)
            SELECT t.cid, t.at, t.kind, 'system', t.fs, t.ts, t.dep, CAST(t.data AS jsonb)
            FROM unnest(CAST(:cid AS bigint[]), CAST(:at AS timestamptz[]), CAST(:kind AS text[]),
                        CAST(:fs AS text[]), CAST(:ts AS text[]), CAST(:dep AS integer[]), CAST(:data AS text[]))
                 AS t(cid, at, kind, fs, ts, dep, data)"""), dict(
            cid=[int(ids[e[0]]) for e in ev], at=[e[1] for e in ev], kind=[e[2] for e in ev],
            fs=[e[3] for e in ev], ts=[e[4] for e in ev], dep=[e[5] for e in ev],
            data=[json.dumps(e[6] or {}, ensure_ascii=False, default=str) for e in ev]))
    if bulk:
        conn.execute(text("SET LOCAL session_replication_role = origin"))
        hotline.check_foreign_keys(conn, int(ids.min()), int(ids.max()))
    return ids


# ----------------------------------------------------------------------------------------------
# A simple closed loop for generated cases
# ----------------------------------------------------------------------------------------------

def loop_events(i: int, received: dt.datetime, rng: np.random.Generator, dep_id: int | None,
                close_days: float = 5.0, step_hours: float = 24.0) -> tuple[list, str, dt.datetime | None]:
    """Events of one generated case (received → accepted → dispatched → started → feedback →
    verify → closed → rated, with some rejections, returns, reworks, extensions and deferrals).
    Returns (events, final state, closed_at)."""
    h = lambda hours: received + dt.timedelta(hours=float(hours))  # noqa: E731
    close_deadline = h(close_days * 24)
    ev = [(i, received, "received", None, "collected", None, {"close_deadline": close_deadline.isoformat()})]
    t = 0.2 + rng.exponential(0.5)
    if rng.random() < 0.06:
        ev.append((i, h(t), "rejected", "collected", "rejected", None, {}))
        return ev, "rejected", None
    ev.append((i, h(t), "accepted", "collected", "accepted", None, {}))
    t += 0.1 + rng.exponential(0.3)
    ev.append((i, h(t), "dispatched", "accepted", "dispatched", dep_id, {"next_deadline": h(t + step_hours).isoformat()}))
    deadline = h(t + step_hours)
    if rng.random() < 0.05:
        t += rng.exponential(2)
        ev.append((i, h(t), "returned", "dispatched", "accepted", dep_id, {}))
        t += 0.5
        ev.append((i, h(t), "dispatched", "accepted", "dispatched", dep_id, {}))
        deadline = h(t + step_hours)
    if rng.random() < 0.04:
        t += 1
        ev.append((i, h(t), "deferred", "dispatched", "deferred", dep_id, {}))
        return ev, "deferred", None
    if rng.random() < 0.08:
        t += 2
        ev.append((i, h(t), "extended", "dispatched", "dispatched", dep_id, {}))
        deadline += dt.timedelta(days=2)
        close_deadline += dt.timedelta(days=2)
    t += 0.5 + rng.exponential(1)
    ev.append((i, h(t), "started", "dispatched", "processing", dep_id, {}))
    t += rng.exponential(step_hours * 0.8)
    ev.append((i, h(t), "feedback", "processing", "feedback", dep_id,
               {"deadline": deadline.isoformat(), "met": h(t) <= deadline}))
    while rng.random() < 0.07:
        t += 2
        ev.append((i, h(t), "verify_fail", "verifying", "processing", dep_id, {}))
        t += rng.exponential(12)
        ev.append((i, h(t), "feedback", "processing", "feedback", dep_id, {}))
    t += 1 + rng.exponential(6)
    ev.append((i, h(t), "verify_ok", "verifying", "verifying", None, {}))
    t += 0.5
    closed = h(t)
    ev.append((i, closed, "closed", "verifying", "closed", None,
               {"close_deadline": close_deadline.isoformat(), "close_met": closed <= close_deadline}))
    if rng.random() < 0.6:
        r = rng.choice(["satisfied", "basic", "unsatisfied"], p=[0.7, 0.2, 0.1])
        ev.append((i, closed + dt.timedelta(hours=float(2 + rng.exponential(10))), "rated", "closed", "closed",
                   None, {"rating": str(r)}))
    return ev, "closed", closed


# ----------------------------------------------------------------------------------------------
# Haimen's synthetic year
# ----------------------------------------------------------------------------------------------

CLASSES = [  # (code in the class catalog, name, share, summer factor) — event small classes of DOMAIN.md
    ("E10101", "生活垃圾暴露", 0.20, 1.3), ("E10201", "积存垃圾渣土", 0.08, 1.1), ("E10301", "道路不洁", 0.10, 1.0),
    ("E20101", "非法小广告", 0.12, 0.9), ("E30101", "施工占道", 0.07, 1.0), ("E50101", "无照经营游商", 0.10, 1.2),
    ("E50201", "占道经营", 0.15, 1.2), ("E50301", "私搭乱建", 0.06, 0.9), ("E40101", "道路积水", 0.05, 3.0),
    ("E40201", "路面塌陷", 0.02, 1.5), ("010102", "上水井盖破损", 0.05, 1.0),
]
#: Share of event cases handled by the class's owner department (dispatched there with a reason)
#: rather than by the street office of their cell (事件先属地、后属主).
OWNER_SHARE = 0.25
CHANNEL_P = {"电话": 0.55, "微信": 0.18, "网站": 0.05, "APP": 0.07, "督查员": 0.13, "其他": 0.02}


def ensure_departments(conn: Connection, city: CityInfo) -> dict[str, int]:
    """The configured departments and the street offices (属地) of the city's streets
    (``layers/cases/data/departments.json``, one list for the demo and the workflow); code → id."""
    from layers.cases import workflow

    return workflow.ensure_departments(conn, city)


def class_owner(code: str) -> str | None:
    """The owner department (主管) of a class: its own or its nearest parent's ``department``."""
    from layers.cases.classes import catalog

    items = catalog()
    item = items.get(code)
    while item is not None:
        if item.get("department"):
            return item["department"]
        item = items.get(item.get("parent"))
    return None


def inside_cells(g) -> tuple[np.ndarray, np.ndarray]:
    """A point inside each grid cell (its centroid, or a point on its surface when a cut cell's
    centroid lies outside it): where a case lands when its drawn point falls outside the city."""
    cen = shapely.centroid(g.geoms)
    inside = shapely.contains(g.geoms, cen)
    pts = np.where(inside, cen, shapely.point_on_surface(g.geoms))
    return shapely.get_x(pts), shapely.get_y(pts)


def haimen_synthetic_year(conn: Connection, city: CityInfo, *, year_end: dt.date = dt.date(2026, 11, 27),
                          per_day: float = 120.0, seed: int = 12345, chunk: int = 20000,
                          bursts: int = 4, days: int = 365, log=print) -> int:
    """Write a SYNTHETIC year of cases ending on ``year_end``; returns the number of cases."""
    rng = np.random.default_rng(seed)
    g = lgrid.snapper(conn, city)
    cen = shapely.centroid(g.geoms)
    cx, cy = shapely.get_x(cen), shapely.get_y(cen)
    deps = ensure_departments(conn, city)
    ix, iy = inside_cells(g)
    streets = conn.execute(text("SELECT code, ST_AsBinary(geom) FROM admin_area WHERE city_id = :c AND level = 'street'"),
                           {"c": city.id}).all()
    street_at = {code: k for k, (code, _) in enumerate(streets)}
    street_geoms = shapely.from_wkb([bytes(w) for _, w in streets]) if streets else np.array([], dtype=object)
    parts: dict[int, tuple[float, float]] = {}

    def street_part_point(j: int, k: int) -> tuple[float, float]:
        if j not in parts:
            part = shapely.intersection(g.geoms[j], street_geoms[k])
            p = shapely.point_on_surface(part) if not shapely.is_empty(part) else shapely.point_on_surface(g.geoms[j])
            parts[j] = (shapely.get_x(p), shapely.get_y(p))
        return parts[j]

    # Where people are: a few town centres (hot places) over a thin background.
    centres = rng.choice(len(cx), 25, replace=False)
    ndays = int(days)
    if not (14 <= ndays <= 3 * 366):
        raise InputError("days must be 14..1098")
    start = year_end - dt.timedelta(days=ndays - 1)
    days = [start + dt.timedelta(days=k) for k in range(ndays)]
    doy = np.array([d.timetuple().tm_yday for d in days])
    season = 1 + 0.35 * np.sin(2 * np.pi * (doy - 105) / 365)  # summer high
    weekly = np.array([1.1, 1.05, 1.0, 1.0, 1.05, 0.8, 0.7])[[d.weekday() for d in days]]
    lam = per_day * season * weekly
    counts = rng.poisson(lam)
    names = [c[1] for c in CLASSES]
    share = np.array([c[2] for c in CLASSES])
    share /= share.sum()
    ch_names = list(CHANNEL_P)
    ch_p = np.array(list(CHANNEL_P.values()))
    ch_p /= ch_p.sum()
    horizon = dt.datetime(year_end.year, year_end.month, year_end.day, 23, 59, tzinfo=TZ8)
    burst_days = sorted(rng.choice(np.arange(int(ndays * 0.8), ndays), min(bursts, ndays // 5),
                                   replace=False).tolist())
    burst_cells = rng.choice(len(cx), len(burst_days), replace=False)
    total = 0
    keys = ("no", "at", "cat", "cname", "ch", "src", "x", "y", "state", "closed", "dep", "ref", "ev")
    batch: dict = {k: [] for k in keys}

    def flush():
        nonlocal batch, total
        if not batch["no"]:
            return
        b = CaseBatch(case_no=batch["no"], received_at=batch["at"], category_code=batch["cat"],
                      category_name=batch["cname"], channel=batch["ch"], source=batch["src"], x=np.array(batch["x"]),
                      y=np.array(batch["y"]), state=batch["state"], closed_at=batch["closed"],
                      department_id=batch["dep"], source_ref=batch["ref"],
                      description=["合成数据 synthetic demo case"] * len(batch["no"]), events=batch["ev"])
        bulk_insert_cases(conn, city, b)
        total += len(batch["no"])
        batch = {k: [] for k in keys}

    for k, d in enumerate(days):
        n = int(counts[k])
        summer = 1 + (np.array([c[3] for c in CLASSES]) - 1) * max(0.0, season[k] - 1) / 0.35
        p = share * summer
        p /= p.sum()
        cls = rng.choice(len(CLASSES), n, p=p)
        hot = rng.random(n) < 0.7
        cen_i = rng.choice(centres, n)
        px = np.where(hot, cx[cen_i] + rng.normal(0, 600, n), rng.uniform(cx.min(), cx.max(), n))
        py = np.where(hot, cy[cen_i] + rng.normal(0, 600, n), rng.uniform(cy.min(), cy.max(), n))
        if k in burst_days:  # an injected burst: 25 cases of one class within 300 m
            j = burst_days.index(k)
            c0 = burst_cells[j]
            m = 25
            cls = np.concatenate([cls, np.full(m, j % len(CLASSES))])
            px = np.concatenate([px, cx[c0] + rng.normal(0, 150, m)])
            py = np.concatenate([py, cy[c0] + rng.normal(0, 150, m)])
            n += m
        # Every case inside the city, in a cell: a point drawn outside takes a random cell's inner point.
        cell = g.locate(px, py)
        out = cell < 0
        if out.any():
            pick = rng.integers(len(ix), size=int(out.sum()))
            px, py = px.copy(), py.copy()
            px[out], py[out] = ix[pick], iy[pick]
            cell = cell.copy()
            cell[out] = pick
        # ... and inside the street its cell belongs to (a cell on a street border is cut by it): a point
        # across the border takes a point of the cell's own part of its street.
        codes_i = g.codes[cell]
        sidx = np.array([street_at.get(str(c)[:9], -1) for c in codes_i])
        has = sidx >= 0
        if has.any():
            ok = np.ones(n, bool)
            ok[has] = shapely.contains_xy(street_geoms[sidx[has]], px[has], py[has])
            for k in np.flatnonzero(~ok):
                px[k], py[k] = street_part_point(int(cell[k]), int(sidx[k]))
        owner_draw = rng.random(n)
        secs = rng.beta(2.2, 2.0, n) * 86400 * 0.85 + 6 * 3600
        for i in range(n):
            at = dt.datetime(d.year, d.month, d.day, tzinfo=TZ8) + dt.timedelta(seconds=float(secs[i] % 86400))
            idx = len(batch["no"])
            # The department whose area holds the case: the street office of its cell (events: territory
            # first), or the class's owner (city-wide; components: owner first).
            code = CLASSES[int(cls[i])][0]
            street = deps.get(f"street-{str(g.codes[int(cell[i])])[:9]}")
            owner = deps.get(class_owner(code) or "")
            if code.startswith("E"):
                dep = owner if (street is None or (owner is not None and owner_draw[i] < OWNER_SHARE)) else street
            else:
                dep = owner if owner is not None else street
            ev, state, closed = loop_events(idx, at, rng, dep)
            cut = [e for e in ev if e[1] <= horizon]
            if len(cut) < len(ev):  # the loop is still running at the end of the year
                ev = cut
                state = ev[-1][4]
                closed = closed if closed is not None and closed <= horizon else None
            batch["no"].append(f"SYN{d:%Y%m%d}{i:04d}")
            batch["at"].append(at)
            c = CLASSES[int(cls[i])]
            batch["cat"].append(c[0])
            batch["cname"].append(c[1])
            ch = ch_names[int(rng.choice(len(ch_names), p=ch_p))]
            batch["ch"].append(ch)
            batch["src"].append("inspector" if ch == "督查员" else "hotline")
            batch["x"].append(px[i])
            batch["y"].append(py[i])
            batch["state"].append(state)
            batch["closed"].append(closed)
            batch["dep"].append(ev[2][5] if len(ev) > 2 else None)
            batch["ref"].append(f"synthetic:{d:%Y%m%d}:{i}")
            batch["ev"].extend(ev)
            if len(batch["no"]) >= chunk:
                flush()
        if log and k % 60 == 0 and k:
            log(f"synthetic cases: {d} …")
    flush()
    del names
    return total


def load_synthetic_year(conn: Connection, city: CityInfo, **kw) -> int:
    """Idempotent entry point for the demo loader: writes the synthetic year once."""
    has = conn.execute(text("SELECT 1 FROM case_file WHERE city_id = :c AND source_ref LIKE 'synthetic:%' LIMIT 1"),
                       {"c": city.id}).first()
    if has:
        return 0
    if kw.get("per_day", 1) <= 0:
        raise InputError("per_day must be > 0")
    return haimen_synthetic_year(conn, city, **kw)


# ----------------------------------------------------------------------------------------------
# Real data: MyLA311 service requests into a Los Angeles test city
# ----------------------------------------------------------------------------------------------

LA_CHANNELS = {"Call": "电话", "Mobile App": "APP", "Self Service": "网站", "Email": "其他",
               "Driver Self Report": "督查员", "Voicemail": "电话", "Web Form": "网站"}
LA_SLUG = "la311"


def load_la_city(conn: Connection, councils_path, *, slug: str = LA_SLUG, cell_size: float = 100.0) -> CityInfo:
    """Los Angeles as a test city: boundary = the union of the 99 neighborhood councils, which become
    its 'streets' (9-digit codes 990001 + the council id), and a regular grid (idempotent)."""
    import geopandas as gpd

    from layers.analytics import rollups
    from layers.core import city as lcity
    from layers.core.errors import NotFound

    try:
        return lcity.get_city(conn, slug)
    except NotFound:
        pass
    df = gpd.read_file(councils_path).to_crs("EPSG:4326")
    geoms = shapely.make_valid(df.geometry.values)
    boundary = lcity.to_multipolygon(shapely.union_all(geoms))
    city = lcity.create_city(conn, slug=slug, name="洛杉矶 (测试)", name_en="Los Angeles (311 test city)",
                             adcode="990001", boundary=boundary, src_crs="EPSG:4326")
    ids = df["nc_id"].astype(int).tolist()
    codes = [f"990001{i:03d}" for i in ids]
    parts = [lcity.to_multipolygon(shapely.make_valid(g)) for g in
             shapely.transform(geoms, lambda xy: np.column_stack(
                 __import__("gis.crs", fromlist=["x"]).transform_xy(xy[:, 0], xy[:, 1], "EPSG:4326",
                                                                      city.working_crs)))]
    lcity.add_areas(conn, city, "street", codes, df["name"].tolist(), parts, made_up=False)
    lcity.generate_grid(conn, city, size=cell_size)
    rollups.set_timezone(conn, city, "America/Los_Angeles")
    return city


def load_la311(conn: Connection, city: CityInfo, csv_path, *, close_limit_days: float = 5.0) -> dict:
    """Write the MyLA311 rows straight into case_file/case_event (created → received + accepted,
    closed → closed, with the close deadline ``close_limit_days`` after creation). Idempotent by
    source_ref (the SR number). Returns a report of what was read, written and set aside."""
    from zoneinfo import ZoneInfo

    import pandas as pd

    from gis import crs as gcrs

    df = pd.read_csv(csv_path, dtype=str)
    tz = ZoneInfo("America/Los_Angeles")
    created = pd.to_datetime(df["createddate"], format="mixed", errors="coerce")
    closed = pd.to_datetime(df["closeddate"], format="mixed", errors="coerce")
    lat = pd.to_numeric(df["latitude"], errors="coerce").to_numpy()
    lon = pd.to_numeric(df["longitude"], errors="coerce").to_numpy()
    have = set(conn.execute(text("SELECT source_ref FROM case_file WHERE city_id = :c AND source = 'open311'"),
                            {"c": city.id}).scalars())
    report = {"rows": len(df), "no_created_time": int(created.isna().sum()), "no_location": 0,
              "closed_before_received": 0, "written": 0, "already_there": 0}
    ok_xy = np.isfinite(lat) & np.isfinite(lon) & (lat != 0) & (lon != 0)
    report["no_location"] = int((~ok_xy).sum())
    x = np.full(len(df), np.nan)
    y = np.full(len(df), np.nan)
    x[ok_xy], y[ok_xy] = gcrs.transform_xy(lon[ok_xy], lat[ok_xy], "EPSG:4326", city.working_crs)
    rows = []
    for i in range(len(df)):
        sr = df["srnumber"].iat[i]
        if pd.isna(created.iat[i]) or pd.isna(sr):
            continue
        if sr in have:
            report["already_there"] += 1
            continue
        rows.append(i)
    b = CaseBatch(case_no=[], received_at=[], category_code=[], channel=[], source=[], category_name=[],
                  x=x[rows], y=y[rows], state=[], closed_at=[], source_ref=[], events=[], source_data=[])
    limit = dt.timedelta(days=close_limit_days)
    for k, i in enumerate(rows):
        c = created.iat[i].to_pydatetime().replace(tzinfo=tz)
        cl = closed.iat[i]
        cl = None if pd.isna(cl) else cl.to_pydatetime().replace(tzinfo=tz)
        rtype = str(df["requesttype"].iat[i])[:40]
        b.case_no.append(f"LA{df['srnumber'].iat[i]}")
        b.received_at.append(c)
        b.category_code.append(rtype)
        b.category_name.append(rtype)
        b.channel.append(LA_CHANNELS.get(str(df["requestsource"].iat[i]), "其他"))
        b.source.append("open311")
        b.source_ref.append(df["srnumber"].iat[i])
        deadline = c + limit
        ev = [(k, c, "received", None, "collected", None, {"close_deadline": deadline.isoformat()}),
              (k, c, "accepted", "collected", "accepted", None, {})]
        status = str(df["status"].iat[i])
        said = {"category": str(df["requesttype"].iat[i]), "status": status}
        if cl is not None and cl < c:
            # One rule with `citygrid import cases`: the case is kept, the closure is not believed.
            report["closed_before_received"] += 1
            said.update(closed_at_dropped=str(df["closeddate"].iat[i]),
                        closed_at_dropped_reason="closed before it was received")
            cl = None
        b.source_data.append(said)
        if status == "Cancelled":
            ev.append((k, cl or c, "voided", "accepted", "void", None, {"source_status": status}))
            b.state.append("void")
            b.closed_at.append(None)
        elif cl is not None:
            ev.append((k, cl, "closed", "accepted", "closed", None,
                       {"close_deadline": deadline.isoformat(), "close_met": cl <= deadline}))
            b.state.append("closed")
            b.closed_at.append(cl)
        else:
            b.state.append("accepted")
            b.closed_at.append(None)
        b.events.extend(ev)
    if b.case_no:
        bulk_insert_cases(conn, city, b)
    report["written"] = len(b.case_no)
    report["located_in_grid"] = int(conn.execute(text(
        "SELECT count(*) FROM case_file WHERE city_id = :c AND cell_id IS NOT NULL"), {"c": city.id}).scalar())
    return report


def main_la311(argv: list[str] | None = None) -> int:
    """Demo command: load the LA 311 sample into the 'la311' city and write its bulletin (2020-01)."""
    import argparse

    from citygrid import settings
    from citygrid.dbcluster import database_url
    from layers.analytics import bulletin as lbulletin
    from layers.analytics import hot_spots as lhot
    from layers.analytics import kpi as lkpi
    from layers.core.db import make_engine, migrate

    ap = argparse.ArgumentParser(prog="citygrid la311")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    data = settings.paths().shared_data / "311"
    engine = make_engine(database_url(log=lambda *_: None))
    migrate(engine)
    with engine.begin() as conn:
        city = load_la_city(conn, data / "la_neighborhood_councils.geojson")
        print("import:", load_la311(conn, city, data / "la_311_2020-01-01_03.csv"))
        d0, d1 = dt.date(2020, 1, 1), dt.date(2020, 1, 3)
        hs = lhot.hotspots_geojson(conn, city, d0, d1)
        print("hot spots:", hs["summary"])
        k = lkpi.kpis(conn, city, d0, d1 + dt.timedelta(days=1),
                      as_of=dt.datetime(2020, 1, 31, tzinfo=dt.UTC))["all"]
        print("KPIs:", {n: (v["value"] if v["kind"] == "count" else round(v["value"] or 0, 4)) for n, v in k.items()})
    engine.dispose()
    from layers.analytics.bulletin import main_bulletin

    del lbulletin
    return main_bulletin(["2020-01", "--city", LA_SLUG] + (["--out", args.out] if args.out else []))
