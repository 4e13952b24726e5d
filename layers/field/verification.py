"""On-site verification (核查) with photos: an inspector checks a department's work on a case in state
'verifying' and passes it (verify_ok → 反馈 Handled, ready to close) or fails it (verify_fail → 返工,
back to the department; a reason is required).

What is reused, not repeated here: photos are checked and rendered by ``layers.field.reports.prepare_photo``
(type from the bytes, size, decompression-bomb guard, full decode, EXIF, public copy, thumbnail);
the files go to a content-addressed ``layers.field.photostore.PhotoStore`` (stage → commit → promote); the
state change is ``layers.cases.workflow.transition`` (role, area and state gates, deadlines, rework count),
whose event's ``photos`` are the URLs of the stored public copies.

Position rule: the inspector's position (lon/lat in WGS-84, CGCS2000, GCJ-02 or BD-09, with its
accuracy) is optional; when sent, its distance from the case's location is stored and the check is
flagged ``far_from_case`` when it exceeds ``FAR_M`` plus the fix's accuracy (the tolerance of the
EXIF/device check of reports): the check is kept — a supervisor decides — but it says the inspector
was probably not there. A photo whose EXIF position is farther than ``FAR_M`` from the case flags
``exif_far_from_case``. No position: ``no_position``; accuracy above the reports' gate:
``accuracy_over_gate``; beyond ``accuracy_max_m`` the fix says nothing and is refused.

Photo files of verifications live in their own store (``<data_dir>/verification_photos``): the
report store's start-up recovery deletes every file ``field_photo`` does not refer to, so a shared
store would lose these. :func:`recover` does the same clean-up for this store and this table.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, text

from gis import crs as gcrs
from gis import exif as gexif
from layers.cases import calendar as lcal
from layers.cases import workflow as lwf
from layers.cases.vocab import STATES
from layers.core.city import CityInfo
from layers.core.errors import Conflict, Forbidden, InputError, NotFound
from layers.field import reports as lreports
from layers.field.photostore import KINDS, PhotoStore, Staged
from layers.field.photostore import recover as recover_store
from layers.field.photostore import recover_at_start as recover_store_at_start

#: metres (plus the fix's accuracy) beyond which the inspector was not at the case
FAR_M = 100.0
RESULTS = {"ok": "verify_ok", "fail": "verify_fail"}
#: states an on-site check applies to: 核查 of a department's work ('verifying': verify_ok / verify_fail),
#: and 核实 of a new report ('collected': confirmed 属实 / not found 不属实, for the operator who accepts
#: or rejects it; the state does not change, the check is an event 'note' with its photos)
CHECKABLE = ("verifying", "collected")
CONFIRM = {"ok": "confirmed", "fail": "not_found"}
#: roles that see every verification of their city (inspectors: their own and their area's;
#: a department: its own cases'); the original photos only their inspector, supervisors and admins
ALL_SEEING = frozenset({"operator", "supervisor", "admin"})


def photo_store() -> PhotoStore:
    from citygrid import settings

    return PhotoStore(settings.paths().data_dir / "verification_photos")


# -- input ---------------------------------------------------------------------------------------

@dataclass
class VerifyInput:
    result: str
    note: str | None = None
    lon: str | float | None = None
    lat: str | float | None = None
    accuracy_m: str | float | None = None
    crs: str = "EPSG:4326"

    def canonical(self) -> dict:
        return {"result": self.result, "note": self.note, "lon": self.lon, "lat": self.lat,
                "accuracy_m": self.accuracy_m, "crs": self.crs}


@dataclass
class Position:
    """The inspector's fix: as sent, in WGS-84 and in the working CRS."""

    lon: float
    lat: float
    crs: str
    accuracy_m: float | None
    wgs: tuple[float, float]
    xy: tuple[float, float]


def check_input(city: CityInfo, inp: VerifyInput, n_photos: int, cfg: dict | None = None) -> tuple[str, str | None,
                                                                                              Position | None]:
    """(workflow action, note, position) of a verification, or InputError saying what is wrong."""
    cfg = cfg or lreports.config()
    action = RESULTS.get((inp.result or "").strip().lower())
    if action is None:
        raise InputError(f"result '{inp.result}' must be ok (通过) or fail (不通过, 返工)")
    note = (inp.note or "").strip() or None
    if note is not None and len(note) > 2000:
        raise InputError("note is longer than 2000 characters")
    if action in lwf.NEEDS_REASON and not note:
        raise InputError("不通过 (返工) needs a reason: say what is still wrong in note")
    if not 1 <= n_photos <= cfg["max_photos"]:
        raise InputError(f"{n_photos} photos: the on-site check (核查) needs at least 1 photo and at most "
                         f"{cfg['max_photos']} per check")
    num = lreports.finite_number
    lon, lat, acc = num("lon", inp.lon), num("lat", inp.lat), num("accuracy", inp.accuracy_m)
    if (lon is None) != (lat is None):
        raise InputError("send both lon and lat of your position, or neither")
    if lon is None:
        if acc is not None:
            raise InputError("accuracy is given without lon/lat")
        return action, note, None
    src = gcrs.parse_crs(inp.crs or "EPSG:4326")
    if not (gcrs.is_geographic(src) or src in (gcrs.GCJ02, gcrs.BD09)):
        raise InputError(f"crs {src}: your position must be lon/lat in WGS-84, CGCS2000, GCJ-02 or BD-09")
    bad = gcrs.validate_lonlat(np.array([lon]), np.array([lat]))
    if bad is not None:
        raise InputError(f"position ({lon}, {lat}) is not a valid lon/lat: {bad[0]}")
    if acc is not None and acc < 0:
        raise InputError("accuracy must not be negative")
    if acc is not None and acc > cfg["accuracy_max_m"]:
        raise InputError(f"accuracy {acc:g} m is beyond {cfg['accuracy_max_m']} m: the fix says nothing about where "
                         "you are; wait for a better fix or leave the position out")
    wx, wy = gcrs.transform_xy(np.array([lon]), np.array([lat]), src, "EPSG:4326")
    px, py = gcrs.transform_xy(wx, wy, "EPSG:4326", city.working_crs)
    return action, note, Position(lon, lat, src, acc, (float(wx[0]), float(wy[0])), (float(px[0]), float(py[0])))


def request_hash(case_id: int, inp: VerifyInput, photo_bytes: list[bytes]) -> str:
    """What a retry must repeat: the case, the fields and the photos' digests (no decoding)."""
    return lreports.digest_request({"case_id": case_id, **inp.canonical()}, photo_bytes)


def find_existing(conn: Connection, user_id: int, key: str, req_hash: str) -> dict | None:
    """The first answer of a verification with this key, or None; Conflict for a key used for another."""
    return lreports.find_existing(conn, user_id, key, req_hash, table="case_verification")


# -- the check ---------------------------------------------------------------------------------

def _case(conn: Connection, city: CityInfo, case_id: int) -> dict:
    row = conn.execute(text("""
        SELECT id, city_id, case_no, state, department_id, category_code, cell_code, area_code, merged_into,
               ST_X(ST_Transform(location, 4326)) AS lon, ST_Y(ST_Transform(location, 4326)) AS lat
        FROM case_file WHERE id = :i"""), {"i": case_id}).mappings().first()
    if row is None or row["city_id"] != city.id:
        raise NotFound(f"no case {case_id} in {city.slug}")
    return dict(row)


def precheck(conn: Connection, city: CityInfo, case_id: int, action: str, user) -> dict:
    """Refuse early (before photos are decoded) what ``transition`` would refuse: not in this city
    (404), not this user's (403: role, area), not waiting for a check (409). Returns the case."""
    case = _case(conn, city, case_id)
    lwf.authorize(conn, case, action, user)
    if case["state"] not in CHECKABLE:
        raise Conflict(f"case {case['case_no']} is {STATES.get(case['state'], case['state'])}: only a case waiting "
                       "for the on-site check (核查 Verifying) or a new report to confirm (核实 Collected) can be checked")
    return case


def photo_url(verification_id: int, seq: int, variant: str) -> str:
    return f"/api/v1/verifications/{verification_id}/photos/{seq}/{variant}"


def verify_case(conn: Connection, city: CityInfo, case_id: int, user, inp: VerifyInput,
                photos: list[lreports.Photo], key: str, req_hash: str, store: PhotoStore,
                staged: Staged, *, case: dict | None = None) -> tuple[dict, bool]:
    """Record an on-site check with its photos and apply verify_ok / verify_fail. (result, created).

    ``case`` is what :func:`precheck` returned for this request, when the caller ran it already
    (``transition`` checks role, area and state again under its row lock).
    The caller commits, then promotes ``staged``; on any error it discards ``staged``. A concurrent
    request with the same key waits on the unique (user, key) until the first one ends, then gets
    its answer (created False).
    """
    cfg = lreports.config()
    action, note, pos = check_input(city, inp, len(photos), cfg)
    result_code = inp.result.strip().lower()
    if case is None:
        case = precheck(conn, city, case_id, action, user)
    flags: list[str] = []
    distance = None
    if pos is None:
        flags.append("no_position")
    else:
        if pos.accuracy_m is None:
            flags.append("accuracy_unknown")
        elif pos.accuracy_m > float(cfg["accuracy_gate_m"]):
            flags.append("accuracy_over_gate")
        if case["lon"] is not None:
            distance = round(gexif.distance_m(pos.wgs[0], pos.wgs[1], case["lon"], case["lat"]), 1)
            if distance > FAR_M + (pos.accuracy_m or 0.0):
                flags.append("far_from_case")
    if case["lon"] is None:
        flags.append("case_not_located")
    for p in photos:
        if p.exif.has_position and case["lon"] is not None:
            p.exif_distance_m = round(gexif.distance_m(p.exif.lon, p.exif.lat, case["lon"], case["lat"]), 1)
            if p.exif_distance_m > FAR_M and "exif_far_from_case" not in flags:
                flags.append("exif_far_from_case")

    verified_at = lcal.now()
    vid = conn.execute(text("""
        INSERT INTO case_verification (city_id, case_id, user_id, idempotency_key, request_hash, result, note,
            verified_at, input_lon, input_lat, input_crs, accuracy_m, device_location, distance_m, flags)
        VALUES (:city, :case, :u, :k, :h, :res, :note, :at, :lon, :lat, :crs, :acc,
                CASE WHEN CAST(:x AS float8) IS NULL THEN NULL
                     ELSE ST_SetSRID(ST_MakePoint(:x, :y), :srid) END, :dist, :flags)
        ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING id"""),
        dict(city=city.id, case=case_id, u=user.id, k=key, h=req_hash, res=result_code, note=note,
             at=verified_at,
             lon=pos.lon if pos else None, lat=pos.lat if pos else None, crs=pos.crs if pos else None,
             acc=pos.accuracy_m if pos else None, x=pos.xy[0] if pos else None, y=pos.xy[1] if pos else None,
             srid=city.srid, dist=distance, flags=flags)).scalar()
    if vid is None:  # the same key committed meanwhile by a concurrent request: its answer
        first = find_existing(conn, user.id, key, req_hash)
        if first is None:
            raise Conflict(f"Idempotency-Key '{key}' is being used by another request: retry")
        return first, False
    store.claim(conn)
    photo_out = []
    for p in photos:
        conn.execute(text("""
            INSERT INTO case_verification_photo (verification_id, seq, sha256, public_sha256, thumb_sha256,
                media_type, size_bytes, width, height, exif_status, exif_lon, exif_lat, exif_time, exif_distance_m,
                flags)
            VALUES (:v, :seq, :sha, :psha, :tsha, :mt, :size, :w, :h, :st, :elon, :elat, :etime, :edist, :flags)"""),
            dict(v=vid, seq=p.seq, sha=p.sha256, psha=p.public_sha256, tsha=p.thumb_sha256, mt=p.media_type,
                 size=len(p.data), w=p.width, h=p.height, st=p.exif.status, elon=p.exif.lon, elat=p.exif.lat,
                 etime=p.exif.timestamp.isoformat() if p.exif.timestamp else None, edist=p.exif_distance_m,
                 flags=p.exif.flags))
        store.stage(staged, "original", p.sha256, p.data)
        store.stage(staged, "public", p.public_sha256, p.public)
        store.stage(staged, "thumb", p.thumb_sha256, p.thumb)
        photo_out.append({"seq": p.seq, "sha256": p.sha256, "media_type": p.media_type, "size_bytes": len(p.data),
                          "width": p.width, "height": p.height, "exif_status": p.exif.status,
                          "exif_flags": p.exif.flags, "exif_distance_m": p.exif_distance_m,
                          "public_url": photo_url(vid, p.seq, "public"), "thumb_url": photo_url(vid, p.seq, "thumb")})

    if case["state"] == "collected":  # 核实: the report confirmed or not found on site; the operator decides
        lwf.authorize(conn, lwf._load(conn, case_id, lock=True), action, user)
        event_id = lwf._event(conn, case_id, verified_at, "note", user, "collected", "collected", None, note,
                              [p["public_url"] for p in photo_out],
                              {"onsite_check": CONFIRM[result_code], "verification_id": vid})
        deadline = conn.execute(text("SELECT step_deadline_at FROM case_file WHERE id = :i"), {"i": case_id}).scalar()
        moved = {"event_id": event_id, "from_state": "collected", "state": "collected", "data": {},
                 "step_deadline_at": lwf._iso(deadline)}
    else:
        moved = lwf.transition(conn, case_id, action, user, note=note, photos=[p["public_url"] for p in photo_out],
                               at=verified_at)
    result = {
        "id": vid, "idempotency_key": key, "case_id": case_id, "case_no": case["case_no"],
        "result": result_code, "action": action if case["state"] != "collected" else CONFIRM[result_code],
        "check": "核实" if case["state"] == "collected" else "核查", "note": note, "event_id": moved["event_id"],
        "from_state": moved["from_state"], "state": moved["state"],
        "state_label": STATES.get(moved["state"], moved["state"]), "rework": moved["data"].get("rework"),
        "step_deadline_at": moved["step_deadline_at"], "verified_at": verified_at.astimezone(dt.UTC).isoformat(),
        "position": None if pos is None else {
            "lon": round(pos.wgs[0], 7), "lat": round(pos.wgs[1], 7), "crs": "EPSG:4326",
            "accuracy_m": pos.accuracy_m, "accuracy_gate_m": float(cfg["accuracy_gate_m"])},
        "distance_m": distance, "far_m": FAR_M, "flags": flags, "photos": photo_out,
    }
    conn.execute(text("UPDATE case_verification SET event_id = :e, response = CAST(:r AS jsonb) WHERE id = :i"),
                 {"e": moved["event_id"], "r": json.dumps(result, ensure_ascii=False), "i": vid})
    return result, True


# -- reading -------------------------------------------------------------------------------------

def _row(conn: Connection, city: CityInfo, verification_id: int) -> dict:
    row = conn.execute(text("""
        SELECT v.id, v.user_id, v.response, c.id AS case_id, c.state, c.department_id, c.cell_code, c.area_code,
               c.case_no, c.city_id
        FROM case_verification v JOIN case_file c ON c.id = v.case_id
        WHERE v.id = :i AND v.city_id = :c AND v.response IS NOT NULL"""),
        {"i": verification_id, "c": city.id}).mappings().first()
    if row is None:
        raise NotFound(f"no verification {verification_id} in {city.slug}")
    return dict(row)


def may_see(conn: Connection, user, row: dict) -> bool:
    """Staff who may see a verification: operators, supervisors, admins; its inspector and the
    inspectors of the case's area; the department the case is assigned to."""
    role = getattr(user, "role", None)
    if role in ALL_SEEING:
        return True
    if role == "inspector":
        return row["user_id"] == user.id or lwf.in_area(user, row)
    if role == "department":
        mine = lwf.user_department_id(conn, row["city_id"], user)
        return mine is not None and row["department_id"] == mine
    return False


def get_verification(conn: Connection, city: CityInfo, verification_id: int, user) -> dict:
    """The first answer of a verification, with its case's state now."""
    row = _row(conn, city, verification_id)
    if not may_see(conn, user, row):
        raise Forbidden(f"verification {verification_id} is of a case your role may not see")
    return {**row["response"], "case_state": row["state"], "case_state_label": STATES.get(row["state"], row["state"])}


def for_case(conn: Connection, case_id: int) -> list[dict]:
    """The verifications of a case, oldest first (their first answers)."""
    rows = conn.execute(text("""SELECT response FROM case_verification
                                WHERE case_id = :c AND response IS NOT NULL ORDER BY verified_at, id"""),
                        {"c": case_id}).scalars().all()
    return list(rows)


def task(conn: Connection, city: CityInfo, case_id: int, user) -> dict:
    """What the inspector needs on site: the case, where it is, the department's feedback, earlier
    checks, and whether this user may verify it now."""
    d = lwf.case_detail(conn, city, case_id, user)  # 404 / 403 by the role's visibility
    feedback = next((e for e in reversed(d["events"]) if e["kind"] == "feedback"), None)
    actions = {a["action"] for a in lwf.allowed_actions(conn, case_id, user)}
    if d["state"] == "collected" and "verify_ok" in lwf.ROLE_ACTIONS.get(getattr(user, "role", None), ()):
        try:  # 核实 of a new report: the same role and area gate as 核查
            lwf.authorize(conn, lwf._load(conn, case_id), "verify_ok", user)
            actions |= {"verify_ok", "verify_fail"}
        except Forbidden:
            pass
    keep = ("id", "case_no", "state", "state_label", "category_code", "category_name", "title", "description",
            "address", "cell_code", "urgency", "department_code", "department_name", "step_deadline_at", "clock",
            "rework_count", "lon", "lat")
    return {
        "case": {k: d.get(k) for k in keep},
        "feedback": None if feedback is None else {k: feedback[k] for k in ("at", "note", "department", "photos")},
        "verifications": for_case(conn, case_id),
        "can_verify": {"ok": "verify_ok" in actions, "fail": "verify_fail" in actions},
        "check": "核实" if d["state"] == "collected" else "核查",
        "fail_needs_reason": "verify_fail" in lwf.NEEDS_REASON,
        "far_m": FAR_M, "max_photos": lreports.config()["max_photos"],
    }


def photo_file(conn: Connection, city: CityInfo, verification_id: int, seq: int, variant: str, user,
               store: PhotoStore) -> tuple[bytes, str]:
    """(bytes, media type) of a verification photo (public copy, thumbnail or the private original)."""
    if variant not in ("public", "thumb", "original"):
        raise InputError("variant must be public, thumb or original")
    row = _row(conn, city, verification_id)
    if not may_see(conn, user, row):
        raise Forbidden(f"verification {verification_id} is of a case your role may not see")
    p = conn.execute(text("""SELECT sha256, public_sha256, thumb_sha256, media_type FROM case_verification_photo
                             WHERE verification_id = :v AND seq = :s"""), {"v": verification_id, "s": seq}).first()
    if p is None:
        raise NotFound(f"no photo {seq} of verification {verification_id}")
    if variant == "original" and not (user.role in ("supervisor", "admin") or user.id == row["user_id"]):
        raise Forbidden("the original photo is private: only its inspector, supervisors and admins")
    sha = {"original": p[0], "public": p[1], "thumb": p[2]}[variant]
    try:
        data = store.read(variant, sha)
    except FileNotFoundError:
        raise NotFound(f"the {variant} file of photo {seq} of verification {verification_id} is missing") from None
    return data, (lreports.MEDIA_TYPES.get(p[3], "application/octet-stream") if variant == "original" else "image/jpeg")


# -- recovery -------------------------------------------------------------------------------------

def referenced(conn: Connection) -> dict[str, set[str]]:
    """kind -> the sha256 digests verification photos refer to."""
    rows = conn.execute(text("SELECT sha256, public_sha256, thumb_sha256 FROM case_verification_photo")).all()
    return {kind: {r[i] for r in rows} for i, kind in enumerate(KINDS)}


def recover(conn: Connection, store: PhotoStore) -> dict[str, int]:
    """Bring this store's files in line with the committed rows (at start), by the rule of
    ``layers.field.photostore.recover`` applied to ``case_verification_photo``."""
    return recover_store(conn, store, referenced(conn))


def recover_at_start(engine, log=None) -> dict | None:
    return recover_store_at_start(engine, "case_verification_photo", photo_store(), referenced, log)
