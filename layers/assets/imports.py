"""Importing assets from GIS files (GeoPackage, zipped Shapefile, GeoJSON, KML, CSV) with a mapping file,
a row-level validation report, atomic mode and idempotent re-imports (keyed on source + source id).

A mapping file (JSON) says which layers to read, which column is the source id, which columns fill
which asset fields and how rows map to asset classes::

    {"source": "osm-helsinki",          # 数据来源: with the layer name, the key of re-imports
     "crs": "EPSG:4326",                 # optional: overrides/supplies the file's CRS (GCJ-02, BD-09 …)
     "layers": {
       "facilities": {
         "id": "id",                                      # source id column (required)
         "columns": {"name": "name"},                     # asset field -> source column
         "defaults": {"status": "完好"},                   # fixed values
         "class": {"rules": [{"where": {"highway": "street_lamp"}, "class": "0107"}, …]}},
       "parks": {"id": "id", "class": "0402"},            # one class for the whole layer
       "*": {…}}}                                          # the only layer of a single-layer file

``class`` is a 4-digit code, ``{"field": col, "map": {value: code}}`` or ``{"rules": [...]}`` (first
match wins; a ``where`` value may be a list). For CSV, ``"geometry": {"lon": col, "lat": col}`` (or
``{"x": …, "y": …}``) or ``{"wkt": col}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio
import shapely
from sqlalchemy import Connection, text

from gis import crs as gcrs
from layers.assets import registry as la
from layers.core import grid as lgrid
from layers.core.city import CityInfo
from layers.core.errors import InputError
from layers.core.files import opened

FORMATS = {".gpkg", ".zip", ".geojson", ".json", ".kml", ".csv", ".shp", ".fgb"}
MAX_REJECTS_LISTED = 1000
MAX_ROWS = 2_000_000


class ImportRejected(InputError):
    """--atomic and some rows failed: nothing was written. ``report`` lists the rows and reasons."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclass
class Report:
    file: str
    source: str
    atomic: bool = False
    layers: dict = field(default_factory=dict)
    rejected: list = field(default_factory=list)
    by_class: dict = field(default_factory=dict)
    written: bool = True

    def reject(self, layer: str, row: int, source_id, reason: str) -> None:
        self.layers[layer]["rejected"] += 1
        if len(self.rejected) < MAX_REJECTS_LISTED:
            self.rejected.append({"layer": layer, "row": row, "source_id": source_id, "reason": reason})

    def as_dict(self) -> dict:
        totals = {k: sum(v[k] for v in self.layers.values())
                  for k in ("read", "created", "updated", "unchanged", "rejected")}
        return {"file": self.file, "source": self.source, "atomic": self.atomic, "written": self.written,
                "totals": totals, "layers": self.layers, "by_class": dict(sorted(self.by_class.items())),
                "rejected": self.rejected}


# --- mapping --------------------------------------------------------------------------------------

def load_mapping(path_or_dict) -> dict:
    if isinstance(path_or_dict, dict):
        m = path_or_dict
    else:
        p = Path(path_or_dict)
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"mapping file not found: {p}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"mapping file '{p.name}' is not valid JSON: {e}") from None
    if not isinstance(m, dict):
        raise InputError("the mapping must be a JSON object")
    src = m.get("source")
    if not isinstance(src, str) or not src.strip() or len(src) > 100:
        raise InputError("the mapping needs a 'source' name (1–100 characters): it keys re-imports")
    layers = m.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise InputError("the mapping needs 'layers': {layer name or '*': {id, columns, class}}")
    for name, lm in layers.items():
        if not isinstance(lm, dict):
            raise InputError(f"mapping of layer '{name}' must be an object")
        if not isinstance(lm.get("id"), str):
            raise InputError(f"mapping of layer '{name}' needs 'id': the column holding the source id")
        if "class" not in lm:
            raise InputError(f"mapping of layer '{name}' needs 'class': a code, {{field, map}} or {{rules}}")
        for k in (lm.get("columns") or {}):
            if k not in la.EDITABLE or k in ("class_code", "source"):
                raise InputError(f"mapping of layer '{name}': unknown asset field '{k}' in columns")
    return m


def _classify(df: pd.DataFrame, spec, layer: str) -> np.ndarray:
    n = len(df)
    out = np.full(n, None, dtype=object)
    if isinstance(spec, str):
        out[:] = spec
        return out
    if isinstance(spec, dict) and "field" in spec:
        col = spec["field"]
        if col not in df.columns:
            raise InputError(f"layer '{layer}': class field '{col}' is not a column")
        mp = {str(k): str(v) for k, v in (spec.get("map") or {}).items()}
        vals = df[col].astype("string").fillna("")
        return np.array([mp.get(v) for v in vals], dtype=object)
    if isinstance(spec, dict) and "rules" in spec:
        for rule in spec["rules"]:
            where, code = rule.get("where") or {}, rule.get("class")
            mask = np.ones(n, bool)
            for col, want in where.items():
                if col not in df.columns:
                    raise InputError(f"layer '{layer}': rule column '{col}' is not a column")
                wants = [str(w) for w in (want if isinstance(want, list) else [want])]
                mask &= df[col].astype("string").fillna("\x00").isin(wants).to_numpy()
            out[mask & (out == None)] = str(code)  # noqa: E711
        return out
    raise InputError(f"layer '{layer}': class must be a code, {{field, map}} or {{rules: [...]}}")


# --- reading --------------------------------------------------------------------------------------

def _read_csv(path: Path, lm: dict, layer: str):
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(f"cannot read the CSV: {e}") from None
    g = lm.get("geometry") or {}
    if "wkt" in g:
        if g["wkt"] not in df.columns:
            raise InputError(f"CSV has no WKT column '{g['wkt']}'")
        geoms = []
        for v in df[g["wkt"]]:
            try:
                geoms.append(shapely.from_wkt(v) if v else None)
            except shapely.errors.GEOSException:
                geoms.append("bad")
        geoms = np.array(geoms, dtype=object)
    else:
        xc, yc = g.get("lon", g.get("x", "lon")), g.get("lat", g.get("y", "lat"))
        for c in (xc, yc):
            if c not in df.columns:
                raise InputError(f"CSV has no coordinate column '{c}': map 'geometry': {{lon, lat}} or {{wkt}}")
        x = pd.to_numeric(df[xc], errors="coerce").to_numpy(float)
        y = pd.to_numeric(df[yc], errors="coerce").to_numpy(float)
        geoms = np.array([None if not (np.isfinite(a) and np.isfinite(b)) else shapely.Point(a, b)
                          for a, b in zip(x, y, strict=True)], dtype=object)
    return df, geoms, None


def _read_layers(path: Path, mapping: dict):
    """Yield (layer name, mapping key, layer mapping, frame, geometry array, file CRS)."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"unsupported file type '{suffix or path.name}': use GeoPackage, zipped Shapefile, "
                         "GeoJSON, KML, FlatGeobuf or CSV")
    layers = mapping["layers"]
    if suffix == ".csv":
        lm = layers.get("*") or next(iter(layers.values()))
        df, geoms, crs = _read_csv(path, lm, "*")
        yield "*", "*", lm, df, geoms, crs
        return
    with opened(path) as p:
        try:
            present = [str(r[0]) for r in pyogrio.list_layers(p)]
        except Exception as e:
            raise InputError(f"cannot read '{path.name}' as a GIS file: {e}") from None
        wanted = [(name, name, lm) for name, lm in layers.items() if name != "*"]
        if "*" in layers:
            if len(present) != 1 and not wanted:
                raise InputError(f"the file has layers {', '.join(present)}: name them in the mapping")
            wanted.append((present[0], "*", layers["*"]))
        for name, _, _ in wanted:
            if name not in present:
                raise InputError(f"the file has no layer '{name}'; layers: {', '.join(present)}")
        for name, key, lm in wanted:
            try:
                df = pyogrio.read_dataframe(p, layer=name)
            except Exception as e:
                raise InputError(f"cannot read layer '{name}': {e}") from None
            if len(df) > MAX_ROWS:
                raise InputError(f"layer '{name}' has {len(df)} rows; at most {MAX_ROWS} per import")
            crs = None
            if df.crs is not None:
                epsg = df.crs.to_epsg(min_confidence=70)
                crs = f"EPSG:{epsg}" if epsg else "unknown"
            yield name, key, lm, pd.DataFrame(df.drop(columns=df.geometry.name)), np.asarray(df.geometry.values,
                                                                                       dtype=object), crs


# --- the import -----------------------------------------------------------------------------------

def _rep_points(geoms) -> np.ndarray:
    """Representative points as the database trigger computes them (the cell of an asset)."""
    dims = shapely.get_dimensions(geoms)
    reps = shapely.point_on_surface(geoms)
    lines = dims == 1
    if lines.any():
        first = shapely.get_geometry(geoms[lines], 0)
        reps[lines] = shapely.line_interpolate_point(shapely.line_merge(first), 0.5, normalized=True)
    return reps


def _str(v):
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def import_assets(conn: Connection, city: CityInfo, path, mapping, *, actor: str, atomic: bool = False,
                  crs: str | None = None, progress: bool = False, synthetic: bool = False) -> dict:
    """Import one file. Returns the report (dict). With ``atomic``, raises ImportRejected (writing
    nothing) when any row fails; otherwise writes the valid rows and lists the others."""
    path = Path(path)
    mapping = load_mapping(mapping)
    source = mapping["source"].strip()
    override = crs or mapping.get("crs")
    override = gcrs.parse_crs(override) if override else None
    cls = la.classes(conn, city, "component")
    grid = lgrid.snapper(conn, city)
    report = Report(file=path.name, source=source, atomic=atomic)
    staged: list[dict] = []
    for layer, mkey, lm, df, geoms, file_crs in _read_layers(path, mapping):
        n = len(df)
        report.layers[layer] = {"read": n, "created": 0, "updated": 0, "unchanged": 0, "rejected": 0}
        src = override or (file_crs if file_crs != "unknown" else None)
        if src is None:
            raise InputError(f"layer '{layer}' has no CRS{' EPSG code' if file_crs == 'unknown' else ''}: "
                             "give one with --crs or 'crs' in the mapping (EPSG:4326, EPSG:4490, GCJ-02, BD-09 …)")
        if lm["id"] not in df.columns:
            raise InputError(f"layer '{layer}' has no id column '{lm['id']}'; columns: "
                             f"{', '.join(map(str, df.columns[:30]))}")
        for k, col in (lm.get("columns") or {}).items():
            if col not in df.columns:
                raise InputError(f"layer '{layer}' has no column '{col}' (mapped to {k})")
        codes = _classify(df, lm["class"], layer)
        ids = [_str(v) for v in df[lm["id"]].tolist()]
        reasons = np.full(n, None, dtype=object)
        # geometry: present, parseable, valid lon/lat, valid, of the class's kind, inside the city
        ok_geom = np.array([g is not None and not isinstance(g, str) and not g.is_empty for g in geoms], bool)
        reasons[~ok_geom] = ["invalid geometry: not parseable" if isinstance(g, str) else "missing geometry"
                             for g in geoms[~ok_geom]]
        work = np.full(n, None, dtype=object)
        geographic = gcrs.is_geographic(src)
        types = np.array([g.geom_type if ok else None for g, ok in zip(geoms, ok_geom, strict=True)], dtype=object)
        unsupported = ok_geom & ~np.isin(types, list(la._KIND_OF_TYPE))
        reasons[unsupported] = [f"unsupported geometry type {t}" for t in types[unsupported]]
        ok_geom &= ~unsupported
        idx = np.flatnonzero(ok_geom)
        if len(idx):
            g = np.asarray(shapely.force_2d(geoms[idx]), dtype=object)
            if geographic:
                counts = shapely.get_num_coordinates(g)
                xy = shapely.get_coordinates(g)
                bad = gcrs.validate_lonlat(xy[:, 0], xy[:, 1])
                if bad is not None:
                    owner = np.repeat(np.arange(len(g)), counts)
                    for j in np.unique(owner[bad != None]):  # noqa: E711
                        first = np.flatnonzero((owner == j) & (bad != None))[0]  # noqa: E711
                        reasons[idx[j]] = f"invalid coordinate {tuple(np.round(xy[first], 6))}: {bad[first]}"
            keep = reasons[idx] == None  # noqa: E711
            idx = idx[keep]
            g = g[keep]
            if len(idx):
                w = np.asarray(gcrs.transform_geometry(g, src, city.working_crs), dtype=object)
                valid = shapely.is_valid(w)
                for j in np.flatnonzero(~valid):
                    reasons[idx[j]] = f"invalid geometry: {shapely.is_valid_reason(w[j])}"
                idx, w = idx[valid], w[valid]
                if len(idx):
                    reps = _rep_points(w)
                    cell = grid.locate(shapely.get_x(reps), shapely.get_y(reps))
                    reasons[idx[cell < 0]] = "outside the city"
                    work[idx] = w
        seen: dict[str, int] = {}
        lc = {k: v for k, v in (lm.get("columns") or {}).items()}
        defaults = lm.get("defaults") or {}
        col_values = {k: df[c].tolist() for k, c in lc.items()}
        for i in range(n):
            sid = ids[i]
            code = codes[i]
            if reasons[i] is None:
                if sid is None or sid == "":
                    reasons[i] = "missing source id"
                elif len(sid) > 100:
                    reasons[i] = "source id longer than 100 characters"
                elif sid in seen:
                    reasons[i] = f"duplicate source id (first at row {seen[sid]})"
                elif code is None:
                    reasons[i] = "unknown class: no mapping rule matches"
                elif code not in cls or len(code) != 4:
                    reasons[i] = f"unknown class '{code}' (not in the catalog)"
                else:
                    kind = la._KIND_OF_TYPE[work[i].geom_type]
                    want = cls[code]["geom_kind"]
                    if want not in ("any", kind):
                        reasons[i] = f"class {code} {cls[code]['name']} takes {want} geometries, not {kind}"
            if sid is not None and sid not in seen:
                seen[sid] = i
            if reasons[i] is None:
                raw = {**defaults, **{k: _str(col_values[k][i]) for k in lc}}
                try:
                    vals = la.clean_values(raw)
                except InputError as e:
                    reasons[i] = str(e)
                else:
                    key = source if mkey == "*" else f"{source}:{layer}"
                    staged.append({"layer": layer, "row": i, "source": key, "source_id": sid, "class_code": code,
                                   "vals": vals, "geom": work[i]})
                    report.by_class[code] = report.by_class.get(code, 0) + 1
                    continue
            report.reject(layer, i, sid, reasons[i])
    rejected = sum(v["rejected"] for v in report.layers.values())
    if atomic and rejected:
        report.written = False
        report.by_class = {}
        first = "; ".join(f"{r['layer']} row {r['row']}: {r['reason']}" for r in report.rejected[:3])
        raise ImportRejected(f"{rejected} row(s) failed and --atomic is set: nothing was written ({first})",
                             report.as_dict())
    write_rows(conn, city, staged, actor=actor, report=report, progress=progress, synthetic=synthetic)
    return report.as_dict()


_FIELDS = ("class_code", "name", "status", "dept_code1", "dept_code2", "dept_code3", "installed_on", "photo", "note")


def write_rows(conn: Connection, city: CityInfo, staged: list[dict], *, actor: str, report: Report | None = None,
               progress: bool = False, synthetic: bool = False, chunk: int = 2000) -> None:
    """Insert new rows and update changed ones (matched on source + source id), with history."""
    from tqdm import tqdm

    bar = tqdm(total=len(staged), unit="row", desc="import", disable=not progress, file=sys.stderr)
    for start in range(0, len(staged), chunk):
        part = staged[start:start + chunk]
        keys = {(r["source"], r["source_id"]) for r in part}
        existing = {}
        if keys:
            rows = conn.execute(text(f"""
                SELECT a.source, a.source_id, a.id, {', '.join('a.' + f for f in _FIELDS)}, ST_AsBinary(a.geom)
                FROM asset a JOIN unnest(CAST(:s AS text[]), CAST(:i AS text[])) k(s, i)
                  ON a.city_id = :c AND a.source = k.s AND a.source_id = k.i"""),
                {"c": city.id, "s": [k[0] for k in keys], "i": [k[1] for k in keys]}).all()
            existing = {(r[0], r[1]): r for r in rows}
        new, upd, hist_upd = [], [], []
        for r in part:
            full = {f: r["vals"].get(f) for f in _FIELDS}
            full["class_code"] = r["class_code"]
            full["status"] = full["status"] or "完好"
            old = existing.get((r["source"], r["source_id"]))
            wkb = shapely.to_wkb(shapely.set_srid(r["geom"], city.srid), hex=True, include_srid=True)
            if old is None:
                new.append({**full, "source": r["source"], "source_id": r["source_id"], "wkb": wkb, "layer": r["layer"]})
                continue
            oldvals = dict(zip(_FIELDS, old[3:3 + len(_FIELDS)], strict=True))
            changes = {f: [oldvals[f], full[f]] for f in _FIELDS if oldvals[f] != full[f] and f != "status"
                       or (f == "status" and r["vals"].get("status") and oldvals[f] != full[f])}
            old_geom = shapely.from_wkb(bytes(old[-1]))
            if not shapely.equals_exact(old_geom, r["geom"], 1e-6):
                changes["geometry"] = ["changed", "changed"]
            if changes:
                params = {f: full[f] for f in _FIELDS if f in changes}
                upd.append((old[2], params, wkb if "geometry" in changes else None))
                hist_upd.append({"a": old[2], "ch": json.dumps(changes, ensure_ascii=False, default=str)})
                if report:
                    report.layers[r["layer"]]["updated"] += 1
            elif report:
                report.layers[r["layer"]]["unchanged"] += 1
        # new rows: codes per class, then one executemany
        by_class: dict[str, list[dict]] = {}
        for r in new:
            by_class.setdefault(r["class_code"], []).append(r)
        for code, rows in by_class.items():
            for r, c in zip(rows, la.allocate_codes(conn, city, code, len(rows)), strict=True):
                r["code"] = c
        if new:
            conn.execute(text(f"""
                INSERT INTO asset (city_id, code, {', '.join(_FIELDS)}, source, source_id, synthetic, geom)
                VALUES (:city, :code, {', '.join(':' + f for f in _FIELDS)}, :source, :source_id, :synthetic,
                        ST_GeomFromEWKB(decode(:wkb, 'hex')))"""),
                [{**{k: v for k, v in r.items() if k != "layer"}, "city": city.id, "synthetic": synthetic}
                 for r in new])
            conn.execute(text("""
                INSERT INTO asset_history (asset_id, actor, action, changes)
                SELECT a.id, :who, 'import', jsonb_build_object('source', a.source, 'source_id', a.source_id)
                FROM asset a WHERE a.city_id = :c AND a.code = ANY(CAST(:codes AS text[]))"""),
                {"who": actor, "c": city.id, "codes": [r["code"] for r in new]})
            if report:
                for r in new:
                    report.layers[r["layer"]]["created"] += 1
        for aid, params, wkb in upd:
            sets = [f"{k} = :{k}" for k in params] + ["updated_at = now()", "version = version + 1"]
            if wkb:
                sets.append("geom = ST_GeomFromEWKB(decode(:wkb, 'hex'))")
            conn.execute(text(f"UPDATE asset SET {', '.join(sets)} WHERE id = :id"), {**params, "id": aid, "wkb": wkb})
        if hist_upd:
            conn.execute(text("INSERT INTO asset_history (asset_id, actor, action, changes) "
                              "VALUES (:a, :who, 'import', CAST(:ch AS jsonb))"),
                         [{**h, "who": actor} for h in hist_upd])
        bar.update(len(part))
    bar.close()


# --- the synthetic Haimen inventory ---------------------------------------------------------------

SYNTHETIC_SOURCE = "synthetic-demo 合成演示数据"
# class, share of points, name
_SYNTH = (("0101", 0.12, "上水井盖"), ("0102", 0.12, "污水井盖"), ("0103", 0.10, "雨水井盖"),
          ("0107", 0.22, "路灯"), ("0106", 0.05, "消防栓"), ("0201", 0.04, "公交站亭"),
          ("0302", 0.10, "果皮箱"), ("0301", 0.02, "公厕"), ("0401", 0.18, "行道树"), ("0403", 0.05, "座椅"))


def generate_synthetic_inventory(conn: Connection, city: CityInfo, n: int = 6000, seed: int = 12345,
                                 actor: str = "demo") -> dict:
    """A plausible SYNTHETIC inventory for the demo only (Haimen has no open facility data): points
    clustered around the street/town seats (denser in towns), every asset named 【合成】 and flagged
    ``synthetic``. Idempotent (re-running updates the same source ids). Returns the import counts."""
    rng = np.random.default_rng(seed)
    seats = conn.execute(text("""SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(geom) p FROM admin_area
                                 WHERE city_id = :c AND level = 'street' ORDER BY code) s"""),
                         {"c": city.id}).all()
    if not seats:
        seats = conn.execute(text("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(boundary) p FROM city "
                                  "WHERE id = :c) s"), {"c": city.id}).all()
    seats = np.array(seats, float)
    weights = np.ones(len(seats))
    weights[0] = 4.0  # the old town centre is the densest
    weights /= weights.sum()
    which = rng.choice(len(seats), size=n, p=weights)
    r = rng.gamma(2.0, 450.0, n)
    a = rng.uniform(0, 2 * np.pi, n)
    x = seats[which, 0] + r * np.cos(a)
    y = seats[which, 1] + r * np.sin(a)
    cls = rng.choice(len(_SYNTH), size=n, p=np.array([s[1] for s in _SYNTH]) / sum(s[1] for s in _SYNTH))
    grid = lgrid.snapper(conn, city)
    inside = grid.locate(x, y) >= 0
    status = rng.choice(["完好", "破损", "丢失", "占用"], size=n, p=[0.9, 0.06, 0.02, 0.02])
    staged = []
    for i in np.flatnonzero(inside):
        code, _, name = _SYNTH[cls[i]]
        staged.append({"layer": "synthetic", "row": int(i), "source": SYNTHETIC_SOURCE, "source_id": f"S{i:06d}",
                       "class_code": code, "geom": shapely.Point(x[i], y[i]),
                       "vals": {"name": f"【合成 synthetic】{name} {i:05d}", "status": str(status[i]),
                                "note": "合成演示数据，非真实设施 synthetic demo data, not a real facility"}})
    report = Report(file="(generated)", source=SYNTHETIC_SOURCE)
    report.layers["synthetic"] = {"read": n, "created": 0, "updated": 0, "unchanged": 0, "rejected": int((~inside).sum())}
    write_rows(conn, city, staged, actor=actor, report=report, synthetic=True)
    return report.as_dict()


# --- command line ---------------------------------------------------------------------------------

def main_import_assets(argv: list[str] | None = None) -> int:
    """``citygrid import assets FILE --mapping M [--city C] [--crs CRS] [--atomic] [--report R]``."""
    ap = argparse.ArgumentParser(prog="citygrid import assets",
                                 description="导入部件 Import assets from a GIS file with a mapping file")
    ap.add_argument("file")
    ap.add_argument("--mapping", required=True, help="JSON mapping file (columns, class rules, source name)")
    ap.add_argument("--city", default=None, help="city slug (default: the configured city)")
    ap.add_argument("--crs", help="the file's CRS when it has none or it is wrong: EPSG:4326, GCJ-02, BD-09 …")
    ap.add_argument("--atomic", action="store_true", help="write nothing unless every row passes")
    ap.add_argument("--report", help="write the full report (JSON) to this file")
    ap.add_argument("--actor", default="cli", help="who imports (recorded in the history)")
    args = ap.parse_args(argv)

    from citygrid import settings
    from citygrid.dbcluster import database_url
    from layers.core import city as lcity
    from layers.core.db import make_engine

    engine = make_engine(database_url(), pool_size=1)
    try:
        with engine.begin() as conn:
            city = lcity.get_city(conn, args.city or settings.api().default_city)
            report = import_assets(conn, city, args.file, args.mapping, actor=args.actor, atomic=args.atomic,
                                   crs=args.crs, progress=True)
    except ImportRejected as e:
        report = e.report
        print(f"citygrid: {e}", file=sys.stderr)
        _print_report(report, args.report)
        return 1
    except InputError as e:
        print(f"citygrid: {e}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    _print_report(report, args.report)
    return 0


def _print_report(report: dict, path: str | None) -> None:
    t = report["totals"]
    print(f"{report['file']} → source '{report['source']}': read {t['read']}, created {t['created']}, "
          f"updated {t['updated']}, unchanged {t['unchanged']}, rejected {t['rejected']}"
          + ("" if report["written"] else " — NOTHING WRITTEN (--atomic)"))
    for name, c in report["layers"].items():
        print(f"  layer {name}: {c}")
    if report["by_class"]:
        print("  by class: " + ", ".join(f"{k}={v}" for k, v in report["by_class"].items()))
    reasons: dict[str, int] = {}
    for r in report["rejected"]:
        key = r["reason"].split(" (first at")[0]
        reasons[key] = reasons.get(key, 0) + 1
    for reason, k in sorted(reasons.items(), key=lambda kv: -kv[1]):
        print(f"  rejected ×{k}: {reason}")
    if path:
        Path(path).write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"  full report: {path}")
