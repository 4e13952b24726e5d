"""Every photo of a case, of every kind, in one list: what the pages' photo viewer shows.

Kinds (``publication.PHOTO_KINDS``) and where they come from:

* ``report`` 上报照片 — an inspector's report (``field_photo``), a citizen's web/H5 submission (the
  event ``note`` with ``data.photo_from = citizen``, a re-encoded copy in ``<data_dir>/case_photos``),
  photos sent in the WeChat chat (``wechat_photo``), an Open311 ``media_url`` (``case_media``: an
  address outside, listed for staff, never fetched); also those of the reports merged into the case (并单).
* ``before`` 处置前 / ``after`` 处置后 — the department's photos of its 处置反馈 (``case_feedback_photo``,
  migration 0023, uploaded with :func:`feedback_with_photos`).
* ``verification`` 核查照片 — the inspector's on-site checks (``case_verification_photo``).

Each photo is served at ``/api/v1/cases/{case}/photos/{source}/{ref}/{variant}``, variant ``thumb`` or
``public``: both re-encoded from pixels (no EXIF, so no GPS position and no device). The originals stay
behind the reports' and checks' own routes (their inspector, supervisors, admins). Thumbnails are made
with Pillow when a photo was stored (reports, chat, checks, feedback); a citizen's copy gets its thumbnail
on first request, cached under ``<data_dir>/photo_thumbs`` by the sha256 of its bytes (content-addressed).

Who sees them: staff who may see the case (the rule of the case list, ``workflow.visibility``, and an
inspector the cases they checked on site); the
citizen who reported it, through the look-up, the kinds ``publication.lookup_photo_kinds`` allows, at
signed addresses that expire (:func:`sign`); anonymous output none.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

from sqlalchemy import Connection, text

from gis import photos as gphotos
from layers.cases import workflow as lwf
from layers.cases.vocab import EVENTS
from layers.core import publication
from layers.core.city import CityInfo
from layers.core.errors import Conflict, Forbidden, InputError, NotFound
from layers.field import reports as lreports
from layers.field.photostore import KINDS, PhotoStore, Staged
from layers.field.photostore import recover as recover_store
from layers.field.photostore import recover_at_start as recover_store_at_start

KIND_LABELS = {"report": "上报照片", "before": "处置前", "after": "处置后", "verification": "核查照片"}
KIND_LABELS_EN = {"report": "Reported", "before": "Before", "after": "After", "verification": "On-site check"}
STEP_LABELS = {"received": "上报 Reported", "onsite_check": "核实 Confirmed on site"}
SOURCES = ("report", "citizen", "wechat", "feedback", "verification")
VARIANTS = ("thumb", "public")
THUMB_PX = 320
#: how long a signed address given to a citizen's look-up stays valid
SIGNED_TTL_S = 3600
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CITIZEN_REF = re.compile(r"^[0-9a-f]{32}$")
_PAIR_REF = re.compile(r"^[0-9]{1,19}\.[0-9]{1,2}$")


def _data_dir() -> Path:
    from citygrid import settings

    return settings.paths().data_dir


def feedback_store() -> PhotoStore:
    """The department's feedback photos: a store of their own (each store's recovery deletes what its
    table does not name)."""
    return PhotoStore(_data_dir() / "feedback_photos")


def _store(source: str) -> PhotoStore:
    if source == "report":
        return PhotoStore.default()
    if source == "wechat":  # layers.channels.wechat.photo_store (channels is above field: the path, not the import)
        return PhotoStore(_data_dir() / "wechat_photos")
    if source == "verification":
        from layers.field import verification as lver

        return lver.photo_store()
    if source == "feedback":
        return feedback_store()
    raise InputError(f"unknown photo source '{source}'")


def _iso(t) -> str | None:
    return t.astimezone(dt.UTC).isoformat() if isinstance(t, dt.datetime) else t


def _item(case_id: int, kind: str, source: str, ref: str, at, step: str, *, merged_from: str | None = None,
          base: str | None = None) -> dict:
    base = base or f"/api/v1/cases/{case_id}/photos/{source}/{ref}"
    return {"id": f"{source}:{ref}", "kind": kind, "kind_label": KIND_LABELS[kind], "kind_label_en": KIND_LABELS_EN[kind],
            "source": source, "ref": ref, "at": _iso(at), "step": step, "step_label": STEP_LABELS.get(step) or EVENTS.get(step, "照片 Photo"),
            "thumb_url": base + "/thumb", "url": base + "/public", "merged_from": merged_from}


def collect(conn: Connection, case_id: int, kinds=publication.PHOTO_KINDS) -> list[dict]:
    """Every photo of a case of ``kinds``, oldest first (no authorisation: callers check it)."""
    kinds = set(kinds)
    out: list[dict] = []
    if "report" in kinds:
        # The case's own and those of the cases merged into it (并单: the same problem reported again).
        cases = {r[0]: r[1] for r in conn.execute(text(
            "SELECT id, case_no FROM case_file WHERE id = :c OR merged_into = :c"), {"c": case_id})}
        ids = list(cases)

        def merged(cid):
            return None if cid == case_id else cases.get(cid)

        for rid, seq, at, cid in conn.execute(text("""
                SELECT r.id, p.seq, r.received_at, r.case_id FROM field_photo p JOIN field_report r ON r.id = p.report_id
                WHERE r.case_id = ANY(:ids) AND r.response IS NOT NULL ORDER BY r.received_at, r.id, p.seq"""),
                {"ids": ids}):
            out.append(_item(case_id, "report", "report", f"{rid}.{seq}", at, "received", merged_from=merged(cid)))
        for at, photos, cid in conn.execute(text("""
                SELECT at, photos, case_id FROM case_event WHERE case_id = ANY(:ids) AND kind = 'note'
                  AND data->>'photo_from' = 'citizen' AND photos IS NOT NULL ORDER BY at, id"""), {"ids": ids}):
            for ref in photos:
                stem = str(ref).removesuffix(".jpg")
                if _CITIZEN_REF.match(stem):
                    out.append(_item(case_id, "report", "citizen", stem, at, "received", merged_from=merged(cid)))
        if conn.execute(text("SELECT to_regclass('wechat_photo') IS NOT NULL")).scalar_one():
            for pid, at, cid in conn.execute(text("""SELECT id, received_at, case_id FROM wechat_photo
                                                     WHERE case_id = ANY(:ids) ORDER BY received_at, id"""), {"ids": ids}):
                out.append(_item(case_id, "report", "wechat", str(pid), at, "received", merged_from=merged(cid)))
        if conn.execute(text("SELECT to_regclass('case_media') IS NOT NULL")).scalar_one():
            for cid, url, at in conn.execute(text("""SELECT m.case_id, m.media_url, c.received_at FROM case_media m
                                                     JOIN case_file c ON c.id = m.case_id WHERE m.case_id = ANY(:ids)"""),
                                             {"ids": ids}):
                item = _item(case_id, "report", "open311", str(cid), at, "received", merged_from=merged(cid))
                # An address the Open311 client gave: shown as a link, never fetched by the server.
                item.update(thumb_url=None, url=None, external_url=url)
                out.append(item)
    if kinds & {"before", "after"}:
        for step, sha, at in conn.execute(text("""
                SELECT p.step, p.public_sha256, e.at FROM case_feedback_photo p JOIN case_event e ON e.id = p.event_id
                WHERE p.case_id = :c AND p.step = ANY(:steps) ORDER BY e.at, p.event_id, p.step DESC, p.seq"""),
                {"c": case_id, "steps": sorted(kinds & {"before", "after"})}):
            ref = f"{step}.{sha}"
            if not any(o["id"] == f"feedback:{ref}" for o in out):
                out.append(_item(case_id, step, "feedback", ref, at, "feedback"))
    if "verification" in kinds:
        for vid, seq, at, result, kind in conn.execute(text("""
                SELECT v.id, p.seq, v.verified_at, v.result, e.kind FROM case_verification_photo p
                JOIN case_verification v ON v.id = p.verification_id LEFT JOIN case_event e ON e.id = v.event_id
                WHERE v.case_id = :c AND v.response IS NOT NULL ORDER BY v.verified_at, v.id, p.seq"""), {"c": case_id}):
            step = "onsite_check" if kind == "note" else ("verify_ok" if result == "ok" else "verify_fail")
            out.append(_item(case_id, "verification", "verification", f"{vid}.{seq}", at, step))
    out.sort(key=lambda o: (o["at"] or "", SOURCES.index(o["source"]) if o["source"] in SOURCES else 9))
    return out


# -- who may see them -------------------------------------------------------------------------------

def check_staff(conn: Connection, city: CityInfo, case_id: int, user) -> None:
    """NotFound (no such case in the city) or Forbidden (a case the user's role may not see)."""
    where, params = lwf.visibility(conn, city, user)
    row = conn.execute(text(f"SELECT 1 FROM case_file c WHERE c.id = :i AND c.city_id = :city AND {where}"),
                       {**params, "i": case_id, "city": city.id}).first()
    if row is not None:
        return
    # An inspector keeps seeing the photos of a case they checked on site, once it has moved on (the
    # rule of their own verifications: layers.field.verification.may_see).
    if getattr(user, "role", None) == "inspector" and conn.execute(text(
            "SELECT 1 FROM case_verification v JOIN case_file c ON c.id = v.case_id "
            "WHERE v.case_id = :i AND v.user_id = :u AND c.city_id = :city LIMIT 1"),
            {"i": case_id, "u": user.id, "city": city.id}).first():
        return
    if conn.execute(text("SELECT 1 FROM case_file WHERE id = :i AND city_id = :c"), {"i": case_id, "c": city.id}).first():
        raise Forbidden(f"案件 {case_id} 不在您的角色可查看的范围内 — case {case_id} is not among the cases your role may see")
    raise NotFound(f"没有案件 {case_id} — no case {case_id} in {city.slug}")


def staff_list(conn: Connection, city: CityInfo, case_id: int, user) -> dict:
    """The photos of a case for a staff user who may see it."""
    check_staff(conn, city, case_id, user)
    items = collect(conn, case_id)
    return {"case_id": case_id, "count": len(items), "photos": items,
            "counts": {k: sum(1 for i in items if i["kind"] == k) for k in publication.PHOTO_KINDS}}


def _find(items: list[dict], source: str, ref: str) -> dict:
    for it in items:
        if it["source"] == source and it["ref"] == ref and it.get("url"):
            return it
    raise NotFound(f"这张照片不属于该案件 — no photo {source}/{ref} of this case")


def _read_public(source: str, ref: str, conn: Connection) -> tuple[bytes, str]:
    """(bytes of the public copy, its sha256) of a photo the listing named."""
    if source == "citizen":
        data = (_data_dir() / "case_photos" / f"{ref}.jpg").read_bytes()
        return data, hashlib.sha256(data).hexdigest()
    sha = _digest(conn, source, ref, "public_sha256")
    return _store(source).read("public", sha), sha


def _digest(conn: Connection, source: str, ref: str, column: str) -> str:
    if source in ("report", "verification"):
        owner, seq = ref.split(".")
        sql = {"report": f"SELECT {column} FROM field_photo WHERE report_id = :o AND seq = :s",
               "verification": f"SELECT {column} FROM case_verification_photo WHERE verification_id = :o AND seq = :s"}
        row = conn.execute(text(sql[source]), {"o": int(owner), "s": int(seq)}).first()
    elif source == "wechat":
        row = conn.execute(text(f"SELECT {column} FROM wechat_photo WHERE id = :i"), {"i": int(ref)}).first()
    elif source == "feedback":
        step, sha = ref.split(".")
        row = conn.execute(text(f"SELECT {column} FROM case_feedback_photo WHERE step = :s AND public_sha256 = :h LIMIT 1"),
                           {"s": step, "h": sha}).first()
    else:
        row = None
    if row is None:
        raise NotFound(f"no photo {source}/{ref}")
    return row[0].strip()


def _cached_thumb(public: bytes, sha: str) -> bytes:
    """A thumbnail of a public copy, made once with Pillow and kept by the sha256 of the copy."""
    if not _HEX64.match(sha):
        raise InputError("not a sha256 digest")
    path = _data_dir() / "photo_thumbs" / sha[:2] / f"{sha}.jpg"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    thumb = gphotos.thumbnail(public, THUMB_PX)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{sha}.{secrets.token_hex(4)}")
    tmp.write_bytes(thumb)
    os.replace(tmp, path)
    return thumb


def check_ref(source: str, ref: str, variant: str) -> None:
    if variant not in VARIANTS:
        raise InputError("variant must be thumb or public (the originals are served by the report's or check's own route)")
    ok = {"report": _PAIR_REF, "verification": _PAIR_REF, "citizen": _CITIZEN_REF,
          "wechat": re.compile(r"^[0-9]{1,19}$"), "feedback": re.compile(r"^(before|after)\.[0-9a-f]{64}$")}.get(source)
    if ok is None or not ok.match(ref):
        raise NotFound(f"no photo {source}/{ref}")


def photo_bytes(conn: Connection, items: list[dict], source: str, ref: str, variant: str) -> bytes:
    """The JPEG of a photo of ``items`` (a case's listing): its thumbnail or public copy, no EXIF."""
    check_ref(source, ref, variant)
    _find(items, source, ref)
    try:
        if variant == "thumb" and source != "citizen":
            return _store(source).read("thumb", _digest(conn, source, ref, "thumb_sha256"))
        data, sha = _read_public(source, ref, conn)
        return _cached_thumb(data, sha) if variant == "thumb" else data
    except FileNotFoundError:
        raise NotFound(f"照片文件缺失 — the file of photo {source}/{ref} is missing") from None


def staff_photo(conn: Connection, city: CityInfo, case_id: int, source: str, ref: str, variant: str, user) -> bytes:
    check_ref(source, ref, variant)
    check_staff(conn, city, case_id, user)
    return photo_bytes(conn, collect(conn, case_id), source, ref, variant)


# -- the citizen's look-up ---------------------------------------------------------------------------

def _signature(case_id: int, source: str, ref: str, variant: str, exp: int) -> str:
    from citygrid.secretkey import server_key

    msg = f"case-photo:{case_id}:{source}:{ref}:{variant}:{exp}".encode()
    return hmac.new(server_key(), msg, hashlib.sha256).hexdigest()[:32]


def sign(case_id: int, source: str, ref: str, variant: str, exp: int | None = None) -> str:
    exp = exp or int(time.time()) + SIGNED_TTL_S
    return (f"/api/v1/public/case-photos/{case_id}/{source}/{ref}/{variant}"
            f"?exp={exp}&sig={_signature(case_id, source, ref, variant, exp)}")


def lookup_photos(conn: Connection, case_id: int) -> list[dict]:
    """The photos the citizen who reported ``case_id`` sees through the look-up (the publication
    policy decides the kinds), with signed addresses; no staff detail beyond kind, step and time."""
    source = conn.execute(text("SELECT source FROM case_file WHERE id = :i"), {"i": case_id}).scalar()
    kinds = publication.lookup_photo_kinds(source)
    out = []
    for it in collect(conn, case_id, kinds) if kinds else []:
        if not it.get("url") or it["merged_from"]:
            continue  # an outside address, or a photo of another citizen's report merged into this one
        out.append({k: it[k] for k in ("kind", "kind_label", "kind_label_en", "at", "step", "step_label")}
                   | {"thumb_url": sign(case_id, it["source"], it["ref"], "thumb"),
                      "url": sign(case_id, it["source"], it["ref"], "public")})
    return out


def check_signed(case_id: int, source: str, ref: str, variant: str, exp: int, sig: str) -> None:
    """The signed address's own checks, which need no database: its form, expiry and signature."""
    check_ref(source, ref, variant)
    if exp < time.time():
        raise Forbidden("链接已过期，请重新查询 — the address has expired: look the case up again")
    if not hmac.compare_digest(_signature(case_id, source, ref, variant, exp), sig or ""):
        raise Forbidden("链接无效 — the address is not valid")


def public_photo(conn: Connection, case_id: int, source: str, ref: str, variant: str, exp: int, sig: str) -> bytes:
    """A photo at a signed address of :func:`lookup_photos`: checked against the signature, its expiry
    and the policy now."""
    check_signed(case_id, source, ref, variant, exp, sig)
    allowed = [i for i in collect(conn, case_id, publication.lookup_photo_kinds(
        conn.execute(text("SELECT source FROM case_file WHERE id = :i"), {"i": case_id}).scalar()))
        if not i["merged_from"]]
    return photo_bytes(conn, allowed, source, ref, variant)


# -- the department's feedback with photos -------------------------------------------------------------

def precheck_feedback(conn: Connection, city: CityInfo, case_id: int, user, n_after: int) -> dict:
    """Refuse before decoding photos what the feedback would refuse: 404 / 403 / 409, and 422 when the
    class needs an after photo and none was sent."""
    case = conn.execute(text("SELECT id, city_id, case_no, state, department_id, category_code, cell_code, area_code "
                             "FROM case_file WHERE id = :i"), {"i": case_id}).mappings().first()
    if case is None or case["city_id"] != city.id:
        raise NotFound(f"没有案件 {case_id} — no case {case_id} in {city.slug}")
    case = dict(case)
    lwf.authorize(conn, case, "feedback", user)
    if case["state"] != "processing":
        from layers.cases.vocab import STATES

        raise Conflict(f"案件 {case['case_no']} 当前为「{STATES.get(case['state'], case['state'])}」，只有处置中的案件可以反馈 — "
                       "only a case being handled (processing) can be given feedback")
    item = lwf.catalog().get(case["category_code"], {})
    if item.get("feedback_photos_required") and n_after < 1:
        raise InputError(lwf.feedback_photos_message(item))
    return case


def feedback_with_photos(conn: Connection, city: CityInfo, case_id: int, user, note: str | None,
                         before: list[lreports.Photo], after: list[lreports.Photo], store: PhotoStore,
                         staged: Staged) -> dict:
    """处置反馈 with the department's photos: the workflow's feedback (its gates, the class's photo rule)
    and one ``case_feedback_photo`` row per photo, files staged; the caller commits then promotes
    ``staged`` (discards it on any error: nothing half-written)."""
    precheck_feedback(conn, city, case_id, user, len(after))
    refs = [f"/api/v1/cases/{case_id}/photos/feedback/{step}.{p.public_sha256}/public"
            for step, group in (("before", before), ("after", after)) for p in group]
    moved = lwf.transition(conn, case_id, "feedback", user, note=note, photos=refs or None, after_photos=len(after))
    if before or after:
        store.claim(conn)
    photos = []
    for step, group in (("before", before), ("after", after)):
        for seq, p in enumerate(group):
            conn.execute(text("""
                INSERT INTO case_feedback_photo (case_id, event_id, step, seq, sha256, public_sha256, thumb_sha256,
                    media_type, size_bytes, width, height, exif_status, user_id)
                VALUES (:c, :e, :step, :seq, :sha, :psha, :tsha, :mt, :size, :w, :h, :st, :u)
                ON CONFLICT (event_id, step, seq) DO NOTHING"""),
                dict(c=case_id, e=moved["event_id"], step=step, seq=seq, sha=p.sha256, psha=p.public_sha256,
                     tsha=p.thumb_sha256, mt=p.media_type, size=len(p.data), w=p.width, h=p.height,
                     st=p.exif.status, u=getattr(user, "id", None)))
            store.stage(staged, "original", p.sha256, p.data)
            store.stage(staged, "public", p.public_sha256, p.public)
            store.stage(staged, "thumb", p.thumb_sha256, p.thumb)
            photos.append(_item(case_id, step, "feedback", f"{step}.{p.public_sha256}", lcal_now(), "feedback"))
    return {**moved, "photos": photos}


def lcal_now():
    from layers.cases import calendar as lcal

    return lcal.now()


def referenced(conn: Connection) -> dict[str, set[str]]:
    """kind -> the sha256 digests the feedback photos refer to."""
    rows = conn.execute(text("SELECT sha256, public_sha256, thumb_sha256 FROM case_feedback_photo")).all()
    return {kind: {r[i].strip() for r in rows} for i, kind in enumerate(KINDS)}


def recover(conn: Connection, store: PhotoStore) -> dict[str, int]:
    return recover_store(conn, store, referenced(conn))


def recover_at_start(engine, log=None) -> dict | None:
    return recover_store_at_start(engine, "case_feedback_photo", feedback_store(), referenced, log)
