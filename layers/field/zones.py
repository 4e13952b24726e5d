"""Key zones (重点区域): polygons, or lines with a buffer (a road is its centreline), or points, each
with a type, a patrol frequency and an owning area; imported from GIS files.

Geometry is stored in the city's working CRS. ``measure`` says how coverage is measured: ``area``
(polygons), ``length`` (lines: the centreline's length within reach of a track) or ``points``.
``buffer_m`` of a line zone is its half-width: a track within ``buffer_m + coverage buffer`` of the
centreline counts.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely
from sqlalchemy import Connection, text

from gis import crs as gcrs
from gis import patrol as gpatrol
from layers.core.city import CityInfo
from layers.core.errors import InputError, NotFound
from layers.core.files import read_vector

DATA = Path(__file__).resolve().parent / "data"
MEASURES = {"Polygon": "area", "MultiPolygon": "area", "LineString": "length", "MultiLineString": "length",
            "Point": "points", "MultiPoint": "points"}


@lru_cache
def zone_types() -> dict[str, dict]:
    return json.loads((DATA / "zone_types.json").read_text(encoding="utf-8"))["types"]


def _zone_type(value) -> str:
    v = str(value or "").strip()
    types = zone_types()
    if v in types:
        return v
    for name, t in types.items():  # the English name is accepted too
        if v.lower() == t["en"]:
            return name
    raise InputError(f"unknown zone type '{v}': one of {', '.join(types)}")


def _frequency(value, ztype: str) -> str:
    v = str(value).strip() if value not in (None, "") else zone_types()[ztype]["frequency"]
    try:
        gpatrol.parse_frequency(v)
    except ValueError as e:
        raise InputError(str(e)) from None
    return v


def _owning_area(conn: Connection, city: CityInfo, geom) -> str | None:
    """The street (街道/镇) holding the zone's representative point."""
    rep = shapely.point_on_surface(geom) if geom.geom_type.endswith("Polygon") else \
        shapely.line_interpolate_point(shapely.line_merge(geom) if geom.geom_type == "MultiLineString" else geom,
                                       0.5, normalized=True) if "Line" in geom.geom_type else shapely.centroid(geom)
    if rep.geom_type != "Point" or rep.is_empty:
        rep = shapely.point_on_surface(geom)
    return conn.execute(text("""
        SELECT code FROM admin_area WHERE city_id = :c AND level = 'street'
        AND ST_Covers(geom, ST_SetSRID(ST_MakePoint(:x, :y), :s)) ORDER BY code LIMIT 1"""),
        {"c": city.id, "x": rep.x, "y": rep.y, "s": city.srid}).scalar()


def upsert_zones(conn: Connection, city: CityInfo, features: list[dict], src_crs: str, *, source: str,
                 made_up: bool = False) -> list[dict]:
    """Insert or replace zones by code. Each feature: geometry (shapely, in ``src_crs``), code, name,
    type, frequency (default: the type's), buffer_m (lines; default: the type's), area_code (default:
    the street holding it). Validates everything before writing anything."""
    src = gcrs.parse_crs(src_crs)
    rows = []
    codes = set()
    for i, f in enumerate(features):
        where = f"feature {i}"
        geom = f.get("geometry")
        if geom is None or geom.is_empty:
            raise InputError(f"{where} has no geometry")
        if geom.geom_type not in MEASURES:
            raise InputError(f"{where}: a {geom.geom_type} cannot be a key zone (polygon, line or point)")
        if not geom.is_valid:
            raise InputError(f"{where}: invalid geometry: {shapely.is_valid_reason(geom)}")
        if gcrs.is_geographic(src) or src in (gcrs.GCJ02, gcrs.BD09):
            xy = shapely.get_coordinates(geom)
            bad = gcrs.validate_lonlat(xy[:, 0], xy[:, 1])
            if bad is not None:
                raise InputError(f"{where}: a coordinate is not a valid lon/lat: {next(b for b in bad if b)}")
        name = str(f.get("name") or "").strip()
        if not name or len(name) > 200:
            raise InputError(f"{where}: a name of 1 to 200 characters is required")
        code = str(f.get("code") or "").strip() or f"Z-{abs(hash((name, geom.wkb))) % 10**10:010d}"
        if len(code) > 40:
            raise InputError(f"{where}: code '{code[:50]}' is longer than 40 characters")
        if code in codes:
            raise InputError(f"{where}: code '{code}' occurs twice")
        codes.add(code)
        ztype = _zone_type(f.get("type"))
        freq = _frequency(f.get("frequency"), ztype)
        measure = MEASURES[geom.geom_type]
        buf = f.get("buffer_m")
        try:
            buf = float(zone_types()[ztype]["buffer_m"] if buf in (None, "") else buf)
        except (TypeError, ValueError):
            raise InputError(f"{where}: buffer_m '{buf}' is not a number") from None
        if not (0 <= buf <= 500) or not np.isfinite(buf):
            raise InputError(f"{where}: buffer_m must be between 0 and 500 m")
        working = gcrs.transform_geometry(geom, src, city.working_crs)
        area = f.get("area_code") or _owning_area(conn, city, working)
        if area is not None and not (str(area).isdigit() and len(str(area)) in (6, 9, 12)):
            raise InputError(f"{where}: area_code '{area}' must be a 6-, 9- or 12-digit admin code")
        inside = conn.execute(text("SELECT ST_Intersects(boundary, ST_SetSRID(ST_GeomFromWKB(decode(:w, 'hex')), :s)) "
                                   "FROM city WHERE id = :c"),
                              {"w": shapely.to_wkb(working, hex=True), "s": city.srid, "c": city.id}).scalar()
        if not inside:
            raise InputError(f"{where} ('{name}') lies outside the city (wrong CRS? GCJ-02 data must say so)")
        rows.append(dict(c=city.id, code=code, name=name, t=ztype, f=freq, a=area, w=shapely.to_wkb(working, hex=True),
                         s=city.srid, b=buf if measure != "area" else 0.0, m=measure, src=source, mu=made_up))
    for r in rows:
        conn.execute(text("""
            INSERT INTO key_zone (city_id, code, name, zone_type, frequency, area_code, geom, buffer_m, measure,
                                  source, made_up)
            VALUES (:c, :code, :name, :t, :f, :a, ST_SetSRID(ST_GeomFromWKB(decode(:w, 'hex')), :s), :b, :m, :src, :mu)
            ON CONFLICT (city_id, code) DO UPDATE SET name = EXCLUDED.name, zone_type = EXCLUDED.zone_type,
                frequency = EXCLUDED.frequency, area_code = EXCLUDED.area_code, geom = EXCLUDED.geom,
                buffer_m = EXCLUDED.buffer_m, measure = EXCLUDED.measure, source = EXCLUDED.source,
                made_up = EXCLUDED.made_up, active = true"""), r)
    return [{"code": r["code"], "name": r["name"], "type": r["t"], "frequency": r["f"], "area_code": r["a"],
             "measure": r["m"], "buffer_m": r["b"]} for r in rows]


def import_zones(conn: Connection, city: CityInfo, path: Path, *, crs: str | None = None, code_field: str = "code",
                 name_field: str = "name", type_field: str = "type", frequency_field: str = "frequency",
                 buffer_field: str = "buffer_m", area_field: str = "area_code", made_up: bool = False) -> list[dict]:
    """Import zones from a GIS file (GeoJSON, GeoPackage, Shapefile, zipped or not)."""
    df, file_crs = read_vector(Path(path))
    src = gcrs.parse_crs(crs) if crs else file_crs
    if src is None:
        raise InputError("the zone file has no CRS: give one (EPSG:4326, GCJ-02, BD-09, EPSG:4549 …)")
    if len(df) == 0:
        raise InputError("the zone file has no features")
    for need in (name_field, type_field):
        if need not in df.columns:
            raise InputError(f"the zone file has no field '{need}'; fields: {', '.join(map(str, df.columns[:-1]))}")

    def val(row, field):
        if field not in df.columns:
            return None
        v = row[field]
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else v

    feats = [{"geometry": row.geometry, "code": val(row, code_field), "name": val(row, name_field),
              "type": val(row, type_field), "frequency": val(row, frequency_field),
              "buffer_m": val(row, buffer_field), "area_code": val(row, area_field)}
             for _, row in df.iterrows()]
    return upsert_zones(conn, city, feats, src, source=Path(path).name, made_up=made_up)


def load_demo_zones(conn: Connection, city: CityInfo) -> list[dict]:
    """The Haimen demo's key zones (MADE UP: plausible places and shapes; idempotent)."""
    return import_zones(conn, city, DATA / "haimen_zones.geojson", crs="EPSG:4326", made_up=True)


def zone_rows(conn: Connection, city: CityInfo, *, area_code: str | None = None, ids=None) -> list[dict]:
    rows = conn.execute(text("""
        SELECT id, code, name, zone_type, frequency, area_code, buffer_m, measure, made_up, ST_AsBinary(geom)
        FROM key_zone WHERE city_id = :c AND active
          AND (CAST(:a AS text) IS NULL OR coalesce(area_code, '') LIKE :a || '%' OR :a LIKE area_code || '%')
          AND (CAST(:ids AS int[]) IS NULL OR id = ANY(:ids))
        ORDER BY code"""), {"c": city.id, "a": area_code, "ids": ids}).all()
    return [{"id": r[0], "code": r[1], "name": r[2], "type": r[3], "frequency": r[4], "area_code": r[5],
             "buffer_m": r[6], "measure": r[7], "made_up": r[8], "geom": shapely.from_wkb(bytes(r[9]))} for r in rows]


def feature(z: dict, city: CityInfo, dst: str, **extra) -> dict:
    geom = gcrs.transform_geometry(z["geom"], city.working_crs, dst)
    props = {k: v for k, v in z.items() if k != "geom"}
    props["type_en"] = zone_types().get(z["type"], {}).get("en")
    props.update(extra)
    return {"type": "Feature", "id": z["code"], "geometry": shapely.geometry.mapping(geom), "properties": props}


def zones_geojson(conn: Connection, city: CityInfo, dst: str = "EPSG:4326", area_code: str | None = None) -> dict:
    dst = gcrs.parse_crs(dst)
    feats = [feature(z, city, dst) for z in zone_rows(conn, city, area_code=area_code)]
    return {"type": "FeatureCollection", "crs": dst, "numberReturned": len(feats), "features": feats}


def get_zone(conn: Connection, city: CityInfo, code: str) -> dict:
    for z in zone_rows(conn, city):
        if z["code"] == code:
            return z
    raise NotFound(f"no key zone '{code}' in {city.slug}")
