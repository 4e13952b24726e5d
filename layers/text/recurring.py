"""Recurring problems (热点问题挖掘): the same problem, at the same place, in the same period.

**Grouping.** Each case's text (title + description) becomes a TF-IDF vector of character bigrams
(l2-normalised, sublinear tf: robust for short Chinese texts, no segmentation needed at this scale).
Two cases are linked when they are within ``radius_m`` metres of each other (located cases; unlocated
ones: same class, same street when known) **and** within ``pair_days`` days **and** the cosine of
their vectors is at least ``similarity``. Groups are the connected components of that graph (single
linkage at the threshold) with at least ``min_size`` cases. Candidate pairs come from a k-d tree on
(x/radius, y/radius, t/pair_days) with the Chebyshev metric, so the work grows with the pairs that are
close in place and time, not with n².

**Heat index** of a group (documented; every part is returned beside it)::

    heat = ln(1 + n) · (1 + ln(1 + span_days) / ln(1 + period_days)) · (1 + repeat_share) · sqrt(growth)

- ``n``: cases in the group; ``span_days``: first to last case (persistence, relative to the period);
- ``repeat_share``: share of the group's cases from callers who called about it more than once
  (callers compared inside the database by an anonymous rank, never returned);
- ``growth``: (cases in the later half of the period + 1) / (cases in the earlier half + 1), clipped
  to [0.25, 4]: a problem that grows counts more than one that fades.

Cases whose text is a template (the same words in more than 1 % of the period's cases, and more than 50
of them) are left out: they describe nothing. The representative text is the case nearest to the group's centroid, scrubbed of personal data
(``layers.core.publication.scrub``).

**共性 / 个性 per class.** For each class (level 2) with at least ``MIN_SPREAD`` cases in the period:
the share of the city's streets with a case (coverage) and the normalised Shannon entropy of the cases
over those streets (H / ln S, S = streets of the city). A class is 共性 (shared, spread over the city)
when entropy ≥ 0.6 and coverage ≥ 0.3; otherwise 个性 (concentrated in few places).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from sklearn.feature_extraction.text import TfidfVectorizer
from sqlalchemy import Connection, text

from citygrid import settings
from layers.cases.classes import catalog
from layers.core import publication
from layers.core.city import CityInfo
from layers.core.errors import InputError, NotFound
from layers.text import segment

MIN_SIZE = 3
MIN_SPREAD = 5
SPREAD_ENTROPY = 0.6
SPREAD_COVERAGE = 0.3
CHUNK = 200_000
#: A text repeated word for word by more than this share of the period's cases (and more than
#: TEMPLATE_MIN of them) is a template (e.g. the demo's "合成数据 synthetic demo case"): left out.
TEMPLATE_SHARE = 0.01
TEMPLATE_MIN = 50


def vectors(texts: list[str]) -> sp.csr_matrix:
    vec = TfidfVectorizer(analyzer="char", ngram_range=(2, 2), sublinear_tf=True, min_df=1, dtype=np.float32)
    clean = [segment.clean(t).replace(" ", "") or "∅" for t in texts]
    return vec.fit_transform(clean).tocsr()


def _pairs(coords: np.ndarray) -> np.ndarray:
    if len(coords) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    return cKDTree(coords).query_pairs(r=1.0, p=np.inf, output_type="ndarray")


def group(texts: list[str], t_days: np.ndarray, x: np.ndarray, y: np.ndarray, block: np.ndarray, *,
          similarity: float, radius_m: float, pair_days: float, min_size: int = MIN_SIZE) -> tuple[list[np.ndarray], sp.csr_matrix]:
    """Groups of case indices (each sorted, largest first) and the TF-IDF matrix.

    ``t_days``: time of each case in days; ``x``/``y``: working-CRS metres (NaN: unlocated);
    ``block``: an integer per case — unlocated cases are compared only within the same block."""
    n = len(texts)
    X = vectors(texts)
    loc = np.isfinite(x) & np.isfinite(y)
    edges = []
    li = np.flatnonzero(loc)
    if len(li) > 1:
        c = np.column_stack([x[li] / radius_m, y[li] / radius_m, t_days[li] / pair_days])
        p = _pairs(c)
        if len(p):
            d = np.hypot(x[li[p[:, 0]]] - x[li[p[:, 1]]], y[li[p[:, 0]]] - y[li[p[:, 1]]])
            p = p[d <= radius_m]
            edges.append(li[p])
    ui = np.flatnonzero(~loc)
    if len(ui) > 1:  # same block (×3 apart in the block axis: never within r = 1), same period
        c = np.column_stack([block[ui].astype(float) * 3.0, t_days[ui] / pair_days])
        edges.append(ui[_pairs(c)])
    P = np.vstack(edges) if edges else np.zeros((0, 2), dtype=np.int64)
    keep = []
    for s in range(0, len(P), CHUNK):
        q = P[s:s + CHUNK]
        sims = np.asarray(X[q[:, 0]].multiply(X[q[:, 1]]).sum(axis=1)).ravel()
        keep.append(q[sims >= similarity])
    E = np.vstack(keep) if keep else np.zeros((0, 2), dtype=np.int64)
    if not len(E):
        return [], X
    G = sp.coo_matrix((np.ones(len(E)), (E[:, 0], E[:, 1])), shape=(n, n))
    _, lab = connected_components(G, directed=False)
    sizes = np.bincount(lab)
    groups = [np.flatnonzero(lab == g) for g in np.flatnonzero(sizes >= min_size)]
    groups.sort(key=len, reverse=True)
    return groups, X


def heat(n: int, span_days: float, period_days: float, repeat_share: float, growth: float) -> float:
    return float(np.log1p(n) * (1 + np.log1p(span_days) / np.log1p(max(period_days, 1)))
                 * (1 + repeat_share) * np.sqrt(growth))


def _fetch(conn: Connection, city: CityInfo, start: dt.datetime, end: dt.datetime) -> dict:
    rows = conn.execute(text("""
        SELECT f.id, f.case_no, f.received_at, concat_ws('。', nullif(f.title, ''), nullif(f.description, '')),
               left(f.category_code, 4), f.area_code, ST_X(f.location), ST_Y(f.location),
               CASE WHEN c.phone IS NULL OR c.phone = '' THEN NULL
                    ELSE dense_rank() OVER (ORDER BY c.phone) END
        FROM case_file f LEFT JOIN case_contact c ON c.case_id = f.id
        WHERE f.city_id = :c AND f.received_at >= :a AND f.received_at < :b
          AND f.state NOT IN ('void', 'rejected')
          AND coalesce(f.description, f.title, '') <> ''
        ORDER BY f.received_at, f.id"""), {"c": city.id, "a": start, "b": end}).all()
    if not rows:
        return {"n": 0}
    a = list(zip(*rows, strict=True))
    return {"n": len(rows), "id": np.array(a[0], dtype=np.int64), "case_no": list(a[1]), "at": list(a[2]),
            "text": list(a[3]), "cat": list(a[4]), "area": list(a[5]),
            "x": np.array([np.nan if v is None else v for v in a[6]], float),
            "y": np.array([np.nan if v is None else v for v in a[7]], float),
            "caller": np.array([-1 if v is None else v for v in a[8]], dtype=np.int64)}


def _drop_templates(d: dict) -> tuple[dict, int]:
    """Leave out cases whose text is word for word that of many others (more than TEMPLATE_SHARE of the
    period's cases and more than TEMPLATE_MIN): a form's stock text, not a description of a problem."""
    keys = [segment.clean(t).replace(" ", "") for t in d["text"]]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    limit = max(TEMPLATE_MIN, TEMPLATE_SHARE * d["n"])
    keep = np.array([counts[k] <= limit for k in keys])
    if keep.all():
        return d, 0
    idx = np.flatnonzero(keep)
    out = {"n": len(idx)}
    for k, v in d.items():
        if k == "n":
            continue
        out[k] = v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]
    return out, int((~keep).sum())


def _latest_day(conn: Connection, city: CityInfo) -> dt.date:
    t = conn.execute(text("SELECT max(received_at) FROM case_file WHERE city_id = :c"), {"c": city.id}).scalar()
    return (t.astimezone(dt.timezone(dt.timedelta(hours=8))).date() if t else dt.date.today())


def run(conn: Connection, city: CityInfo, *, until: dt.date | None = None, days: int | None = None,
        store: bool = True, similarity: float | None = None) -> dict:
    """Group the city's cases of the ``days`` days up to ``until`` (default: the latest day with cases;
    default period: 3 × the pair window); with ``store`` the groups replace those of the same period."""
    cfg = settings.text()
    pair_days = cfg.recurring_days
    days = days or 3 * pair_days
    if not 1 <= days <= 3660:
        raise InputError("days must be 1..3660")
    sim = similarity or cfg.recurring_similarity
    t0 = time.perf_counter()
    until = until or _latest_day(conn, city)
    tz = dt.timezone(dt.timedelta(hours=8))
    start_day = until - dt.timedelta(days=days - 1)
    start = dt.datetime.combine(start_day, dt.time(0), tz)
    end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time(0), tz)
    d = _fetch(conn, city, start, end)
    out = {"window_start": str(start_day), "window_end": str(until), "cases": d["n"], "groups": [], "template_cases": 0,
           "similarity": sim, "radius_m": cfg.recurring_radius_m, "pair_days": pair_days}
    if d["n"] >= 2:
        d, out["template_cases"] = _drop_templates(d)
    if d["n"] >= 2:
        t_days = np.array([(t - start).total_seconds() / 86400 for t in d["at"]])
        keys = [f"{c}|{(a or '')[:9]}" for c, a in zip(d["cat"], d["area"], strict=True)]
        _, block = np.unique(keys, return_inverse=True)
        groups, X = group(d["text"], t_days, d["x"], d["y"], block, similarity=sim,
                          radius_m=cfg.recurring_radius_m, pair_days=pair_days)
        known = publication.contacts(conn, [int(d["id"][i]) for g in groups for i in g])
        for g in groups:
            out["groups"].append(_describe(g, d, X, t_days, days, known))
        out["groups"].sort(key=lambda r: -r["heat"])
    out["seconds"] = round(time.perf_counter() - t0, 2)
    if store:
        _store(conn, city, out, start_day, until)
    return out


def _describe(g: np.ndarray, d: dict, X: sp.csr_matrix, t_days: np.ndarray, days: int, known: dict) -> dict:
    n = len(g)
    centroid = np.asarray(X[g].mean(axis=0)).ravel()
    rep = int(g[int(np.argmax(X[g] @ centroid))])
    callers = d["caller"][g]
    c_ok = callers[callers >= 0]
    if len(c_ok):
        u, cnt = np.unique(c_ok, return_counts=True)
        repeat_cases = int(cnt[cnt > 1].sum())
        repeat_callers = int((cnt > 1).sum())
    else:
        repeat_cases = repeat_callers = 0
    repeat_share = repeat_cases / n
    tg = t_days[g]
    half = days / 2
    growth = float(np.clip((np.sum(tg >= half) + 1) / (np.sum(tg < half) + 1), 0.25, 4.0))
    span = float(tg.max() - tg.min())
    cats = [d["cat"][i] for i in g]
    cat = max(set(cats), key=cats.count)
    areas = [(d["area"][i] or "")[:9] for i in g if d["area"][i]]
    area = max(set(areas), key=areas.count) if areas else None
    ids = sorted(int(d["id"][i]) for i in g)
    xs, ys = d["x"][g], d["y"][g]
    item = catalog().get(cat, {})
    return {"n_cases": n, "heat": round(heat(n, span, days, repeat_share, growth), 3),
            "days": round(span, 1), "repeat_callers": repeat_callers, "repeat_share": round(repeat_share, 3),
            "growth": round(growth, 3), "category_code": cat, "category_name": item.get("name"),
            "area_code": area, "first_at": min(d["at"][i] for i in g).isoformat(),
            "last_at": max(d["at"][i] for i in g).isoformat(),
            "representative": publication.scrub(d["text"][rep], known.get(int(d["id"][rep]), [])) or "",
            "representative_case_no": d["case_no"][rep], "case_ids": ids,
            "case_nos": [d["case_no"][i] for i in sorted(g, key=lambda i: d["at"][i])],
            "x": float(np.nanmean(xs)) if np.isfinite(xs).any() else None,
            "y": float(np.nanmean(ys)) if np.isfinite(ys).any() else None,
            "signature": hashlib.sha1(f"{cat}|{area}|{ids[0]}".encode()).hexdigest()}


def _store(conn: Connection, city: CityInfo, out: dict, start: dt.date, end: dt.date) -> None:
    conn.execute(text("DELETE FROM text_recurring_group WHERE city_id = :c AND window_start = :a AND window_end = :b"),
                 {"c": city.id, "a": start, "b": end})
    for g in out["groups"]:
        details = {k: g[k] for k in ("days", "repeat_callers", "repeat_share", "growth", "category_name",
                                     "representative", "representative_case_no", "case_nos", "x", "y")}
        details.update(similarity=out["similarity"], radius_m=out["radius_m"], pair_days=out["pair_days"])
        g["id"] = conn.execute(text("""
            INSERT INTO text_recurring_group (city_id, window_start, window_end, signature, category_code, area_code,
                first_at, last_at, n_cases, heat, details, case_ids)
            VALUES (:c, :a, :b, :s, :cat, :area, :f, :l, :n, :h, CAST(:det AS jsonb), :ids) RETURNING id"""),
            {"c": city.id, "a": start, "b": end, "s": g["signature"], "cat": g["category_code"],
             "area": g["area_code"], "f": g["first_at"], "l": g["last_at"], "n": g["n_cases"], "h": g["heat"],
             "det": json.dumps(details, ensure_ascii=False), "ids": g["case_ids"]}).scalar_one()


def top_groups(conn: Connection, city: CityInfo, *, limit: int = 10, since: dt.date | None = None) -> dict:
    """The latest stored computation's groups, hottest first (no personal data: scrubbed text, case numbers)."""
    if not 1 <= limit <= 200:
        raise InputError("limit must be 1..200")
    last = conn.execute(text("""SELECT window_start, window_end FROM text_recurring_group WHERE city_id = :c
                                AND (CAST(:s AS date) IS NULL OR window_end >= :s)
                                ORDER BY computed_at DESC, id DESC LIMIT 1"""), {"c": city.id, "s": since}).first()
    if last is None:
        return {"window_start": None, "window_end": None, "groups": []}
    rows = conn.execute(text("""
        SELECT id, category_code, area_code, first_at, last_at, n_cases, heat, details,
               ST_X(ST_Transform(ST_SetSRID(ST_MakePoint((details->>'x')::float, (details->>'y')::float), :srid), 4326)),
               ST_Y(ST_Transform(ST_SetSRID(ST_MakePoint((details->>'x')::float, (details->>'y')::float), :srid), 4326))
        FROM text_recurring_group WHERE city_id = :c AND window_start = :a AND window_end = :b
        ORDER BY heat DESC, id LIMIT :lim"""), {"c": city.id, "a": last[0], "b": last[1], "lim": limit,
                                                "srid": city.srid}).all()
    groups = []
    for r in rows:
        det = r[7]
        groups.append({"id": r[0], "category_code": r[1], "category_name": det.get("category_name"),
                       "area_code": r[2], "first_at": r[3].isoformat(), "last_at": r[4].isoformat(),
                       "n_cases": r[5], "heat": round(r[6], 3), "days": det["days"],
                       "repeat_callers": det["repeat_callers"], "growth": det["growth"],
                       "representative": det["representative"], "case_nos": det["case_nos"][:20],
                       "lon": round(r[8], 6) if r[8] is not None else None,
                       "lat": round(r[9], 6) if r[9] is not None else None})
    return {"window_start": str(last[0]), "window_end": str(last[1]), "groups": groups}


def report_html(conn: Connection, city: CityInfo, group_id: int) -> str:
    """专报 of one recurring group, like an alert's: a printable page without personal data."""
    import html

    r = conn.execute(text("""SELECT window_start, window_end, category_code, area_code, first_at, last_at, n_cases,
                                    heat, details FROM text_recurring_group WHERE id = :i AND city_id = :c"""),
                     {"i": group_id, "c": city.id}).first()
    if r is None:
        raise NotFound(f"no recurring group {group_id} in city '{city.slug}'")
    det = r[8]
    items = [("类型 Kind", "热点问题 Recurring problem (same problem, same place, same period)"),
             ("时段 Period", f"{r[0]} – {r[1]}"), ("类别 Class", f"{r[2]} {det.get('category_name') or ''}"),
             ("街道 Street", r[3] or "—"), ("案件数 Cases", r[6]), ("持续天数 Days", det["days"]),
             ("首次 First", r[4].isoformat()[:16]), ("最近 Last", r[5].isoformat()[:16]),
             ("重复来电人 Repeat callers", det["repeat_callers"]), ("增长 Growth", det["growth"]),
             ("热度 Heat index", round(r[7], 3)), ("代表性诉求 Representative text", det["representative"]),
             ("案卷 Cases", ", ".join(det["case_nos"][:50]))]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    return (f'<!doctype html><html lang="zh-CN"><meta charset="utf-8"><title>热点问题专报 Special report '
            f'{group_id}</title><body style="font-family:\'Noto Sans CJK SC\',sans-serif"><h1>{html.escape(city.name)} '
            f'热点问题专报 Special report on a recurring problem No. {group_id}</h1>'
            f'<table border="1" cellpadding="4">{body}</table>'
            f'<p>热度 = ln(1+案件数) × (1 + ln(1+持续天数)/ln(1+时段天数)) × (1 + 重复来电占比) × √增长 '
            f'heat = ln(1+n) · (1 + ln(1+span)/ln(1+period)) · (1 + repeat share) · √growth</p></body></html>')


def spread(conn: Connection, city: CityInfo, *, until: dt.date | None = None, days: int = 90) -> dict:
    """共性 or 个性 per class (level 2) over the city's streets in the period, with the measures."""
    if not 1 <= days <= 3660:
        raise InputError("days must be 1..3660")
    until = until or _latest_day(conn, city)
    tz = dt.timezone(dt.timedelta(hours=8))
    start = dt.datetime.combine(until - dt.timedelta(days=days - 1), dt.time(0), tz)
    end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time(0), tz)
    n_streets = conn.execute(text("SELECT count(*) FROM admin_area WHERE city_id = :c AND level = 'street'"),
                             {"c": city.id}).scalar_one()
    rows = conn.execute(text("""
        SELECT left(category_code, 4), left(area_code, 9), count(*), count(DISTINCT cell_code)
        FROM case_file WHERE city_id = :c AND received_at >= :a AND received_at < :b AND area_code IS NOT NULL
          AND state NOT IN ('void', 'rejected')
        GROUP BY 1, 2"""), {"c": city.id, "a": start, "b": end}).all()
    by_cat: dict[str, dict] = {}
    for cat, street, n, cells in rows:
        by_cat.setdefault(cat, {})[street] = (n, cells)
    # Names of classes outside the catalog (imported ones): the name the cases were filed under.
    filed = dict(conn.execute(text("""
        SELECT DISTINCT ON (category_code) category_code, category_name FROM case_file
        WHERE city_id = :c AND category_code = ANY(:codes) AND category_name IS NOT NULL"""),
        {"c": city.id, "codes": [k for k in by_cat if k not in catalog()]}).all())
    out = []
    S = max(n_streets, 1)
    for cat, streets in sorted(by_cat.items()):
        counts = np.array([v[0] for v in streets.values()], float)
        n = int(counts.sum())
        p = counts / n
        ent = float(-(p * np.log(p)).sum() / np.log(S)) if S > 1 else 0.0
        cov = len(streets) / S
        item = catalog().get(cat, {})
        if n < MIN_SPREAD:
            kind, label = "few", "样本不足 too few cases"
        elif ent >= SPREAD_ENTROPY and cov >= SPREAD_COVERAGE:
            kind, label = "shared", "共性问题 shared (spread over the city)"
        else:
            kind, label = "local", "个性问题 local (concentrated)"
        out.append({"category_code": cat, "category_name": item.get("name") or filed.get(cat), "cases": n, "streets": len(streets),
                    "street_share": round(cov, 3), "entropy": round(ent, 3), "kind": kind, "label": label})
    out.sort(key=lambda r: -r["cases"])
    return {"window_start": str(until - dt.timedelta(days=days - 1)), "window_end": str(until),
            "streets_in_city": n_streets,
            "measure": f"共性 when normalised entropy H/ln(S) ≥ {SPREAD_ENTROPY} and street share ≥ {SPREAD_COVERAGE} "
                       f"(S = {n_streets} streets); at least {MIN_SPREAD} cases", "classes": out}
