"""Inspector reports with photo evidence: location rules, EXIF, accuracy gate, snapping to cell and
asset, idempotent and atomic intake, joined to the one case workflow (layers/workflow.open_case).

Location rule
-------------
* The device location (lon/lat in WGS-84, CGCS2000, GCJ-02 or BD-09, with its accuracy) is used when
  sent. Each photo's EXIF position (when its status is ``ok``) only corroborates it: the distance is
  stored per photo and the largest on the report; above ``exif_mismatch_m`` (+ the reported
  accuracy) the report is flagged ``exif_device_mismatch``.
* With no device location, the first photo with a usable EXIF position gives it
  (``location_source = 'exif'``); with neither, the report is refused (422).
* The accuracy gate (``accuracy_gate_m``) is recorded on every report: above it the report is kept
  and flagged ``accuracy_over_gate``; an accuracy beyond ``accuracy_max_m`` says nothing about the
  place and is refused.
* The point is snapped to the active grid's cell; outside the city → 422. An asset problem (a
  component class) is snapped to the nearest asset of that class within ``asset_tolerance_m``, or
  to the asset named in the report; the report says which and how far.

Photo rule (see gis.photos and gis.exif): a photo whose bytes are not an accepted image type, that
exceeds the size or pixel limit, or that does not decode fully is refused with its index and the
reason, and the whole report with it (nothing is written). A photo whose EXIF is missing or broken is
accepted; its EXIF status and flags are stored and returned.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely
from PIL import Image
from sqlalchemy import Connection, text

from gis import crs as gcrs
from gis import exif as gexif
from gis import photos as gphotos
from layers.cases import calendar as lcal
from layers.cases import workflow as lwf
from layers.core.city import CityInfo
from layers.core.errors import Conflict, InputError, NotFound
from layers.field.photostore import PhotoStore, Staged

DATA = Path(__file__).resolve().parent / "data"
KEY_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,100}$")


@lru_cache
def config() -> dict:
    cfg = json.loads((DATA / "config.json").read_text(encoding="utf-8"))
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


# -- photos (pure: no database) ----------------------------------------------------------------

@dataclass
class Photo:
    """A photo checked and rendered, ready to be stored."""

    seq: int
    name: str
    data: bytes
    sha256: str
    media_type: str
    width: int
    height: int
    public: bytes
    public_sha256: str
    thumb: bytes
    thumb_sha256: str
    exif: gexif.ExifResult
    exif_distance_m: float | None = None


#: sniffed image type -> media type of the original file (public copies and thumbnails are JPEG)
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "heic": "image/heic",
               "heif": "image/heif", "avif": "image/avif"}


def photo_label(i: int, name: str | None) -> str:
    safe = re.sub(r"[^\w.\- ]", "_", (name or ""))[:60]
    return f"photos[{i}]" + (f" ({safe})" if safe else "")


def prepare_photo(i: int, name: str | None, data: bytes, cfg: dict | None = None) -> Photo:
    """Check one photo (type from bytes, size, bomb guard, full decode), read its EXIF, render the
    public copy and thumbnail. InputError naming the photo when it is refused."""
    cfg = cfg or config()
    label = photo_label(i, name)
    if not data:
        raise InputError(f"{label} is empty")
    if len(data) > cfg["max_photo_bytes"]:
        raise InputError(f"{label} is {len(data):,} bytes; at most {cfg['max_photo_bytes']:,} bytes per photo")
    kind = gphotos.sniff_image_type(data)
    if kind not in gphotos.ACCEPTED_TYPES:
        what = f"a {kind.upper()} image" if kind else "not a recognised image"
        raise InputError(f"{label} is {what}: send JPEG, PNG, WebP or HEIC photos")
    try:
        public = gphotos.public_copy(data, max_pixels=cfg["max_pixels"])
        thumb = gphotos.thumbnail(public, max_pixels=cfg["max_pixels"])
    except gphotos.PhotoError as e:
        raise InputError(f"{label} refused: {e}") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Exception:  # noqa: BLE001 - decoded above; a header oddity only loses the size
        width = height = 0
    ex = gexif.read_exif(data)
    return Photo(i, name or "", data, gphotos.sha256_hex(data), kind, width, height, public,
                 gphotos.sha256_hex(public), thumb, gphotos.sha256_hex(thumb), ex)


# -- input ------------------------------------------------------------------------------------

@dataclass
class ReportInput:
    category_code: str
    description: str | None = None
    lon: float | None = None
    lat: float | None = None
    accuracy_m: float | None = None
    crs: str = "EPSG:4326"
    device_time: str | None = None
    asset_code: str | None = None
    address: str | None = None
    extra_flags: list[str] = field(default_factory=list)

    def canonical(self) -> dict:
        return {"category_code": self.category_code, "description": self.description, "lon": self.lon,
                "lat": self.lat, "accuracy_m": self.accuracy_m, "crs": self.crs, "device_time": self.device_time,
                "asset_code": self.asset_code, "address": self.address,
                **({"flags": sorted(self.extra_flags)} if self.extra_flags else {})}


def check_key(key: str | None) -> str:
    """The Idempotency-Key, or a fresh one when the client sent none."""
    if key is None or key == "":
        return "srv-" + uuid.uuid4().hex
    if not KEY_RE.match(key):
        raise InputError("Idempotency-Key must be 1 to 100 characters of letters, digits and . _ : -")
    return key


def digest_request(fields: dict, photo_bytes: list[bytes]) -> str:
    """What a retry with the same Idempotency-Key must repeat: the fields and the photos' digests
    (cheap: no decoding). Shared by reports and on-site verifications."""
    h = hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str).encode())
    for b in photo_bytes:
        h.update(hashlib.sha256(b).digest())
    return h.hexdigest()


def request_hash(inp: ReportInput, photo_bytes: list[bytes]) -> str:
    return digest_request(inp.canonical(), photo_bytes)


def finite_number(name: str, v) -> float | None:
    """A form or JSON value as a finite float (None when absent or blank); InputError naming it."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InputError(f"{name} '{str(v)[:40]}' is not a number") from None
    if not math.isfinite(f):
        raise InputError(f"{name} is not a finite number")
    return f


def parse_device_time(s: str | None) -> dt.datetime | None:
    if s is None or not str(s).strip():
        return None
    raw = str(s).strip()
    try:
        if re.fullmatch(r"\d{10,13}(\.\d+)?", raw):  # epoch seconds or milliseconds
            v = float(raw)
            t = dt.datetime.fromtimestamp(v / 1000 if v > 1e11 else v, dt.UTC)
        else:
            t = dt.datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise InputError(f"device_time '{raw[:40]}' is not an ISO 8601 time or epoch seconds") from None
    if t.tzinfo is None:
        t = lcal.calendar().local(t)
    return t


# -- lookups ----------------------------------------------------------------------------------

#: the tables that keep a first answer per (user, Idempotency-Key), and what their rows are called
IDEMPOTENT = {"field_report": "report", "case_verification": "verification"}


def find_existing(conn: Connection, user_id: int, key: str, req_hash: str, table: str = "field_report") -> dict | None:
    """The first answer of an upload with this key, or None. Conflict when the key was used for a
    different request."""
    what = IDEMPOTENT[table]
    row = conn.execute(text(f"SELECT request_hash, response FROM {table} WHERE user_id = :u AND idempotency_key = :k"),
                       {"u": user_id, "k": key}).first()
    if row is None or row[1] is None:
        return None
    if row[0] != req_hash:
        raise Conflict(f"Idempotency-Key '{key}' was used already for a different {what}: use a new key")
    return row[1]


_ASSETS_TABLE: list[bool] = []


def _has_assets(conn: Connection) -> bool:
    """Whether the asset registry exists (asked once per process; it does not go away)."""
    if not _ASSETS_TABLE:
        if not conn.execute(text("SELECT to_regclass('asset') IS NOT NULL")).scalar_one():
            return False
        _ASSETS_TABLE.append(True)
    return True


def snap_asset(conn: Connection, city: CityInfo, category_code: str, point, asset_code: str | None,
               tolerance_m: float) -> dict | None:
    """The asset a component problem concerns: the one named, else the nearest of its class within
    the tolerance. Returns {id, code, class_code, distance_m, x, y (closest point)} or None."""
    item = lwf.category(category_code)
    if item.get("kind") != "component" or not _has_assets(conn):
        if asset_code:
            raise InputError(f"asset_code is given but '{category_code}' is not a component (部件) class"
                             if item.get("kind") != "component" else "this installation has no asset registry")
        return None
    cls = category_code[:4]
    params = {"c": city.id, "x": float(point.x), "y": float(point.y), "srid": city.srid, "cls": cls,
              "tol": tolerance_m}
    sel = """SELECT id, code, class_code, ST_Distance(geom, p.g), ST_X(ST_ClosestPoint(geom, p.g)),
                    ST_Y(ST_ClosestPoint(geom, p.g))
             FROM asset, (SELECT ST_SetSRID(ST_MakePoint(:x, :y), :srid) AS g) p
             WHERE city_id = :c AND retired_at IS NULL"""
    if asset_code:
        row = conn.execute(text(sel + " AND code = :code"), {**params, "code": asset_code.strip()}).first()
        if row is None:
            raise InputError(f"no asset '{asset_code}' in this city (retired assets cannot be reported)")
        if row[2] != cls:
            raise InputError(f"asset '{asset_code}' is of class {row[2]}, the category {category_code} needs class {cls}")
    else:
        row = conn.execute(text(sel + " AND class_code = :cls AND ST_DWithin(geom, p.g, :tol) "
                                      "ORDER BY geom <-> p.g, id LIMIT 1"), params).first()
        if row is None:
            return None
    return {"id": int(row[0]), "code": row[1], "class_code": row[2], "distance_m": round(float(row[3]), 2),
            "x": float(row[4]), "y": float(row[5]), "named": bool(asset_code)}


# -- submit ----------------------------------------------------------------------------------

def _photo_urls(report_id: int, seq: int) -> dict:
    base = f"/api/v1/reports/{report_id}/photos/{seq}"
    return {"public_url": base + "/public", "thumb_url": base + "/thumb"}


@dataclass
class Located:
    """Where a report is and what its location says of it: the device's fix (or a photo's EXIF),
    checked, in the working CRS, with its flags."""

    item: dict
    lon: float | None
    lat: float | None
    accuracy_m: float | None
    crs: str
    location_source: str
    device_pt: shapely.Point
    exif_distance_m: float | None
    gate: float
    accuracy_ok: bool | None
    now: dt.datetime
    device_time: dt.datetime | None
    flags: list[str]
    device_cell: tuple[int, str]  # (cell id, code) of device_pt


def locate_report(city: CityInfo, grid, inp: ReportInput, photos: list[Photo], *, min_photos: int = 1,
                  cfg: dict | None = None) -> Located:
    """Validate a report and place it (the rules in this module's docstring). Pure: no database;
    ``grid`` is the city's loaded grid (layers.core.grid.snapper). InputError (→ 422) when it is refused,
    including a point outside the city."""
    cfg = cfg or config()
    item = lwf.category(inp.category_code)
    if not min_photos <= len(photos) <= cfg["max_photos"]:
        raise InputError(f"{len(photos)} photos: send {min_photos} to {cfg['max_photos']} photos")
    if inp.description is not None and len(inp.description) > 5000:
        raise InputError("description is longer than 5000 characters")
    if inp.address is not None and len(inp.address) > 500:
        raise InputError("address is longer than 500 characters")
    flags: list[str] = list(inp.extra_flags)
    if not photos:
        flags.append("no_photos")

    # Where: the device, else EXIF.
    num = finite_number
    lon, lat, acc = num("lon", inp.lon), num("lat", inp.lat), num("accuracy_m", inp.accuracy_m)
    src = gcrs.parse_crs(inp.crs or "EPSG:4326")
    if not (gcrs.is_geographic(src) or src in (gcrs.GCJ02, gcrs.BD09)):
        raise InputError(f"crs {src}: the device location must be lon/lat in WGS-84, CGCS2000, GCJ-02 or BD-09")
    if (lon is None) != (lat is None):
        raise InputError("send both lon and lat, or neither (then a photo's EXIF position is used)")
    if acc is not None and acc < 0:
        raise InputError("accuracy_m must not be negative")
    if acc is not None and acc > cfg["accuracy_max_m"]:
        raise InputError(f"accuracy {acc:g} m is beyond {cfg['accuracy_max_m']} m: the fix says nothing about the "
                         "place; wait for a better fix or leave the location out to use the photos' EXIF")
    if lon is not None:
        bad = gcrs.validate_lonlat(lon, lat)
        if bad is not None:
            raise InputError(f"location ({lon}, {lat}) is not a valid lon/lat: {bad.reshape(-1)[0]}")
        wx, wy = gcrs.transform_xy(np.array([lon]), np.array([lat]), src, "EPSG:4326")
        device_wgs = (float(wx[0]), float(wy[0]))
        location_source = "device"
    else:
        first = next((p for p in photos if p.exif.has_position), None)
        if first is None:
            why = "; ".join(f"photos[{p.seq}]: {p.exif.status} ({', '.join(p.exif.flags) or 'no flags'})"
                            for p in photos)
            raise InputError("no location: the device sent none and no photo has a usable EXIF GPS position — " + why)
        device_wgs = (first.exif.lon, first.exif.lat)
        location_source = "exif"
        flags.append("location_from_exif")

    # EXIF corroboration.
    dists = []
    for p in photos:
        if p.exif.has_position:
            p.exif_distance_m = round(gexif.distance_m(device_wgs[0], device_wgs[1], p.exif.lon, p.exif.lat), 2)
            dists.append(p.exif_distance_m)
            if location_source == "device" and gexif.mismatch_flag((*device_wgs, acc), p.exif, cfg["exif_mismatch_m"]):
                if "exif_device_mismatch" not in flags:
                    flags.append("exif_device_mismatch")

    gate = float(cfg["accuracy_gate_m"])
    accuracy_ok = None if acc is None else acc <= gate
    if acc is None:
        flags.append("accuracy_unknown")
    elif not accuracy_ok:
        flags.append("accuracy_over_gate")

    now = lcal.now()
    device_time = parse_device_time(inp.device_time)
    if device_time is not None and abs((device_time - now).total_seconds()) > cfg["device_time_skew_s"]:
        flags.append("device_time_skew")

    wx, wy = gcrs.transform_xy(np.array([device_wgs[0]]), np.array([device_wgs[1]]), "EPSG:4326", city.working_crs)
    device_pt = shapely.Point(float(wx[0]), float(wy[0]))
    cell = lwf.snap_one(None, city, device_pt, grid)  # outside the city → InputError before anything is written
    return Located(item, lon, lat, acc, src, location_source, device_pt, max(dists) if dists else None, gate,
                   accuracy_ok, now, device_time, flags, cell)


def needs_asset_lookup(inp: ReportInput) -> bool:
    """Whether placing the report asks the asset registry (a component class, or an asset named)."""
    return bool(inp.asset_code) or lwf.category(inp.category_code).get("kind") == "component"


def plan_report(city: CityInfo, grid, loc: Located, inp: ReportInput, asset: dict | None, key: str,
                req_hash: str) -> dict:
    """The input of the database function ``cg_file_report`` (migration 0012): the report row, the
    case it opens (layers.cases.workflow.plan_case) and the answer without its ids. Pure."""
    cfg = config()
    flags = list(loc.flags)
    point, source = loc.device_pt, loc.location_source
    if asset is not None:
        point, source = shapely.Point(asset["x"], asset["y"]), "asset"
        if asset["named"] and asset["distance_m"] > cfg["asset_tolerance_m"]:
            flags.append("asset_far")
    cell_id, cell_code = loc.device_cell if asset is None else lwf.snap_one(None, city, point, grid)
    case = lwf.plan_case(city, grid, source="inspector", channel="督查员", category_code=loc.item["code"],
                         received_at=loc.now, location=point, description=inp.description, address=inp.address,
                         asset_id=asset["id"] if asset else None, location_source=source,
                         location_accuracy_m=loc.accuracy_m, cell=(cell_id, cell_code))
    out_lon, out_lat = gcrs.transform_xy(np.array([point.x]), np.array([point.y]), city.working_crs, "EPSG:4326")
    result = {
        "idempotency_key": key, "received_at": loc.now.isoformat(), "category_code": loc.item["code"],
        "category_name": loc.item["name"], "cell_code": cell_code,
        "location": {"lon": round(float(out_lon[0]), 7), "lat": round(float(out_lat[0]), 7), "crs": "EPSG:4326",
                     "source": source, "device_source": loc.location_source, "accuracy_m": loc.accuracy_m,
                     "accuracy_gate_m": loc.gate, "accuracy_ok": loc.accuracy_ok},
        "device_time": loc.device_time.isoformat() if loc.device_time else None,
        "exif_distance_m": loc.exif_distance_m,
        "asset": None if asset is None else {k: asset[k] for k in ("code", "class_code", "distance_m", "named")},
        "flags": flags,
        "photos": [],
    }
    report = {
        "city_id": city.id, "idempotency_key": key, "request_hash": req_hash, "category_code": loc.item["code"],
        "description": inp.description, "device_time": loc.device_time.isoformat() if loc.device_time else None,
        "received_at": loc.now.isoformat(), "input_lon": loc.lon, "input_lat": loc.lat,
        "input_crs": loc.crs if loc.lon is not None else None, "accuracy_m": loc.accuracy_m,
        "accuracy_gate_m": loc.gate, "accuracy_ok": loc.accuracy_ok, "location_source": source,
        "dx": loc.device_pt.x, "dy": loc.device_pt.y, "x": point.x, "y": point.y,
        "exif_distance_m": loc.exif_distance_m, "cell_id": cell_id, "cell_code": cell_code,
        "asset_id": asset["id"] if asset else None, "asset_code": asset["code"] if asset else None,
        "asset_distance_m": asset["distance_m"] if asset else None, "flags": flags,
    }
    return {"report": report, "case": case.params, "result": result, "grid_id": grid.info.id,
            "grid_version": grid.info.version}


class GridChanged(Exception):
    """The grid a report was snapped with is no longer the city's active grid: snap again."""


def report_outcome(out: dict) -> tuple[dict, bool]:
    """(result, created) from the answer of ``cg_file_report``; Conflict for a reused key,
    GridChanged when the grid changed under the report."""
    status = out["status"]
    if status == 410:
        raise GridChanged(out["message"])
    if status == 409:
        raise Conflict(out["message"])
    return out["result"], status == 201


def submit_report(conn: Connection, city: CityInfo, user, inp: ReportInput, photos: list[Photo], key: str,
                  req_hash: str, store: PhotoStore, staged: Staged, *, min_photos: int = 1) -> tuple[dict, bool]:
    """Record a report and open (or merge) its case. Returns (result, created).

    The caller commits, then promotes ``staged``; on any error it discards ``staged``. A concurrent
    request with the same key blocks on the unique (user, key) until this transaction ends, then
    gets this result (created False).
    """
    from layers.core import grid as lgrid

    cfg = config()
    for _attempt in range(3):
        grid = lgrid.snapper(conn, city)
        loc = locate_report(city, grid, inp, photos, min_photos=min_photos, cfg=cfg)
        asset = snap_asset(conn, city, loc.item["code"], loc.device_pt, inp.asset_code, float(cfg["asset_tolerance_m"]))
        params = plan_report(city, grid, loc, inp, asset, key, req_hash)
        params.update(user_id=user.id, user_role=user.role)
        out = conn.execute(text("SELECT cg_file_report(CAST(:p AS jsonb))"),
                           {"p": json.dumps(params, ensure_ascii=False)}).scalar_one()
        try:
            result, created = report_outcome(out)
            break
        except GridChanged:
            continue
    else:  # pragma: no cover - the grid changed three times during one report
        raise Conflict("the city's grid is being replaced: retry the report")
    if not created or not photos:
        return result, created

    rid = result["id"]
    store.claim(conn)
    photo_out = []
    for p in photos:
        conn.execute(text("""
            INSERT INTO field_photo (report_id, seq, sha256, public_sha256, thumb_sha256, media_type, size_bytes,
                width, height, exif_status, exif_lon, exif_lat, exif_time, exif_direction, exif_distance_m, flags)
            VALUES (:r, :seq, :sha, :psha, :tsha, :mt, :size, :w, :h, :st, :elon, :elat, :etime, :edir, :edist,
                    :flags)"""),
            dict(r=rid, seq=p.seq, sha=p.sha256, psha=p.public_sha256, tsha=p.thumb_sha256, mt=p.media_type,
                 size=len(p.data), w=p.width, h=p.height, st=p.exif.status, elon=p.exif.lon, elat=p.exif.lat,
                 etime=p.exif.timestamp.isoformat() if p.exif.timestamp else None, edir=p.exif.direction,
                 edist=p.exif_distance_m, flags=p.exif.flags))
        store.stage(staged, "original", p.sha256, p.data)
        store.stage(staged, "public", p.public_sha256, p.public)
        store.stage(staged, "thumb", p.thumb_sha256, p.thumb)
        photo_out.append({"seq": p.seq, "sha256": p.sha256, "media_type": p.media_type, "size_bytes": len(p.data),
                          "width": p.width, "height": p.height, "exif_status": p.exif.status,
                          "exif_flags": p.exif.flags, "exif_lon": p.exif.lon, "exif_lat": p.exif.lat,
                          "exif_time": p.exif.timestamp.isoformat() if p.exif.timestamp else None,
                          "exif_direction": p.exif.direction, "exif_distance_m": p.exif_distance_m,
                          **_photo_urls(rid, p.seq)})
    result = {**result, "photos": photo_out}
    conn.execute(text("UPDATE field_report SET response = CAST(:r AS jsonb) WHERE id = :i"),
                 {"r": json.dumps(result, ensure_ascii=False), "i": rid})
    return result, True


# -- reading ---------------------------------------------------------------------------------

def get_report(conn: Connection, city: CityInfo, report_id: int, user) -> dict:
    row = conn.execute(text("SELECT user_id, response FROM field_report WHERE id = :i AND city_id = :c"),
                       {"i": report_id, "c": city.id}).first()
    if row is None or row[1] is None:
        raise NotFound(f"no report {report_id} in {city.slug}")
    if user.role == "inspector" and row[0] != user.id:
        raise lwf.Forbidden(f"report {report_id} was filed by another inspector")
    out = dict(row[1])
    case = conn.execute(text("SELECT state, merged_into FROM case_file WHERE id = :i"),
                        {"i": out["case"]["id"]}).first()
    if case:
        out["case"] = {**out["case"], "state": case[0], "merged_into": case[1]}
    return out


def list_reports(conn: Connection, city: CityInfo, user, *, mine: bool = False, limit: int = 100,
                 offset: int = 0) -> dict:
    own = user.role == "inspector" or mine
    rows = conn.execute(text("""
        SELECT r.id, r.received_at, r.category_code, r.cell_code, r.flags, r.accuracy_m, r.location_source,
               c.case_no, c.state, c.merged_into,
               ST_X(ST_Transform(r.location, 4326)), ST_Y(ST_Transform(r.location, 4326))
        FROM field_report r LEFT JOIN case_file c ON c.id = r.case_id
        WHERE r.city_id = :c AND r.response IS NOT NULL AND (NOT :own OR r.user_id = :u)
        ORDER BY r.received_at DESC, r.id DESC LIMIT :lim OFFSET :off"""),
        {"c": city.id, "own": own, "u": user.id, "lim": limit, "off": offset}).all()
    return {"reports": [{"id": r[0], "received_at": r[1].isoformat(), "category_code": r[2], "cell_code": r[3],
                         "flags": list(r[4]), "accuracy_m": r[5], "location_source": r[6], "case_no": r[7],
                         "case_state": r[8], "merged_into": r[9], "lon": round(r[10], 7), "lat": round(r[11], 7)}
                        for r in rows]}


def photo_file(conn: Connection, city: CityInfo, report_id: int, seq: int, variant: str, user,
               store: PhotoStore) -> tuple[bytes, str]:
    """(bytes, media type) of a photo. The original is private: its inspector, supervisors, admins."""
    if variant not in ("public", "thumb", "original"):
        raise InputError("variant must be public, thumb or original")
    row = conn.execute(text("""
        SELECT p.sha256, p.public_sha256, p.thumb_sha256, p.media_type, r.user_id FROM field_photo p
        JOIN field_report r ON r.id = p.report_id WHERE r.id = :r AND r.city_id = :c AND p.seq = :s"""),
        {"r": report_id, "c": city.id, "s": seq}).first()
    if row is None:
        raise NotFound(f"no photo {seq} of report {report_id}")
    if variant == "original" and not (user.role in ("supervisor", "admin") or user.id == row[4]):
        raise lwf.Forbidden("the original photo is private: only its inspector, supervisors and admins")
    sha = {"original": row[0], "public": row[1], "thumb": row[2]}[variant]
    kind = {"original": "original", "public": "public", "thumb": "thumb"}[variant]
    try:
        data = store.read(kind, sha)
    except FileNotFoundError:
        raise NotFound(f"the {variant} file of photo {seq} of report {report_id} is missing") from None
    return data, (MEDIA_TYPES.get(row[3], "application/octet-stream") if variant == "original" else "image/jpeg")
