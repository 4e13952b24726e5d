"""The place in the text: addresses, roads, communities and landmarks named in a Chinese message,
located with the city's gazetteer, for the cases waiting in the needs-location queue.

1. The administrative part (province, prefecture, county) is read by ``cpca`` (its bundled table of
   GB/T 2260 codes): a message naming another prefecture than the city's is not placed here.
2. Every gazetteer name (roads, communities, POIs, key zones, streets, districts; loaded from GIS/POI
   files with ``citygrid gazetteer load``) found in the text is a candidate, with its span.
3. Address-like phrases the gazetteer does not know (``…路12号``, ``…小区``, ``…医院``) are reported as
   mentions without a location, so the operator sees what the text says.

Confidence of a candidate: the gazetteer's confidence of its kind (POI 0.95 … district 0.1), divided
by the number of places bearing that name, ×0.9 for a two-character name, raised by 0.05 when another
candidate lies within ``AGREE_M`` metres (a road and a community that agree), lowered by 0.2 when the
text names another prefecture. Nothing is written until the operator confirms (``confirm``).
"""

from __future__ import annotations

import re
import threading

import numpy as np
import shapely
from sqlalchemy import Connection, text

from gis import crs as gcrs
from layers.cases import gazetteer
from layers.cases import workflow as wf
from layers.core.city import CityInfo
from layers.core.errors import Conflict, InputError, NotFound
from layers.text import segment

AGREE_M = 500.0
KIND_LABELS = {"poi": "地标 landmark", "key_zone": "重点区域 key zone", "community": "社区/小区 community",
               "road": "道路 road", "street": "街道 street", "district": "区县 district", "place": "地点 place",
               "mention": "文中地址 address in the text"}

_MENTION = re.compile(
    r"([\u4e00-\u9fffA-Za-z0-9]{1,12}?(?:路|街|大道|大街|巷|弄|道)(?:\d+|[一二三四五六七八九十百]+)(?:号|弄|幢|栋)?"
    r"|[\u4e00-\u9fff]{2,10}(?:小区|花园|花苑|新村|家园|公寓|苑|社区|村)"
    r"|[\u4e00-\u9fff]{2,10}(?:学校|小学|中学|大学|医院|公园|广场|超市|市场|车站|菜场|商场|中心)"
    r"|[\u4e00-\u9fff]{1,8}(?:路|大道|大街)(?:与|和)[\u4e00-\u9fff]{1,8}(?:路|大道|大街)(?:交叉口|路口)?)")

_regex_cache: dict[int, tuple[object, re.Pattern, dict]] = {}
_lock = threading.Lock()


def _pattern(idx: gazetteer.Index) -> tuple[re.Pattern | None, dict]:
    """One alternation of the gazetteer's names, longest first, and name → places bearing it."""
    with _lock:
        hit = _regex_cache.get(id(idx))
        if hit and hit[0] is idx:
            return hit[1], hit[2]
    by_name: dict[str, list] = {}
    for p in idx.places:
        n = segment.clean(p.name).replace(" ", "")
        if len(n) >= 2:
            by_name.setdefault(n, []).append(p)
    names = sorted(by_name, key=len, reverse=True)
    pat = re.compile("|".join(re.escape(n) for n in names)) if names else None
    with _lock:
        _regex_cache.clear()
        _regex_cache[id(idx)] = (idx, pat, by_name)
    return pat, by_name


def admin_part(s: str) -> dict | None:
    """What cpca reads of the administrative part: province, city, county and the 6-digit code."""
    import cpca

    try:
        r = cpca.transform([s]).iloc[0].to_dict()
    except Exception:  # cpca refuses odd input (no text at all …): nothing administrative then
        return None
    if not r.get("adcode"):
        return None
    return {"province": r.get("省"), "city": r.get("市"), "district": r.get("区"), "adcode": str(r["adcode"])}


def _lonlat(city: CityInfo, xs, ys):
    lon, lat = gcrs.transform_xy(np.asarray(xs, float), np.asarray(ys, float), city.working_crs, "EPSG:4326")
    return lon, lat


def find(conn: Connection, city: CityInfo, body: str | None) -> list[dict]:
    """Candidate places of a text, best first: name, kind, span [start, end) in the cleaned text,
    point (working CRS and lon/lat), confidence, why; then mentions without a location."""
    s = segment.clean(body)
    if not s:
        return []
    idx = gazetteer.index(conn, city)
    pat, by_name = _pattern(idx)
    adm = admin_part(s)
    elsewhere = bool(adm and adm["adcode"][:4] != city.adcode[:4] and adm["city"])
    found: list[dict] = []
    taken: list[tuple[int, int]] = []
    if pat is not None:
        for m in pat.finditer(s):
            places = by_name[m.group(0)]
            taken.append(m.span())
            for p in places:
                conf = p.confidence / len(places)
                if len(m.group(0)) <= 2:
                    conf *= 0.9
                found.append({"name": p.name, "kind": p.kind, "span": list(m.span()), "text": m.group(0),
                              "x": p.x, "y": p.y, "confidence": conf, "why": [f"地名库 gazetteer ({p.kind})"]
                              + ([f"同名 {len(places)} 处 {len(places)} places of this name"] if len(places) > 1 else [])})
    # corroboration: another located candidate close by
    if len(found) > 1:
        xy = np.array([[f["x"], f["y"]] for f in found])
        for i, f in enumerate(found):
            d = np.hypot(*(xy - xy[i]).T)
            if ((d < AGREE_M) & (np.arange(len(found)) != i)).any() and f["kind"] not in ("district", "street"):
                f["confidence"] += 0.05
                f["why"].append("与文中其他地名相近 agrees with another place in the text")
    for f in found:
        if elsewhere:
            f["confidence"] -= 0.2
            f["why"].append(f"文中写的是 {adm['city']} the text names another prefecture")
        f["confidence"] = round(float(min(max(f["confidence"], 0.0), 0.98)), 3)
    if found:
        lon, lat = _lonlat(city, [f["x"] for f in found], [f["y"] for f in found])
        for f, a, b in zip(found, lon, lat, strict=True):
            f["lon"], f["lat"] = round(float(a), 6), round(float(b), 6)
            f["kind_label"] = KIND_LABELS.get(f["kind"], f["kind"])
    found.sort(key=lambda f: (-f["confidence"], f["span"][0]))
    mentions = []
    for m in _MENTION.finditer(s):
        a, b = m.span()
        if any(a < tb and ta < b and (ta <= a and b <= tb) for ta, tb in taken):
            continue  # inside a gazetteer match already
        mentions.append({"name": m.group(0), "kind": "mention", "kind_label": KIND_LABELS["mention"],
                         "span": [a, b], "text": m.group(0), "confidence": 0.0,
                         "why": ["地名库中没有 not in the gazetteer"]})
    out = found + mentions
    if adm:
        for f in out:
            f["admin"] = adm
    return out


def best(conn: Connection, city: CityInfo, body: str | None, min_confidence: float) -> dict | None:
    c = [f for f in find(conn, city, body) if f["kind"] != "mention" and f["confidence"] >= min_confidence]
    return c[0] if c else None


def _case_text(r: dict) -> str:
    return "。".join(x for x in (r.get("address"), r.get("title"), r.get("description")) if x)


def queue(conn: Connection, city: CityInfo, user, *, limit: int = 50, offset: int = 0,
          min_confidence: float = 0.5) -> dict:
    """The needs-location queue (as the user may see it) with each case's proposed places."""
    from layers.cases.workflow import snap_one

    res = wf.list_cases(conn, city, user, needs_location=True, limit=limit, offset=offset)
    out = []
    for r in res["cases"]:
        cands = find(conn, city, _case_text(r))
        located = [c for c in cands if c["kind"] != "mention" and c["confidence"] >= min_confidence][:3]
        for c in located:
            try:
                c["cell_code"] = snap_one(conn, city, shapely.Point(c["x"], c["y"]))[1]
            except InputError:
                c["cell_code"] = None
        out.append({"id": r["id"], "case_no": r["case_no"], "received_at": r["received_at"],
                    "category_name": r.get("category_name"), "text": _case_text(r),
                    "proposals": located, "mentions": [c for c in cands if c["kind"] == "mention"][:5]})
    # The list's count fields as they are (past the count cap: total_exact false, total_at_least).
    return {**{k: v for k, v in res.items() if k.startswith("total")}, "cases": out}


def confirm(conn: Connection, city: CityInfo, case_id: int, *, name: str, kind: str, actor) -> dict:
    """The operator confirms a proposed place: recomputed from the case's own text (the client's word is
    only which one), then written through the workflow (``place_location``: snap, event 'located')."""
    row = conn.execute(text("SELECT city_id, address, title, description FROM case_file WHERE id = :i"),
                       {"i": case_id}).mappings().first()
    if row is None or row["city_id"] != city.id:
        raise NotFound(f"no case {case_id} in {city.slug}")
    cands = [c for c in find(conn, city, _case_text(dict(row))) if c["kind"] != "mention"
             and c["name"] == name and c["kind"] == kind]
    if not cands:
        raise Conflict(f"'{name}' ({kind}) is not a place found in the text of case {case_id}")
    if len({(round(c["x"], 1), round(c["y"], 1)) for c in cands}) > 1:
        raise Conflict(f"'{name}' names {len(cands)} places: place the case on the map")
    c = cands[0]
    out = wf.place_location(conn, city, case_id, shapely.Point(c["x"], c["y"]), actor, source="text")
    return {**out, "name": c["name"], "kind": c["kind"], "span": c["span"], "confidence": c["confidence"]}
