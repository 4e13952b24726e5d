"""The local gazetteer: named places (roads, communities, POIs, key zones, admin areas) to locate
a case from its address text when it comes without coordinates.

Matching is by containment: the longest place name found in the address wins (a POI or a road
beats a street office, which beats the district). Each kind has a confidence; below
``MIN_CONFIDENCE`` the case stays without a location and goes to the "needs location" queue,
where an operator places it on the map.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from sqlalchemy import Connection, text

from gis import crs as gcrs
from layers.core.city import CityInfo
from layers.core.errors import InputError
from layers.core.files import read_vector

#: How far a match by this kind of place pins a case (a district pins nothing useful).
CONFIDENCE = {"poi": 0.95, "key_zone": 0.9, "community": 0.8, "road": 0.75, "street": 0.4, "district": 0.1,
              "place": 0.8}
MIN_CONFIDENCE = 0.7
KINDS = tuple(CONFIDENCE)

_norm_re = re.compile(r"[\s,，。．.、()（）\-]+")


def normalise(s: str) -> str:
    return _norm_re.sub("", (s or "")).upper()


@dataclass
class Place:
    name: str
    kind: str
    x: float
    y: float
    confidence: float


class Index:
    """Names of one city's places, longest first, for matching many addresses in process."""

    def __init__(self, places: list[Place]):
        self.places = sorted(places, key=lambda p: (-len(normalise(p.name)), -p.confidence))
        self.keys = [normalise(p.name) for p in self.places]

    def match(self, address: str | None) -> Place | None:
        a = normalise(address or "")
        if not a:
            return None
        best = None
        for key, p in zip(self.keys, self.places, strict=True):
            if len(key) >= 2 and key in a and (best is None or p.confidence > best.confidence):
                best = p
                if p.confidence >= 0.9:
                    break
        return best


_cache: dict[int, tuple[tuple, Index]] = {}
_lock = threading.Lock()


def _version(conn: Connection, city: CityInfo) -> tuple:
    zones = 0
    if conn.execute(text("SELECT to_regclass('key_zone') IS NOT NULL")).scalar():
        zones = conn.execute(text("SELECT coalesce(max(id), 0) + count(*) FROM key_zone WHERE city_id = :c"),
                             {"c": city.id}).scalar_one()
    return (conn.execute(text("SELECT coalesce(max(id), 0) + count(*) FROM gazetteer WHERE city_id = :c"),
                         {"c": city.id}).scalar_one(),
            conn.execute(text("SELECT count(*) FROM admin_area WHERE city_id = :c"), {"c": city.id}).scalar_one(),
            zones)


def index(conn: Connection, city: CityInfo) -> Index:
    ver = _version(conn, city)
    with _lock:
        hit = _cache.get(city.id)
    if hit and hit[0] == ver:
        return hit[1]
    places = []
    zones = ""
    if conn.execute(text("SELECT to_regclass('key_zone') IS NOT NULL")).scalar():
        zones = """
            UNION ALL
            SELECT name, 'key_zone', ST_PointOnSurface(geom) FROM key_zone WHERE city_id = :c AND active"""
    rows = conn.execute(text("""
        SELECT name, kind, ST_X(p), ST_Y(p) FROM (
            SELECT name, kind, CASE WHEN GeometryType(geom) LIKE '%LINESTRING'
                                    THEN ST_LineInterpolatePoint(ST_LineMerge(geom), 0.5)
                                    ELSE ST_PointOnSurface(geom) END AS p
            FROM gazetteer WHERE city_id = :c
            UNION ALL
            SELECT name, level, ST_PointOnSurface(geom) FROM admin_area WHERE city_id = :c AND NOT made_up
            UNION ALL
            SELECT regexp_replace(name, ' \\(made up\\)$', ''), level, ST_PointOnSurface(geom)
            FROM admin_area WHERE city_id = :c AND made_up AND level = 'street'""" + zones + """) s
        WHERE p IS NOT NULL"""), {"c": city.id}).all()
    for name, kind, x, y in rows:
        places.append(Place(name, kind, x, y, CONFIDENCE.get(kind, 0.5)))
    idx = Index(places)
    with _lock:
        _cache[city.id] = (ver, idx)
    return idx


def locate_address(conn: Connection, city: CityInfo, address: str | None) -> dict | None:
    """The place an address names, when confident enough: {point, name, kind, confidence}."""
    p = index(conn, city).match(address)
    if p is None or p.confidence < MIN_CONFIDENCE:
        return None
    return {"point": shapely.Point(p.x, p.y), "name": p.name, "kind": p.kind, "confidence": p.confidence}


def add_places(conn: Connection, city: CityInfo, names, kinds, geoms, *, source: str | None = None) -> int:
    """Add named places given in the working CRS."""
    bad = sorted({k for k in kinds if k not in KINDS})
    if bad:
        raise InputError(f"unknown place kind '{bad[0]}': one of {', '.join(KINDS)}")
    rows = []
    for name, kind, g in zip(names, kinds, geoms, strict=True):
        name = (str(name) if name is not None else "").strip()
        if not name or g is None or g.is_empty:
            continue
        rows.append(dict(c=city.id, n=name[:200], k=kind, s=source, w=shapely.to_wkb(g, hex=True), srid=city.srid))
    if rows:
        conn.execute(text("""INSERT INTO gazetteer (city_id, name, kind, source, geom)
                             VALUES (:c, :n, :k, :s, ST_SetSRID(ST_GeomFromWKB(decode(:w, 'hex')), :srid))"""), rows)
    return len(rows)


def load_places_file(conn: Connection, city: CityInfo, path: Path, *, name_field: str, kind: str,
                     crs: str | None = None) -> int:
    """Load named places from a vector file (roads, POIs, communities …)."""
    df, file_crs = read_vector(Path(path))
    src = gcrs.parse_crs(crs) if crs else file_crs
    if src is None:
        raise InputError("the places file has no CRS: give one")
    if name_field not in df.columns:
        raise InputError(f"the places file has no field '{name_field}'")
    geoms = np.asarray(gcrs.transform_geometry(np.asarray(df.geometry.values, dtype=object), src, city.working_crs))
    return add_places(conn, city, df[name_field].tolist(), [kind] * len(df), geoms, source=Path(path).name)


#: What an anonymous search may answer: places a citizen could name (key zones are staff-only).
PUBLIC_KINDS = ("poi", "road", "community", "street", "district", "place")
KIND_LABELS = {"poi": "地点", "road": "道路", "community": "社区", "street": "街道/镇", "district": "区",
               "place": "地名", "key_zone": "重点区域"}


def search(conn: Connection, city: CityInfo, q: str, *, limit: int = 8,
           kinds: tuple[str, ...] = PUBLIC_KINDS) -> list[Place]:
    """Places whose name matches ``q`` (a name or part of one, or an address that contains a name), best
    first: the exact name, names starting with it, names containing it, then names the text contains (the
    most precise kind first). Points in the city's working CRS."""
    key = normalise(q)
    if not key:
        raise InputError("请输入要搜索的地名 give a place name or an address to search for")
    ranked = []
    seen = set()
    for k, p in zip((idx := index(conn, city)).keys, idx.places, strict=True):
        if p.kind not in kinds or (p.name, p.kind) in seen:
            continue
        if k == key:
            rank = 0
        elif k.startswith(key):
            rank = 1
        elif key in k:
            rank = 2
        elif len(k) >= 2 and k in key:
            rank = 3
        else:
            continue
        seen.add((p.name, p.kind))
        ranked.append((rank, -p.confidence, len(k) if rank < 3 else -len(k), p.name, p))
    ranked.sort(key=lambda r: r[:4])
    return [r[4] for r in ranked[:limit]]


#: Kinds as a POI/GIS file may give them (Chinese or English) → the gazetteer's kinds.
KIND_ALIASES = {"道路": "road", "路": "road", "街巷": "road", "road": "road", "street_line": "road",
                "社区": "community", "小区": "community", "村": "community", "居委会": "community",
                "community": "community", "neighbourhood": "community", "residential": "community",
                "地标": "poi", "兴趣点": "poi", "poi": "poi", "landmark": "poi",
                "街道": "street", "镇": "street", "street": "street", "区": "district", "district": "district",
                "place": "place", "地点": "place", "key_zone": "key_zone"}


def _kind_of(v, default: str | None) -> str | None:
    s = str(v).strip() if v is not None else ""
    if not s or s.lower() == "nan":
        return default
    return KIND_ALIASES.get(s, KIND_ALIASES.get(s.lower(), s))


def load_gazetteer_file(conn: Connection, city: CityInfo, path: Path, *, name_field: str = "name",
                        kind_field: str | None = "kind", kind: str | None = None, crs: str | None = None) -> dict:
    """Load a city's named places from a GIS/POI file: GeoJSON, GeoPackage, Shapefile (zip) or CSV.

    Each row: a name (``name_field``), a kind (``kind_field``: road/community/poi/street/district/place,
    or 道路/社区/小区/地标…; ``kind`` for rows without one) and a geometry (CSV: a ``wkt``/``geometry``
    column, or ``lon``/``lat`` or ``x``/``y``; CRS EPSG:4326 unless ``crs`` says otherwise). Rows without
    a name or geometry are skipped; an unknown kind refuses the file (nothing written)."""
    import pandas as pd

    path = Path(path)
    if path.suffix.lower() == ".csv":
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except (UnicodeDecodeError, pd.errors.ParserError) as e:
            raise InputError(f"cannot read {path.name}: {e}") from None
        cols = {c.lower(): c for c in df.columns}
        if "wkt" in cols or "geometry" in cols:
            col = cols.get("wkt") or cols["geometry"]
            try:
                geoms = shapely.from_wkt([g or None for g in df[col]], on_invalid="raise")
            except shapely.errors.GEOSException as e:
                raise InputError(f"{path.name}: a geometry is not valid WKT ({e})") from None
        else:
            pair = next(((a, b) for a, b in (("lon", "lat"), ("lng", "lat"), ("x", "y"), ("经度", "纬度")) if a in cols and b in cols), None)
            if pair is None:
                raise InputError(f"{path.name}: give a wkt/geometry column or lon/lat (x/y) columns")
            try:
                xs = pd.to_numeric(df[cols[pair[0]]].replace("", None))
                ys = pd.to_numeric(df[cols[pair[1]]].replace("", None))
            except ValueError as e:
                raise InputError(f"{path.name}: coordinates must be numbers ({e})") from None
            geoms = shapely.points(xs.to_numpy(float), ys.to_numpy(float))
        src = gcrs.parse_crs(crs or "EPSG:4326")
    else:
        df, file_crs = read_vector(path)
        src = gcrs.parse_crs(crs) if crs else file_crs
        if src is None:
            raise InputError("the places file has no CRS: give one")
        geoms = np.asarray(df.geometry.values, dtype=object)
    if name_field not in df.columns:
        raise InputError(f"the places file has no field '{name_field}' (fields: {', '.join(map(str, df.columns))})")
    if kind_field and kind_field in df.columns:
        kinds = [_kind_of(v, kind) for v in df[kind_field].tolist()]
    elif kind:
        kinds = [_kind_of(kind, kind)] * len(df)
    else:
        raise InputError(f"the places file has no field '{kind_field}': give --kind for all rows")
    if any(k is None for k in kinds):
        raise InputError("some rows have no kind: give --kind for them")
    ok = np.array([g is not None and not shapely.is_missing(g) and not g.is_empty for g in geoms], dtype=bool)
    geoms = np.asarray(geoms, dtype=object)
    out = np.empty(len(geoms), dtype=object)
    if ok.any():
        out[ok] = np.asarray(gcrs.transform_geometry(geoms[ok], src, city.working_crs), dtype=object)
    names = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
             for v in df[name_field].tolist()]  # a missing name (None/NaN) is no name, never "nan"
    n = add_places(conn, city, names, kinds, list(out), source=path.name)
    by_kind: dict[str, int] = {}
    for k, g, nm in zip(kinds, out, names, strict=True):
        if g is not None and nm:
            by_kind[k] = by_kind.get(k, 0) + 1
    return {"loaded": n, "skipped": len(df) - n, "by_kind": by_kind}
