"""The citizen channel (WeChat and the website): submit a request, look up its status with the case
number and query code, rate the result; public notices (便民公告).

What a citizen sees never holds personal data (names, phones), internal notes, departments' staff
or the location of other people's cases: only the state, the public step history and the dates.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import math
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from shapely.geometry import Point
from sqlalchemy import Connection, text

from citygrid import settings
from gis import crs as gcrs
from gis import photos as gphotos
from layers.cases import calendar as lcal
from layers.cases import workflow as wf
from layers.cases.vocab import EVENTS, RATINGS, STATES
from layers.core import publication
from layers.core.city import CityInfo
from layers.core.errors import Conflict, InputError, NotFound
from layers.core.sessions import address_source

#: States as the public sees them (no internal detail).
PUBLIC_STATE = {
    "collected": "已受理 Received", "accepted": "已立案 Accepted", "rejected": "不予立案 Not accepted",
    "dispatched": "办理中 In progress", "processing": "办理中 In progress", "feedback": "办理中 In progress",
    "verifying": "核查中 Being checked", "closed": "已办结 Closed", "deferred": "缓办 Deferred",
    "suspended": "挂账 Parked", "merged": "已并单 Merged with an earlier report", "void": "已作废 Void",
}
PUBLIC_EVENTS = {"received", "accepted", "rejected", "dispatched", "started", "feedback", "verify_ok", "closed",
                 "rated", "merged", "reopened", "deferred", "suspended", "resumed", "voided"}
MAX_PHOTO_BYTES = 10 * 1024 * 1024
#: The actor of the events a citizen causes (no user account: role 'citizen').
CITIZEN = SimpleNamespace(id=None, role="citizen")


def photo_dir():
    d = settings.paths().data_dir / "case_photos"
    d.mkdir(parents=True, exist_ok=True)
    return d


def check_photo(data: bytes) -> bytes:
    """Check an uploaded photo (size, type, bomb — from its header, before decoding —, damage) and
    return a re-encoded copy without EXIF; nothing is written (InputError when refused)."""
    if len(data) > MAX_PHOTO_BYTES:
        raise InputError(f"the photo is larger than {MAX_PHOTO_BYTES // (1024 * 1024)} MB", code="photo_too_large",
                         mb=MAX_PHOTO_BYTES // (1024 * 1024))
    try:
        return gphotos.public_copy(data)
    except gphotos.PhotoError as e:
        raise InputError(f"photo refused: {e}", code="photo_refused") from None


def keep_photo(copy: bytes) -> str:
    """Write a checked copy (:func:`check_photo`) to the photo folder; its reference."""
    ref = f"{uuid.uuid4().hex}.jpg"
    (photo_dir() / ref).write_bytes(copy)
    return ref


def store_photo(data: bytes) -> str:
    """Check an uploaded photo and keep a re-encoded copy without EXIF."""
    return keep_photo(check_photo(data))


def submit(conn: Connection, city: CityInfo, *, category_code: str, description: str, lon: float | None = None,
           lat: float | None = None, crs: str = "GCJ-02", address: str | None = None, photo: bytes | None = None,
           name: str | None = None, phone: str | None = None, openid: str | None = None,
           channel: str = "微信", request_type: str | None = None, accuracy_m: float | None = None,
           photo_copy: bytes | None = None) -> dict:
    """A citizen's request: returns the case number and the query code (shown once). ``photo``: the
    uploaded bytes, checked here; or ``photo_copy``: the result of :func:`check_photo` made elsewhere."""
    description = (description or "").strip()
    if not description:
        raise InputError("describe the problem (description is empty)", code="call_description_missing")
    if channel not in ("微信", "网站", "APP"):
        raise InputError("channel must be 微信, 网站 or APP", code="unknown_channel", value=channel)
    loc = None
    if (lon is None) != (lat is None):
        raise InputError("give both lon and lat, or neither", code="location_pair")
    if lon is not None:
        src = gcrs.parse_crs(crs)
        bad = gcrs.validate_lonlat(np.array([lon]), np.array([lat]))
        if bad is not None:
            raise InputError(f"location ({lon}, {lat}) is not a valid lon/lat: {bad[0]}", code="location_invalid")
        x, y = gcrs.transform_xy(np.array([lon]), np.array([lat]), src, city.working_crs)
        loc = Point(float(x[0]), float(y[0]))
    src_name = "citizen"
    confidence = None
    if loc is None and address:
        from layers.cases import gazetteer

        hit = gazetteer.locate_address(conn, city, address)
        if hit:
            loc, confidence, src_name = hit["point"], hit["confidence"], "gazetteer"
    # The photo is checked now but written only once the case is: a refused submission (a point
    # outside the city, an unknown class …) leaves no file behind.
    copy = photo_copy if photo_copy is not None else (check_photo(photo) if photo else None)
    opened = wf.open_case(conn, city, source="citizen", channel=channel, category_code=category_code,
                          received_at=lcal.now(), location=loc, description=description[:5000], address=address,
                          request_type=request_type, contact={"name": name, "phone": phone, "openid": openid},
                          location_source=src_name if loc is not None else None, location_accuracy_m=accuracy_m,
                          location_confidence=confidence, actor=CITIZEN)
    if copy is not None:
        ref = f"{uuid.uuid4().hex}.jpg"
        wf._event(conn, opened.id, lcal.now(), "note", CITIZEN, opened.state, opened.state, photos=[ref],
                  data={"photo_from": "citizen"})
        (photo_dir() / ref).write_bytes(copy)  # last: nothing after it can refuse the submission
    return {"case_no": opened.case_no, "query_code": opened.query_code,
            "status": PUBLIC_STATE[opened.state], "state": opened.state}


# -- limits on wrong query codes ------------------------------------------------------------------
# A 6-digit query code falls to 10^6 guesses: wrong attempts are counted in the database (table
# lookup_failure, migration 0015) per client address — for one case number as typed, and across all
# numbers — and an address with too many of them in a window is refused (429) for a while, even with
# the right code. Every count is of one address: guesses from elsewhere never lock the rightful holder
# out of their own case (a count per case number alone did: five wrong codes from anywhere paused the
# number for everyone). The counting happens inside the request's transaction under an advisory lock
# of the address, so concurrent guesses from one address on several workers are counted exactly.

LIMITS_FILE = Path(__file__).resolve().parent / "data" / "lookup_limits.json"
#: First key of the advisory lock of an address (the second: hashtext of its key); apart from the
#: export jobs'.
_LOCK_ADDR = 0x6C6B02


@dataclass(frozen=True)
class Limit:
    max_failures: int
    window: dt.timedelta
    lock: dt.timedelta


@lru_cache
def lookup_limits() -> dict[str, Limit]:
    """``{"per_case_per_address": Limit, "per_address": Limit}`` from ``data/lookup_limits.json``."""
    cfg = json.loads(LIMITS_FILE.read_text(encoding="utf-8"))
    out = {}
    for scope in ("per_case_per_address", "per_address"):
        c = cfg[scope]
        lim = Limit(int(c["max_failures"]), dt.timedelta(minutes=float(c["window_minutes"])),
                    dt.timedelta(minutes=float(c["lock_minutes"])))
        if lim.max_failures < 1 or lim.window <= dt.timedelta(0) or lim.lock <= dt.timedelta(0):
            raise ValueError(f"{LIMITS_FILE}: {scope} needs max_failures >= 1 and positive minutes")
        out[scope] = lim
    return out


class TooManyAttempts(Exception):
    """Look-ups refused until ``retry_at`` (→ 429 with Retry-After)."""

    def __init__(self, scope: str, retry_at: dt.datetime, now: dt.datetime):
        self.scope, self.retry_at = scope, retry_at
        self.retry_after = max(1, math.ceil((retry_at - now).total_seconds()))
        shown = retry_at.astimezone(lcal.calendar().tz)
        if shown.second or shown.microsecond:  # say a minute at which it is really over
            shown = shown.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        minutes = max(1, math.ceil(self.retry_after / 60))
        at = shown.strftime("%H:%M") if shown.date() == now.astimezone(shown.tzinfo).date() else shown.strftime("%Y-%m-%d %H:%M")
        what_zh, what_en = (("您对此案卷编号的查询", "this case number from your network address") if scope == "case"
                            else ("来自您网络地址的查询", "look-ups from your network address"))
        super().__init__(f"查询码错误次数过多，{what_zh}已暂停，请于 {at}（约 {minutes} 分钟后）再试。"
                         f"Too many wrong query codes for {what_en}: try again after {at} "
                         f"(in about {minutes} minute{'s' if minutes != 1 else ''}).")


class WrongCode(NotFound):
    """No case with this number and code (the same for an unknown number); the failure is written in
    the caller's transaction, which must be committed although the answer is a 404."""


def _addr_key(conn: Connection, address: str | None) -> bytes:
    return conn.execute(text("""SELECT substring(sha256(secret || convert_to(:a, 'UTF8')) FROM 1 FOR 16)
                                FROM lookup_secret"""), {"a": address_source(address)}).scalar_one()


_STATE = """
    WITH f AS (
        SELECT at, count(*) OVER (ORDER BY at RANGE BETWEEN CAST(:win AS interval) - interval '1 microsecond'
                                  PRECEDING AND CURRENT ROW) AS n  -- the failures in (at - window, at]
        FROM lookup_failure WHERE {where} AND at > :since AND at <= :now)
    SELECT max(at) FILTER (WHERE n >= :max) + CAST(:lock AS interval), count(*) FILTER (WHERE at > :now - CAST(:win AS interval))
    FROM f"""


def _state(conn: Connection, where: str, params: dict, lim: Limit, now: dt.datetime) -> tuple[dt.datetime | None, int]:
    """(locked until — None or past when not locked, failures in the window now)."""
    return tuple(conn.execute(text(_STATE.format(where=where)), {
        **params, "win": lim.window, "lock": lim.lock, "max": lim.max_failures, "now": now,
        "since": now - lim.window - lim.lock}).one())


def _guarded_find(conn: Connection, city: CityInfo, case_no: str, query_code: str, client: str | None,
                  endpoint: str) -> dict:
    """The case of ``case_no`` + ``query_code``, under the limits: TooManyAttempts while the client's
    address is locked for this number or for all (whatever the code), WrongCode (a failure counted)
    when they do not match."""
    limits = lookup_limits()
    case_key = (case_no or "").strip()[:40]
    addr = _addr_key(conn, client)
    conn.execute(text("SELECT pg_advisory_xact_lock(:c, hashtext(encode(:k, 'hex')))"), {"c": _LOCK_ADDR, "k": addr})
    # The time is read under the lock: read before, a guess that waited would count the failures up
    # to a moment before those written by the guesses it waited for, and miss them.
    now = lcal.now()
    by_case = ("addr_key = :addr AND city_id = :city AND case_key = :case",
               {"addr": addr, "city": city.id, "case": case_key})
    by_addr = ("addr_key = :addr", {"addr": addr})
    locks, left = [], []
    for scope, (where, params), lim in (("case", by_case, limits["per_case_per_address"]),
                                        ("address", by_addr, limits["per_address"])):
        until, n = _state(conn, where, params, lim, now)
        if until is not None and until > now:
            locks.append((until, scope))
        left.append(lim.max_failures - n - 1)  # tries left after one more failure (at ``now``, in the window)
    if locks:
        until, scope = max(locks)
        raise TooManyAttempts(scope, until, now)
    try:
        return _find(conn, city, case_key, query_code)
    except NotFound:
        pass
    conn.execute(text("""INSERT INTO lookup_failure (at, city_id, case_key, addr_key, endpoint)
                         VALUES (:now, :city, :case, :addr, :ep)"""),
                 {"now": now, "city": city.id, "case": case_key, "addr": addr, "ep": endpoint})
    keep = max(lim.window + lim.lock for lim in limits.values())
    # Clean-up on write: a few old rows at a time, skipping rows another transaction is deleting.
    conn.execute(text("""DELETE FROM lookup_failure WHERE id IN (
                             SELECT id FROM lookup_failure WHERE at < :cut ORDER BY at LIMIT 500 FOR UPDATE SKIP LOCKED)"""),
                 {"cut": now - keep})
    left = min(left)
    if left > 0:
        hint = f"（还可再试 {left} 次 {left} more tr{'y' if left == 1 else 'ies'} before look-ups are paused）"
        zh = f"案卷编号或查询码不正确（还可再试 {left} 次）"
    else:
        hint = "（查询已暂停 look-ups are now paused for a while）"
        zh = "案卷编号或查询码不正确（查询已暂停，请稍后再试）"
    raise WrongCode(f"案卷编号或查询码不正确 no case with this case number and query code {hint}",
                    code="case_code_wrong", zh=zh)


def _find(conn: Connection, city: CityInfo, case_no: str, query_code: str) -> dict:
    row = conn.execute(text("""
        SELECT id, case_no, state, received_at, closed_at, category_code, category_name, rating, query_code_hash,
               query_code_scheme, close_deadline_at, merged_into
        FROM case_file WHERE city_id = :c AND case_no = :n"""), {"c": city.id, "n": (case_no or "").strip()}).mappings().first()
    # The same answer for an unknown number and a wrong code: nothing to learn by guessing (a keyed
    # hash is computed either way, with the server's secret key: layers.cases.workflow.stored_query_code).
    given = wf.stored_query_code(row["case_no"] if row else (case_no or ""), (query_code or "").strip(),
                                 row["query_code_scheme"] if row else 2)
    if row is None or row["query_code_hash"] is None or not hmac.compare_digest(row["query_code_hash"].strip(), given):
        raise NotFound("no case with this case number and query code", code="case_code_wrong")
    return dict(row)


def status(conn: Connection, city: CityInfo, case_no: str, query_code: str, *, client: str | None = None) -> dict:
    """What the citizen may see: state, dates, public steps. No names, phones, notes or staff.

    ``client`` is the client's address, for the limits on wrong codes (:class:`TooManyAttempts`,
    :class:`WrongCode`, whose failure must be committed)."""
    return _public_status(conn, _guarded_find(conn, city, case_no, query_code, client, "status"))


def _public_status(conn: Connection, row: dict) -> dict:
    evs = conn.execute(text("""SELECT at, kind, to_state FROM case_event WHERE case_id = :c ORDER BY at, id"""),
                       {"c": row["id"]}).all()
    steps = [{"at": wf._iso(at), "step": EVENTS.get(kind, kind), "status": PUBLIC_STATE.get(to, to)}
             for at, kind, to in evs if kind in PUBLIC_EVENTS]
    merged_no = None
    if row["merged_into"]:
        merged_no = conn.execute(text("SELECT case_no FROM case_file WHERE id = :i"), {"i": row["merged_into"]}).scalar()
    return {"case_no": row["case_no"], "status": PUBLIC_STATE.get(row["state"], row["state"]), "state": row["state"],
            "category": row["category_name"], "received_at": wf._iso(row["received_at"]),
            "closed_at": wf._iso(row["closed_at"]), "due_at": wf._iso(row["close_deadline_at"]),
            "rating": RATINGS.get(row["rating"]) if row["rating"] else None,
            "can_rate": row["state"] == "closed" and row["rating"] is None,
            "merged_into": merged_no, "steps": steps}


def rate(conn: Connection, city: CityInfo, case_no: str, query_code: str, rating: str, comment: str | None = None,
         *, client: str | None = None) -> dict:
    """Rate a closed case; the same limits on wrong codes as :func:`status`."""
    return rate_row(conn, _guarded_find(conn, city, case_no, query_code, client, "rate"), rating, comment)


def rate_row(conn: Connection, row: dict, rating: str, comment: str | None = None) -> dict:
    """Rate the case of ``row`` (found by number and code, or by the citizen's WeChat openid): the
    rule of every citizen's rating — closed, not rated yet, one of RATINGS."""
    if rating not in RATINGS:
        raise InputError(f"rating must be one of {', '.join(RATINGS)} ({', '.join(RATINGS.values())})",
                         code="rating_invalid")
    if row["state"] != "closed":
        raise Conflict(f"case {row['case_no']} is not closed yet ({PUBLIC_STATE.get(row['state'])}): rate it when it is",
                       code="not_closed_yet", case=row["case_no"])
    if row["rating"] is not None:
        raise Conflict(f"case {row['case_no']} is rated already", code="already_rated", case=row["case_no"])
    at = lcal.now()
    conn.execute(text("UPDATE case_file SET rating = :r, updated_at = :at WHERE id = :i"),
                 {"r": rating, "i": row["id"], "at": at})
    wf._event(conn, row["id"], at, "rated", CITIZEN, "closed", "closed",
              note=(comment or "").strip()[:1000] or None, data={"rating": rating, "by": "citizen"})
    return _public_status(conn, {**row, "rating": rating})  # the row as it is now: no second look-up


def add_notice(conn: Connection, city: CityInfo, title: str, body: str, author, *,
               expires_at: dt.datetime | None = None) -> dict:
    title, body = (title or "").strip(), (body or "").strip()
    if not title or not body:
        raise InputError("a notice needs a title and a body", code="notice_incomplete")
    publication.check_public_text(conn, city.id, title, body)  # no caller's personal data in public
    row = conn.execute(text("""
        INSERT INTO notice (city_id, title, body, author_id, expires_at, published_at)
        VALUES (:c, :t, :b, :a, :e, :now) RETURNING id, published_at"""),
        {"c": city.id, "t": title[:200], "b": body[:10000], "a": getattr(author, "id", None), "e": expires_at,
         "now": lcal.now()}).one()
    return {"id": row[0], "title": title, "body": body, "published_at": wf._iso(row[1])}


def notices(conn: Connection, city: CityInfo, limit: int = 50) -> list[dict]:
    rows = conn.execute(text("""
        SELECT id, title, body, published_at FROM notice
        WHERE city_id = :c AND active AND (expires_at IS NULL OR expires_at > :now)
        ORDER BY published_at DESC, id DESC LIMIT :l"""), {"c": city.id, "l": limit, "now": lcal.now()}).all()
    return [{"id": r[0], "title": r[1], "body": r[2], "published_at": wf._iso(r[3])} for r in rows]


def public_categories() -> list[dict]:
    """Classes a citizen may choose (level 3 leaves, with their path)."""
    return [{"code": c["code"], "name": c["name"], "name_en": c.get("name_en"), "path": c["path"]}
            for c in wf.catalog().values() if c["level"] == 3]


__all__ = ["submit", "status", "rate", "TooManyAttempts", "WrongCode", "lookup_limits", "add_notice", "notices", "public_categories", "STATES"]
