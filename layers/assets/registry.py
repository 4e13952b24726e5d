"""Urban assets (部件): the class catalogs, 16-digit object codes, create/read/update/retire with an
append-only history. The grid cell, geometry kind, length and area are derived by the database
(trigger ``asset_derive``) whenever the geometry changes, whatever writes the row.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import mapping, shape
from sqlalchemy import Connection, text

from gis import crs as gcrs
from layers.core.city import CityInfo
from layers.core.errors import Conflict, InputError, NotFound

CATALOG_DIR = Path(__file__).resolve().parent / "data"
KINDS = ("component", "event")
#: 部件状态 asset states (ObjState).
STATUSES = {"完好": "intact", "破损": "damaged", "丢失": "missing", "占用": "occupied", "废弃": "retired",
            "其他": "other"}
EDITABLE = ("class_code", "name", "status", "dept_code1", "dept_code2", "dept_code3", "installed_on",
            "source", "photo", "note")
MAX_TEXT = 200
MAX_NOTE = 2000


# --- catalogs -------------------------------------------------------------------------------------

def read_catalog_file(path: Path) -> list[dict]:
    """Read a catalog CSV (code,name,name_en,geom_kind,official); InputError naming the bad line."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read catalog '{path.name}': {e}") from None
    out, seen = [], set()
    for i, r in enumerate(rows, start=2):
        code = (r.get("code") or "").strip()
        name = (r.get("name") or "").strip()
        kind = (r.get("geom_kind") or "any").strip() or "any"
        if not (code.isdigit() and len(code) in (2, 4)):
            raise InputError(f"{path.name} line {i}: code '{code}' must be 2 (大类) or 4 (小类) digits")
        if not name:
            raise InputError(f"{path.name} line {i}: name is empty")
        if kind not in ("point", "line", "polygon", "any"):
            raise InputError(f"{path.name} line {i}: geom_kind '{kind}' must be point, line, polygon or any")
        if code in seen:
            raise InputError(f"{path.name} line {i}: code {code} occurs twice")
        seen.add(code)
        out.append({"code": code, "name": name, "name_en": (r.get("name_en") or "").strip() or None,
                    "geom_kind": kind, "official": (r.get("official") or "").strip().lower() in ("true", "1", "yes")})
    for r in out:
        if len(r["code"]) == 4 and r["code"][:2] not in seen:
            raise InputError(f"{path.name}: small class {r['code']} has no big class {r['code'][:2]}")
    return out


def load_catalog(conn: Connection, kind: str, path: Path | None = None, city: CityInfo | None = None) -> int:
    """Load a catalog file: the default one (city None) or a city's own, replacing what was there."""
    if kind not in KINDS:
        raise InputError(f"catalog kind must be one of {', '.join(KINDS)}")
    rows = read_catalog_file(path or CATALOG_DIR / f"{kind}s.csv")
    city_id = city.id if city else None
    if city_id is None:
        conn.execute(text("DELETE FROM asset_class WHERE city_id IS NULL AND kind = :k"), {"k": kind})
    else:
        conn.execute(text("DELETE FROM asset_class WHERE city_id = :c AND kind = :k"), {"c": city_id, "k": kind})
    conn.execute(text("""INSERT INTO asset_class (city_id, kind, code, name, name_en, geom_kind, official)
                         VALUES (:city, :kind, :code, :name, :name_en, :geom_kind, :official)"""),
                 [{**r, "city": city_id, "kind": kind} for r in rows])
    return len(rows)


def ensure_default_catalogs(conn: Connection) -> None:
    have = set(conn.execute(text("SELECT DISTINCT kind FROM asset_class WHERE city_id IS NULL")).scalars())
    for kind in KINDS:
        if kind not in have:
            load_catalog(conn, kind)


def classes(conn: Connection, city: CityInfo, kind: str = "component") -> dict[str, dict]:
    """code → class (the city's own catalog if it has one, else the default), big and small classes."""
    ensure_default_catalogs(conn)
    rows = conn.execute(text("""
        SELECT code, name, name_en, geom_kind, official FROM asset_class
        WHERE kind = :k AND (city_id = :c OR (city_id IS NULL AND NOT EXISTS
              (SELECT 1 FROM asset_class WHERE city_id = :c AND kind = :k)))
        ORDER BY code"""), {"k": kind, "c": city.id}).all()
    return {r[0]: {"code": r[0], "name": r[1], "name_en": r[2], "geom_kind": r[3], "official": r[4]} for r in rows}


def catalog_tree(conn: Connection, city: CityInfo, kind: str) -> list[dict]:
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}")
    cls = classes(conn, city, kind)
    tree = []
    for code, c in cls.items():
        if len(code) == 2:
            tree.append({**c, "classes": [v for k, v in cls.items() if len(k) == 4 and k[:2] == code]})
    return tree


def small_class(conn: Connection, city: CityInfo, code, kind: str = "component") -> dict:
    code = str(code or "").strip()
    cls = classes(conn, city, kind)
    if len(code) != 4 or code not in cls:
        raise InputError(f"unknown {kind} class '{code[:20]}': give a 4-digit small-class code of the catalog "
                         f"(e.g. {', '.join(list(k for k in cls if len(k) == 4)[:3])})")
    return cls[code]


# --- codes ----------------------------------------------------------------------------------------

def allocate_codes(conn: Connection, city: CityInfo, class_code: str, n: int) -> list[str]:
    """n new 16-digit object codes: admin code (6) + big class (2) + small class (2) + sequence (6)."""
    prefix = city.adcode + class_code
    last = conn.execute(text("""
        INSERT INTO asset_code_counter (city_id, prefix, last) VALUES (:c, :p, :n)
        ON CONFLICT (city_id, prefix) DO UPDATE SET last = asset_code_counter.last + :n
        RETURNING last"""), {"c": city.id, "p": prefix, "n": n}).scalar_one()
    if last > 999_999:
        raise Conflict(f"class {class_code} has run out of 6-digit sequence numbers in {city.slug}")
    return [f"{prefix}{s:06d}" for s in range(last - n + 1, last + 1)]


def validate_object_code(code: str) -> str:
    code = str(code or "").strip()
    if not (len(code) == 16 and code.isdigit()):
        raise InputError(f"object code '{code[:40]}' must be 16 digits (6 admin + 2 big class + 2 small class "
                         "+ 6 sequence)")
    return code


# --- geometry -------------------------------------------------------------------------------------

_KIND_OF_TYPE = {"Point": "point", "MultiPoint": "point", "LineString": "line", "MultiLineString": "line",
                 "Polygon": "polygon", "MultiPolygon": "polygon"}


def geometry_in_working_crs(city: CityInfo, geom, src_crs: str):
    """A GeoJSON dict or shapely geometry in ``src_crs`` → shapely in the city's working CRS, checked."""
    if isinstance(geom, dict):
        try:
            geom = shape(geom)
        except Exception as e:  # shapely raises several kinds for malformed GeoJSON
            raise InputError(f"geometry is not valid GeoJSON: {e}") from None
    if geom is None or geom.is_empty:
        raise InputError("geometry is empty")
    if geom.geom_type not in _KIND_OF_TYPE:
        raise InputError(f"geometry type {geom.geom_type} is not supported: use a point, line or polygon")
    src = gcrs.parse_crs(src_crs)
    xy = shapely.get_coordinates(geom)
    if gcrs.is_geographic(src):
        bad = gcrs.validate_lonlat(xy[:, 0], xy[:, 1])
        if bad is not None:
            i = int(np.flatnonzero(bad != None)[0])  # noqa: E711
            raise InputError(f"coordinate {tuple(xy[i])} is not a valid lon/lat: {bad[i]}")
    elif not np.isfinite(xy).all():
        raise InputError("geometry has coordinates that are not numbers")
    out = gcrs.transform_geometry(geom, src, city.working_crs)
    if not out.is_valid:
        raise InputError(f"invalid geometry: {shapely.is_valid_reason(out)}")
    return out


def check_kind(cls: dict, geom) -> None:
    kind = _KIND_OF_TYPE[geom.geom_type]
    if cls["geom_kind"] != "any" and cls["geom_kind"] != kind:
        raise InputError(f"class {cls['code']} {cls['name']} takes {cls['geom_kind']} geometries, not {kind}")


def _wkb_param(geom, srid: int) -> str:
    return shapely.to_wkb(shapely.set_srid(geom, srid), hex=True, include_srid=True)


# --- values ---------------------------------------------------------------------------------------

def _clean_text(field: str, v, limit: int = MAX_TEXT):
    if v is None:
        return None
    if not isinstance(v, str):
        v = str(v)
    v = v.strip()
    if len(v) > limit:
        raise InputError(f"{field} is {len(v)} characters long; at most {limit}")
    if "\x00" in v:
        raise InputError(f"{field} contains a NUL character")
    return v or None


def _clean_date(field: str, v):
    if v is None or v == "":
        return None
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    try:
        return dt.date.fromisoformat(str(v).strip()[:10])
    except ValueError:
        raise InputError(f"{field} '{str(v)[:30]}' is not a date (YYYY-MM-DD)") from None


def clean_values(values: dict) -> dict:
    out = {}
    for k, v in values.items():
        if k == "status":
            v = (v or "完好").strip() if isinstance(v, str) else v
            if v not in STATUSES:
                raise InputError(f"status '{str(v)[:20]}' must be one of {', '.join(STATUSES)}")
            out[k] = v
        elif k == "installed_on":
            out[k] = _clean_date(k, v)
        elif k == "note":
            out[k] = _clean_text(k, v, MAX_NOTE)
        elif k == "class_code":
            out[k] = str(v).strip() if v is not None else None
        elif k in EDITABLE:
            out[k] = _clean_text(k, v)
        else:
            raise InputError(f"unknown asset field '{str(k)[:40]}'; fields: {', '.join(EDITABLE)}, geometry")
    return out


# --- CRUD -----------------------------------------------------------------------------------------

_SELECT = """
    SELECT a.id, a.code, a.class_code, a.name, a.status, a.dept_code1, a.dept_code2, a.dept_code3,
           a.geom_kind, a.length_m, a.area_m2, a.cell_code, a.installed_on, a.updated_at, a.created_at,
           a.retired_at, a.source, a.source_id, a.photo, a.note, a.synthetic, a.version, ST_AsBinary(a.geom)
    FROM asset a"""
_COLS = ("id", "code", "class_code", "name", "status", "dept_code1", "dept_code2", "dept_code3", "geom_kind",
         "length_m", "area_m2", "cell_code", "installed_on", "updated_at", "created_at", "retired_at", "source",
         "source_id", "photo", "note", "synthetic", "version")


def _feature(row, city: CityInfo, cls: dict, dst: str) -> dict:
    props = dict(zip(_COLS, row[:-1], strict=True))
    for k in ("installed_on", "updated_at", "created_at", "retired_at"):
        if props[k] is not None:
            props[k] = props[k].isoformat()
    for k in ("length_m", "area_m2"):
        if props[k] is not None:
            props[k] = round(props[k], 3)
    c = cls.get(props["class_code"], {})
    big = cls.get(props["class_code"][:2], {})
    props.update(class_name=c.get("name"), class_name_en=c.get("name_en"), big_code=props["class_code"][:2],
                 big_name=big.get("name"), status_en=STATUSES.get(props["status"]))
    geom = gcrs.transform_geometry(shapely.from_wkb(bytes(row[-1])), city.working_crs, dst)
    props.pop("id")
    return {"type": "Feature", "id": props["code"], "geometry": mapping(geom), "properties": props}


def _row(conn: Connection, city: CityInfo, code: str, lock: bool = False):
    code = validate_object_code(code)
    row = conn.execute(text(_SELECT + " WHERE a.city_id = :c AND a.code = :code" + (" FOR UPDATE" if lock else "")),
                       {"c": city.id, "code": code}).first()
    if row is None:
        raise NotFound(f"no asset '{code}' in {city.slug}")
    return row


def get_asset(conn: Connection, city: CityInfo, code: str, dst: str = "EPSG:4326") -> dict:
    return _feature(_row(conn, city, code), city, classes(conn, city), gcrs.parse_crs(dst))


def _history(conn: Connection, asset_id: int, actor: str, action: str, changes: dict) -> None:
    conn.execute(text("INSERT INTO asset_history (asset_id, actor, action, changes) "
                      "VALUES (:a, :who, :act, CAST(:ch AS jsonb))"),
                 {"a": asset_id, "who": actor, "act": action, "ch": json.dumps(changes, ensure_ascii=False,
                                                                              default=str)})


def create_asset(conn: Connection, city: CityInfo, values: dict, geometry, *, actor: str,
                 crs: str = "EPSG:4326", source_id: str | None = None, synthetic: bool = False) -> dict:
    """Create one asset; its object code is allocated from the class's sequence. Returns the feature."""
    vals = clean_values(values)
    cls = small_class(conn, city, vals.get("class_code"))
    geom = geometry_in_working_crs(city, geometry, crs)
    check_kind(cls, geom)
    if source_id is not None and not vals.get("source"):
        raise InputError("a source_id needs a source")
    code = allocate_codes(conn, city, cls["code"], 1)[0]
    cols = {k: vals.get(k) for k in EDITABLE}
    cols["status"] = cols["status"] or "完好"
    try:
        row = conn.execute(text(f"""
            INSERT INTO asset (city_id, code, {', '.join(EDITABLE)}, source_id, synthetic, geom)
            VALUES (:city, :code, {', '.join(':' + k for k in EDITABLE)}, :source_id, :synthetic,
                    ST_GeomFromEWKB(decode(:wkb, 'hex')))
            RETURNING id, cell_id"""),
            {**cols, "city": city.id, "code": code, "source_id": source_id, "synthetic": synthetic,
             "wkb": _wkb_param(geom, city.srid)}).one()
    except Exception as e:
        if "asset_source_key" in str(e):
            raise Conflict(f"an asset with source '{vals.get('source')}' id '{source_id}' exists already") from None
        raise
    if row.cell_id is None:
        raise InputError("the geometry is outside the city's grid", code="location_outside_city")
    _history(conn, row.id, actor, "create", {k: v for k, v in cols.items() if v is not None})
    return get_asset(conn, city, code)


def update_asset(conn: Connection, city: CityInfo, code: str, values: dict, geometry=None, *, actor: str,
                 crs: str = "EPSG:4326", expected_version: int | None = None) -> dict:
    """Change fields and/or the geometry; the history records old → new of what changed.

    The object code (ObjID) never changes, even when the class is corrected: other systems key on it."""
    row = _row(conn, city, code, lock=True)
    old = dict(zip(_COLS, row[:-1], strict=True))
    if old["retired_at"] is not None:
        raise Conflict(f"asset {old['code']} is retired; it can no longer be changed")
    if expected_version is not None and expected_version != old["version"]:
        raise Conflict(f"asset {old['code']} is at version {old['version']}, not {expected_version}: "
                       "someone changed it meanwhile; reload and try again")
    vals = clean_values(values)
    if "status" in vals and vals["status"] == "废弃":
        raise InputError("use retire to retire an asset")
    cls = small_class(conn, city, vals.get("class_code", old["class_code"]))
    changes = {k: [old[k], v] for k, v in vals.items() if old[k] != v}
    params = {k: v for k, v in vals.items() if old[k] != v}
    geom_sql = ""
    if geometry is not None:
        geom = geometry_in_working_crs(city, geometry, crs)
        check_kind(cls, geom)
        old_geom = shapely.from_wkb(bytes(row[-1]))
        if not shapely.equals_exact(old_geom, geom, 1e-9):
            geom_sql = ", geom = ST_GeomFromEWKB(decode(:wkb, 'hex'))"
            params["wkb"] = _wkb_param(geom, city.srid)
            changes["geometry"] = [shapely.to_wkt(old_geom, rounding_precision=3),
                                   shapely.to_wkt(geom, rounding_precision=3)]
    elif "class_code" in params:
        check_kind(cls, shapely.from_wkb(bytes(row[-1])))
    if not changes:
        return get_asset(conn, city, old["code"])
    sets = ", ".join(f"{k} = :{k}" for k in params if k != "wkb")
    sets = (sets + ", " if sets else "") + "updated_at = now(), version = version + 1" + geom_sql
    new = conn.execute(text(f"UPDATE asset SET {sets} WHERE id = :id RETURNING cell_id, cell_code"),
                       {**params, "id": old["id"]}).one()
    if new.cell_id is None:
        raise InputError("the new geometry is outside the city's grid", code="location_outside_city")
    if new.cell_code != old["cell_code"]:
        changes["cell_code"] = [old["cell_code"], new.cell_code]
    _history(conn, old["id"], actor, "update", changes)
    return get_asset(conn, city, old["code"])


def retire_asset(conn: Connection, city: CityInfo, code: str, *, actor: str, reason: str | None = None) -> dict:
    row = _row(conn, city, code, lock=True)
    old = dict(zip(_COLS, row[:-1], strict=True))
    if old["retired_at"] is not None:
        raise Conflict(f"asset {old['code']} was retired already on {old['retired_at']:%Y-%m-%d}")
    reason = _clean_text("reason", reason, MAX_NOTE)
    conn.execute(text("""UPDATE asset SET status = '废弃', retired_at = now(), updated_at = now(),
                         version = version + 1 WHERE id = :id"""), {"id": old["id"]})
    _history(conn, old["id"], actor, "retire", {"status": [old["status"], "废弃"], "reason": reason})
    return get_asset(conn, city, old["code"])


def history(conn: Connection, city: CityInfo, code: str) -> list[dict]:
    row = _row(conn, city, code)
    rows = conn.execute(text("SELECT at, actor, action, changes FROM asset_history WHERE asset_id = :a ORDER BY id"),
                        {"a": row[0]}).all()
    return [{"at": r[0].isoformat(), "actor": r[1], "action": r[2], "changes": r[3]} for r in rows]


def list_assets(conn: Connection, city: CityInfo, *, class_code: str | None = None, cell_code: str | None = None,
                bbox_working=None, include_retired: bool = False, limit: int = 1000, offset: int = 0,
                dst: str = "EPSG:4326") -> dict:
    where = ["a.city_id = :c"]
    params: dict = {"c": city.id, "lim": limit, "off": offset}
    if class_code:
        code = str(class_code).strip()
        if not (code.isdigit() and len(code) in (2, 4)):
            raise InputError(f"class '{code[:20]}' must be a 2- or 4-digit class code")
        where.append("a.class_code LIKE :cls")
        params["cls"] = code + "%"
    if cell_code:
        where.append("a.cell_code = :cell")
        params["cell"] = str(cell_code).strip()
    if not include_retired:
        where.append("a.retired_at IS NULL")
    if bbox_working is not None:
        where.append("a.geom && ST_MakeEnvelope(:x0, :y0, :x1, :y1, :srid)")
        params.update(x0=bbox_working[0], y0=bbox_working[1], x1=bbox_working[2], y1=bbox_working[3], srid=city.srid)
    w = " WHERE " + " AND ".join(where)
    matched = conn.execute(text("SELECT count(*) FROM asset a" + w), params).scalar_one()
    rows = conn.execute(text(_SELECT + w + " ORDER BY a.code LIMIT :lim OFFSET :off"), params).all()
    cls = classes(conn, city)
    dst = gcrs.parse_crs(dst)
    return {"type": "FeatureCollection", "numberMatched": matched, "numberReturned": len(rows),
            "features": [_feature(r, city, cls, dst) for r in rows]}


def rederive_cells(conn: Connection, city: CityInfo) -> int:
    """Re-derive every asset's cell (after the city's active grid changed). Returns rows updated."""
    return conn.execute(text("UPDATE asset SET cell_id = NULL WHERE city_id = :c"),
                        {"c": city.id}).rowcount
