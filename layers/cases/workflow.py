"""One closed-loop workflow for hotline cases, inspector reports and citizen requests.

信息收集 → 受理/立案 (或不予立案) → 派遣 → 处置 → 反馈 → 核查 (不通过: 返工) → 结案 → 回访/评价,
plus 回退, 延期, 缓办, 挂账, 督办, 重办, 作废 and 并单 (layers/cases/duplicates.py).

Every step is one append-only ``case_event`` row: who (actor, role), when, from → to, the
department, a note, photos, and in ``data`` the deadline that applied to the step just finished
(``deadline``), whether it was met (``met``) and the next one (``next_deadline``). The analytics
read their KPIs from these rows.

Deadlines come from the class and urgency (``data/catalog.json`` and ``limits.json``) on the
working-time calendar (layers/cases/calendar.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, text

from layers.cases import calendar as lcal
from layers.cases import duplicates as ldup
from layers.cases.classes import catalog, limits
from layers.cases.vocab import (
    ACTION_LABELS,
    CHANNELS,
    FINAL_STATES,
    OPEN_STATES,
    RATINGS,
    REQUEST_TYPES,
    STATES,
)
from layers.core import grid as lgrid
from layers.core import publication
from layers.core.city import CityInfo
from layers.core.errors import Conflict, Forbidden, InputError, NotFound, field_label  # noqa: F401 - Forbidden is re-exported

DATA = Path(__file__).resolve().parent / "data"
SOURCES = ("hotline", "inspector", "citizen", "open311", "other")
URGENCIES = ("normal", "urgent", "emergency")
#: Roles that see the caller's contact: those that read the full text (the publication policy, layers/core/publication.py).
CONTACT_ROLES = publication.policy().full_text_roles


def _zh(label: str) -> str:
    """The Chinese part of a "中文 English" label (the vocabulary's labels)."""
    return label.split(" ", 1)[0] if label else label


# -- configuration --------------------------------------------------------------------------------

@lru_cache
def department_config() -> list[dict]:
    return json.loads((DATA / "departments.json").read_text(encoding="utf-8"))["departments"]


def category(code: str) -> dict:
    item = catalog().get((code or "").strip())
    if item is None:
        raise InputError(f"unknown category '{code}': see GET /api/v1/catalog for the codes",
                         code="unknown_class", value=code)
    return item


def _limit(pair) -> tuple[float, str]:
    return float(pair[0]), str(pair[1])


def step_limit(state: str, category_code: str, urgency: str) -> tuple[float, str] | None:
    """The time limit of the step a case in ``state`` is waiting for (None: no clock runs)."""
    lim = limits()
    step = {"collected": "accept", "accepted": "dispatch", "dispatched": "start", "verifying": "verify"}.get(state)
    if step:
        return _limit(lim["steps"][step][urgency])
    if state == "processing":
        item = catalog().get(category_code, {})
        # The class's own limit, unless the case was raised to an urgency the class does not carry.
        if item.get("limit") and (urgency == "normal" or item.get("urgency") == urgency):
            return _limit(item["limit"])
        return _limit(lim["handle"][urgency])
    return None


def close_limit(category_code: str, request_type: str | None, urgency: str) -> tuple[float, str]:
    lim = limits()["close"]
    if urgency in ("urgent", "emergency"):
        return _limit(lim[urgency])
    return _limit(lim.get(request_type or "", lim["default"]))


# -- departments -----------------------------------------------------------------------------

def ensure_departments(conn: Connection, city: CityInfo) -> dict[str, int]:
    """Create the configured departments and one street office (属地) per street; code → id."""
    for d in department_config():
        conn.execute(text("""
            INSERT INTO department (city_id, code, name, kind) VALUES (:c, :code, :name, 'department')
            ON CONFLICT (city_id, code) DO NOTHING"""), {"c": city.id, "code": d["code"], "name": d["name"]})
    conn.execute(text("""
        INSERT INTO department (city_id, code, name, kind, area_code)
        SELECT city_id, 'street-' || code, name || ' 街道/镇办事处', 'street', code
        FROM admin_area WHERE city_id = :c AND level = 'street'
        ON CONFLICT (city_id, code) DO NOTHING"""), {"c": city.id})
    return dict(conn.execute(text("SELECT code, id FROM department WHERE city_id = :c"), {"c": city.id}).all())


def user_department_id(conn: Connection, city_id: int, user) -> int | None:
    if user is None or not getattr(user, "department", None):
        return None
    return conn.execute(text("""
        SELECT id FROM department WHERE city_id = :c AND (code = :d OR name = :d) ORDER BY code = :d DESC LIMIT 1"""),
        {"c": city_id, "d": user.department}).scalar()


def _department(conn: Connection, city_id: int, ref) -> dict:
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        row = conn.execute(text("SELECT id, code, name, kind FROM department WHERE city_id = :c AND id = :i AND active"),
                           {"c": city_id, "i": int(ref)}).first()
    else:
        row = conn.execute(text("SELECT id, code, name, kind FROM department WHERE city_id = :c AND code = :i AND active"),
                           {"c": city_id, "i": str(ref)}).first()
    if row is None:
        raise InputError(f"no active department '{ref}' in this city", code="unknown_department", ref=ref)
    return {"id": row[0], "code": row[1], "name": row[2], "kind": row[3]}


def propose_department(conn: Connection, case_id: int) -> dict:
    """The responsible department by the rule 部件先属主、后属地；事件先属地、后属主.

    Owner: the class's department (an asset's own owner would come first when the asset layer
    names one). Territory: the street office of the case's cell. Returns the proposal and the
    ordered candidates with why each is there.
    """
    row = conn.execute(text("SELECT city_id, category_code, area_code, cell_code, asset_id FROM case_file WHERE id = :i"),
                       {"i": case_id}).first()
    if row is None:
        raise NotFound(f"no case {case_id}", code="case_not_found", case=case_id)
    city_id, cat, area_code, cell_code, asset_id = row
    item = catalog().get(cat, {})
    kind = item.get("kind", "event")
    owner = territory = None
    if asset_id is not None and conn.execute(text("SELECT to_regclass('asset') IS NOT NULL")).scalar():
        # The asset's own 主管部门 (DeptCode1), else its 权属单位 (DeptCode2), when a department has that code.
        r = conn.execute(text("""
            SELECT d.id, d.code, d.name FROM asset a
            JOIN department d ON d.city_id = a.city_id AND d.active AND d.code IN (a.dept_code1, a.dept_code2)
            WHERE a.id = :a AND a.city_id = :c ORDER BY d.code = a.dept_code1 DESC LIMIT 1"""),
            {"a": asset_id, "c": city_id}).first()
        if r:
            owner = {"id": r[0], "code": r[1], "name": r[2], "why": "属主 owner of the asset (主管/权属)"}
    if owner is None and item.get("department"):
        r = conn.execute(text("SELECT id, code, name FROM department WHERE city_id = :c AND code = :d AND active"),
                         {"c": city_id, "d": item["department"]}).first()
        if r:
            owner = {"id": r[0], "code": r[1], "name": r[2], "why": "属主 owner of the class"}
    street = (area_code or cell_code or "")[:9]
    if len(street) == 9:
        r = conn.execute(text("""SELECT id, code, name FROM department
                                 WHERE city_id = :c AND kind = 'street' AND area_code = :a AND active"""),
                         {"c": city_id, "a": street}).first()
        if r:
            territory = {"id": r[0], "code": r[1], "name": r[2], "why": "属地 street of the cell"}
    if kind == "event":
        order, rule = [territory, owner], "事件先属地、后属主 events: territory first, then owner"
    else:
        order, rule = [owner, territory], "部件先属主、后属地 components: owner first, then territory"
    cands = [c for c in order if c is not None]
    # Only a department someone works in can act on a case: the first staffed candidate is proposed;
    # when none is staffed, the first is, flagged unstaffed (无人员) for the dispatcher to see.
    staffed = staffed_departments(conn, city_id, [c["code"] for c in cands] + [c["name"] for c in cands])
    for c in cands:
        c["staffed"] = c["code"] in staffed or c["name"] in staffed
    ready = [c for c in cands if c["staffed"]]
    proposed = ready[0] if ready else (cands[0] if cands else None)
    return {"rule": rule, "kind": kind, "proposed": proposed, "candidates": cands,
            "unstaffed": bool(proposed is not None and not proposed["staffed"])}


def staffed_departments(conn: Connection, city_id: int, refs: list[str] | None = None) -> set[str]:
    """The department codes or names (as ``app_user.department`` holds them) with at least one active
    department user; only among ``refs`` when given."""
    sql = "SELECT DISTINCT department FROM app_user WHERE role = 'department' AND active AND department IS NOT NULL"
    params: dict = {}
    if refs is not None:
        sql += " AND department = ANY(:refs)"
        params["refs"] = list(refs)
    return {r[0] for r in conn.execute(text(sql), params)}


# -- opening a case ----------------------------------------------------------------------------

@dataclass
class CaseOpened:
    id: int
    case_no: str
    state: str
    merged_into: int | None
    cell_code: str | None
    query_code: str  # the citizen's lookup code: shown once, stored only as a hash
    step_deadline_at: dt.datetime | None = None
    close_deadline_at: dt.datetime | None = None
    #: Set when a deadline could not be computed (the calendar lacks a year): the case is recorded,
    #: its deadline flagged unknown and filled in when the year is loaded.
    calendar_warning: str | None = None


def hash_query_code(case_no: str, code: str) -> str:
    """sha256(case number ":" code): the unkeyed hash stored before migration 0017 (a copy of the
    database undid it in 10^6 tries). Now only a step of the keyed schemes below."""
    return hashlib.sha256(f"{case_no}:{code}".encode()).hexdigest()


def keyed_query_code(code: str) -> str:
    """HMAC(server key, "query-code:" code), hex: what the write functions (``cg_open_case``,
    ``cg_file_reports``) receive as ``query_code`` in place of the code, and store as
    sha256(case number ":" this) — scheme 2. The key (citygrid.secretkey) is never in the database,
    so a copy of it is not enough to try codes; the code itself never reaches the database."""
    from citygrid.secretkey import server_key

    return hmac.new(server_key(), b"query-code:" + code.encode(), hashlib.sha256).hexdigest()


def stored_query_code(case_no: str, code: str, scheme: int) -> str:
    """What ``case_file.query_code_hash`` holds for ``code`` under ``scheme`` (``query_code_scheme``):
    2 as above; 1 for codes issued before migration 0017, keyed there without knowing them:
    HMAC(server key, "query-code-v1:" sha256(case number ":" code))."""
    if scheme == 1:
        from citygrid.secretkey import server_key

        return hmac.new(server_key(), b"query-code-v1:" + hash_query_code(case_no, code).encode(),
                        hashlib.sha256).hexdigest()
    return hash_query_code(case_no, keyed_query_code(code))


def new_query_code() -> str:
    return f"{secrets.randbelow(10**6):06d}"


def next_case_numbers(conn: Connection, city: CityInfo, day: dt.date, n: int = 1) -> list[str]:
    """Reserve ``n`` case numbers <adcode><yyyymmdd><8-digit serial> for ``day``.

    The serial comes from a database sequence: taking a number locks nothing, so concurrent intake
    never waits on another transaction. Numbers only grow; a rolled-back intake leaves a gap (a
    number is never given twice). The serial wraps after 10^8 numbers, far beyond a city's day.
    """
    return list(conn.execute(text("SELECT cg_case_no(:p) FROM generate_series(1, :n)"),
                             {"p": f"{city.adcode}{day:%Y%m%d}", "n": n}).scalars().all())


def _aware(t: dt.datetime) -> dt.datetime:
    if not isinstance(t, dt.datetime):
        raise InputError(f"a time must be a date and time, got {t!r}", code="time_invalid")
    return lcal.calendar().local(t) if t.tzinfo is None else t


def snap_one(conn: Connection, city: CityInfo, location, grid: lgrid.LoadedGrid | None = None) -> tuple[int, str]:
    """(cell id, cell code) of a working-CRS point; InputError when it lies outside the city."""
    x, y = float(location.x), float(location.y)
    if not (np.isfinite(x) and np.isfinite(y)):
        raise InputError("the location is not a finite point", code="location_invalid")
    grid = grid or lgrid.snapper(conn, city)
    j = int(grid.locate(np.array([x]), np.array([y]))[0])
    if j < 0:
        raise InputError(f"the location ({x:.1f}, {y:.1f} in {city.working_crs}) is outside the city",
                         code="location_outside_city")
    return int(grid.ids[j]), str(grid.codes[j])


def _event(conn: Connection, case_id: int, at: dt.datetime, kind: str, actor, from_state, to_state,
           department_id=None, note=None, photos=None, data=None) -> int:
    return conn.execute(text("""
        INSERT INTO case_event (case_id, at, kind, actor_id, actor_role, from_state, to_state, department_id,
                                note, photos, data)
        VALUES (:c, :at, :k, :uid, :role, :fs, :ts, :dep, :note, :photos, CAST(:data AS jsonb)) RETURNING id"""),
        dict(c=case_id, at=at, k=kind, uid=getattr(actor, "id", None), role=getattr(actor, "role", None),
             fs=from_state, ts=to_state, dep=department_id, note=note, photos=photos,
             data=json.dumps(data or {}, ensure_ascii=False, default=str))).scalar_one()


def _json_value(v):
    """A value as the case functions read it: times as ISO 8601 text (str() of a datetime, as the
    events have always stored them), everything else as JSON has it."""
    return str(v) if isinstance(v, dt.datetime | dt.date) else v


@dataclass
class CasePlan:
    """What opening a case writes, decided in Python: ``params`` for the database function
    ``cg_open_case`` (migration 0012) and what the caller is told beside the ids."""

    params: dict
    cell_code: str | None
    query_code: str
    step_deadline_at: dt.datetime | None
    close_deadline_at: dt.datetime | None
    calendar_warning: str | None = None


def check_call(description: str | None, address: str | None, location) -> None:
    """What the call form (受理) must give: a description of the problem, and an address or a location."""
    if not (description or "").strip():
        raise InputError("describe the problem (description is empty)", code="call_description_missing")
    if not (address or "").strip() and location is None:
        raise InputError("give an address or a location (none given)", code="call_place_missing")


#: How far a case's receipt may lie ahead of the clock (``open_case`` refuses more). No event of a case is
#: therefore older than its receipt less this: reads of a case's events (its detail, the KPIs' cohort)
#: bound ``case_event.at`` by it, which prunes the monthly partitions before (migration 0025).
RECEIPT_LEAD = dt.timedelta(days=1)


def plan_case(city: CityInfo, grid: lgrid.LoadedGrid | None, *, source: str, channel: str, category_code: str,
              received_at: dt.datetime, location=None, description: str | None = None, address: str | None = None,
              urgency: str = "normal", request_type: str | None = None, asset_id: int | None = None,
              source_ref: str | None = None, contact: dict | None = None, actor=None, title: str | None = None,
              location_source: str | None = None, location_accuracy_m: float | None = None,
              category_name: str | None = None, location_confidence: float | None = None,
              conn: Connection | None = None, cell: tuple[int, str] | None = None) -> CasePlan:
    """Validate a new case and decide all that it writes (cell, deadlines, query code, the duplicate
    rule of its class) without touching the database, except to load the grid when ``grid`` is None
    and a location is given (then ``conn`` is needed). ``cell``: the (id, code) the caller snapped
    ``location`` to already with ``grid``."""
    if source not in SOURCES:
        raise InputError(f"unknown source '{source}': one of {', '.join(SOURCES)}", code="unknown_source", value=source)
    if channel not in CHANNELS:
        raise InputError(f"unknown channel '{channel}': one of {', '.join(CHANNELS)}", code="unknown_channel",
                         value=channel)
    item = category(category_code)
    if urgency not in URGENCIES:
        raise InputError(f"unknown urgency '{urgency}': one of {', '.join(URGENCIES)}", code="unknown_urgency")
    if request_type is not None and request_type not in REQUEST_TYPES:
        raise InputError(f"unknown request type '{request_type}': one of {', '.join(REQUEST_TYPES)}",
                         code="unknown_request_type", value=request_type)
    # A class may be urgent by nature (a missing manhole cover): the stricter urgency applies.
    if item.get("urgency") and URGENCIES.index(item["urgency"]) > URGENCIES.index(urgency):
        urgency = item["urgency"]
    received_at = _aware(received_at)
    if received_at > lcal.now() + RECEIPT_LEAD:
        raise InputError(f"received_at {received_at.isoformat()} is in the future", code="time_in_future")
    for name, value, cap in (("description", description, 5000), ("address", address, 500), ("title", title, 200)):
        if value is not None and len(value) > cap:
            raise InputError(f"{name} is longer than {cap} characters", code="text_too_long",
                             field=field_label(name), cap=cap)
    if source_ref is not None:
        source_ref = str(source_ref).strip()[:80] or None
    cell_id = cell_code = area_code = None
    x = y = None
    if location is not None:
        cell_id, cell_code = cell or snap_one(conn, city, location, grid)
        area_code = cell_code[:12]
        x, y = float(location.x), float(location.y)
    cal = lcal.calendar()
    step = step_limit("collected", item["code"], urgency)
    close_lim = close_limit(item["code"], request_type, urgency)
    # A call is never lost for want of a calendar year: the case is recorded, its deadline flagged
    # unknown (event data 'deadline_pending') until the year is loaded (layers.cases.calendar.import_year).
    step_deadline, why_step = lcal.add_or_none(received_at, *step, cal=cal)
    close_deadline, why_close = lcal.add_or_none(received_at, *close_lim, cal=cal)
    pending = _pending(received_at, "collected", step if why_step else None, close_lim if why_close else None,
                       why_step or why_close)
    qcode = new_query_code()
    radius, window = ldup.rule_for(item["code"])
    contact = {k: (contact or {}).get(k) or None for k in ("name", "phone", "openid")}
    params = {
        "city_id": city.id, "srid": city.srid, "case_no_prefix": f"{city.adcode}{cal.local(received_at):%Y%m%d}",
        "source": source, "channel": channel, "source_ref": source_ref, "received_at": received_at.isoformat(),
        "category_code": item["code"], "category_name": category_name or item["name"], "request_type": request_type,
        "urgency": urgency, "title": title, "description": description, "address": address, "x": x, "y": y,
        "location_source": location_source, "location_accuracy_m": location_accuracy_m,
        "location_confidence": location_confidence, "cell_id": cell_id, "cell_code": cell_code,
        "area_code": area_code, "asset_id": asset_id, "step_deadline_at": step_deadline and step_deadline.isoformat(),
        "close_deadline_at": close_deadline and close_deadline.isoformat(), "query_code": keyed_query_code(qcode),
        "contact": contact,
        "actor_id": getattr(actor, "id", None), "actor_role": getattr(actor, "role", None),
        "event_data": {k: _json_value(v) for k, v in {
            "source": source, "channel": channel, "urgency": urgency, "next_deadline": step_deadline,
            "next_limit": list(step), "close_deadline": close_deadline, "located": location is not None,
            **({"deadline_pending": pending} if pending else {})}.items()},
        "dup": {"radius_m": radius, "window_h": window, "open": sorted(OPEN_STATES),
                "note": "并单 same class, nearby, recent"},
    }
    return CasePlan(params, cell_code, qcode, step_deadline, close_deadline, why_step or why_close)


def _pending(at: dt.datetime, state: str, step, close, why: str | None) -> dict | None:
    """The event data of deadlines the calendar could not compute: what to compute them from later."""
    if not why:
        return None
    out: dict = {"reason": why}
    if step:
        out["step"] = {"from": at.isoformat(), "amount": step[0], "unit": step[1], "state": state}
    if close:
        out["close"] = {"from": at.isoformat(), "amount": close[0], "unit": close[1]}
    return out


def case_opened(plan: CasePlan, out: dict) -> CaseOpened:
    """The answer of ``cg_open_case`` (an error it returned raised as Conflict) as a CaseOpened."""
    if "error" in out:
        raise Conflict(out["message"])
    merged = out.get("merged_into")
    return CaseOpened(int(out["id"]), out["case_no"], out["state"], merged, plan.cell_code, plan.query_code,
                      None if merged else plan.step_deadline_at, plan.close_deadline_at, plan.calendar_warning)



def open_case(conn: Connection, city: CityInfo, **kw) -> CaseOpened:
    """Record a new case: snap its cell, set its deadlines, log 'received', apply 并单 (see
    :func:`plan_case` for the arguments; the writing is ``cg_open_case``, one round trip)."""
    plan = plan_case(city, None, conn=conn, **kw)
    out = conn.execute(text("SELECT cg_open_case(CAST(:p AS jsonb))"),
                       {"p": json.dumps(plan.params, ensure_ascii=False)}).scalar_one()
    return case_opened(plan, out)


# -- the state machine ------------------------------------------------------------------------

#: action → (event kind, states it may start from, the state it leads to; None = computed)
ACTIONS: dict[str, tuple[str, frozenset, str | None]] = {
    "accept": ("accepted", frozenset({"collected"}), "accepted"),
    "reject": ("rejected", frozenset({"collected"}), "rejected"),
    "dispatch": ("dispatched", frozenset({"accepted", "dispatched"}), "dispatched"),
    "return": ("returned", frozenset({"dispatched", "processing"}), "accepted"),
    "start": ("started", frozenset({"dispatched"}), "processing"),
    "feedback": ("feedback", frozenset({"processing"}), None),  # verifying, or feedback without a check
    "verify_ok": ("verify_ok", frozenset({"verifying"}), "feedback"),
    "verify_fail": ("verify_fail", frozenset({"verifying"}), "processing"),
    "close": ("closed", frozenset({"feedback", "accepted"}), "closed"),
    "rate": ("rated", frozenset({"closed"}), "closed"),
    "extend": ("extended", frozenset({"dispatched", "processing"}), None),  # same state
    "defer": ("deferred", frozenset({"accepted", "dispatched", "processing"}), "deferred"),
    "suspend": ("suspended", frozenset({"accepted", "dispatched", "processing", "deferred"}), "suspended"),
    "resume": ("resumed", frozenset({"deferred", "suspended"}), None),  # the state before
    "supervise": ("supervised", OPEN_STATES, None),  # same state
    "reopen": ("reopened", frozenset({"closed"}), "accepted"),
    "void": ("voided", frozenset({"collected", "accepted"}), "void"),
}

ROLE_ACTIONS: dict[str, frozenset] = {
    "operator": frozenset({"accept", "reject", "dispatch", "close", "rate", "extend", "defer", "suspend", "resume",
                           "reopen", "void"}),
    "department": frozenset({"start", "feedback", "return"}),
    "inspector": frozenset({"verify_ok", "verify_fail"}),
    "supervisor": frozenset(ACTIONS),
    "admin": frozenset(ACTIONS),
    "planner": frozenset(),
}
NEEDS_REASON = frozenset({"reject", "return", "defer", "suspend", "void", "verify_fail", "extend", "reopen"})


def needs_reason(action: str, state: str) -> bool:
    """Whether ``action`` from ``state`` must say why: the actions of NEEDS_REASON, and closing a case
    that was never dispatched (直接办结: the note says how it was answered)."""
    return action in NEEDS_REASON or (action == "close" and state == "accepted")

_CASE_COLS = ("id, city_id, case_no, state, department_id, category_code, request_type, urgency, cell_code, "
              "area_code, step_deadline_at, close_deadline_at, updated_at, rework_count, merged_into, rating, source")


def _load(conn: Connection, case_id: int, lock: bool = False) -> dict:
    row = conn.execute(text(f"SELECT {_CASE_COLS} FROM case_file WHERE id = :i" + (" FOR UPDATE" if lock else "")),
                       {"i": case_id}).mappings().first()
    if row is None:
        raise NotFound(f"no case {case_id}")
    return dict(row)


def in_area(user, case: dict) -> bool:
    """An inspector without an area works city-wide; otherwise the case's cell must be in the area."""
    area = getattr(user, "area_code", None)
    if not area:
        return True
    return (case.get("cell_code") or case.get("area_code") or "").startswith(area)


def authorize(conn: Connection, case: dict, action: str, actor) -> None:
    if actor is None:
        raise Forbidden("an action needs a signed-in user", code="not_signed_in")
    allowed = ROLE_ACTIONS.get(actor.role, frozenset())
    if action not in allowed:
        raise Forbidden(f"role '{actor.role}' may not '{action}' a case; it may: {', '.join(sorted(allowed)) or 'nothing'}",
                        code="not_your_role")
    if actor.role == "department":
        mine = user_department_id(conn, case["city_id"], actor)
        if mine is None or case["department_id"] != mine:
            raise Forbidden(f"case {case['case_no']} is not assigned to your department ({actor.department})",
                            code="not_your_department", case=case["case_no"])
    if actor.role == "inspector" and not in_area(actor, case):
        raise Forbidden(f"case {case['case_no']} is outside your area {actor.area_code}", code="not_your_area",
                        case=case["case_no"])


def _iso(t):
    return t.astimezone(dt.UTC).isoformat() if t is not None else None


def transition(conn: Connection, case_id: int, action: str, actor, **kw) -> dict:
    """Apply ``action`` to a case as ``actor``; returns the new state, deadlines and the event id.

    Keywords: ``note`` / ``reason`` (required for reject, return, defer, suspend, void, verify_fail,
    extend, reopen), ``photos`` (list of references), ``department`` (id or code, dispatch),
    ``override_reason`` (dispatch to another than the proposed department), ``rating`` (rate:
    satisfied/basic/unsatisfied), ``amount`` + ``unit`` (extend), ``at`` (the time, default now).
    """
    if action not in ACTIONS:
        raise InputError(f"unknown action '{action}': one of {', '.join(ACTIONS)}", code="unknown_action",
                         value=action)
    kind, sources, target = ACTIONS[action]
    case = _load(conn, case_id, lock=True)
    authorize(conn, case, action, actor)
    state = case["state"]
    if state not in sources:
        if state == "merged":
            raise Conflict(f"case {case['case_no']} was merged into case {case['merged_into']} (并单): act on that one",
                           code="case_merged", case=case["case_no"], into=case["merged_into"])
        raise Conflict(f"cannot {action} case {case['case_no']}: it is {STATES.get(state, state)}; "
                       f"'{action}' needs one of: {', '.join(sorted(sources))}", code="bad_transition",
                       case=case["case_no"], state=_zh(STATES.get(state, state)),
                       action=_zh(ACTION_LABELS.get(action, action)))
    at = _aware(kw.get("at") or lcal.now())
    note = kw.get("reason") or kw.get("note")
    note = note.strip() if isinstance(note, str) else None
    if action in NEEDS_REASON and not note:
        raise InputError(f"'{action}' needs a reason", code="reason_missing", action=_zh(ACTION_LABELS.get(action, action)))
    if needs_reason(action, state) and not note:  # closing without dispatch
        raise InputError("closing a case without dispatch (直接办结) needs a note saying how it was answered",
                         code="close_note_missing")
    photos = kw.get("photos") or None
    if photos is not None and (not isinstance(photos, list) or not all(isinstance(p, str) for p in photos)):
        raise InputError("photos must be a list of photo references", code="photos_invalid")
    if action in ("verify_ok", "verify_fail") and limits().get("verify_needs_photo", True) and not photos:
        raise InputError(f"'{action}': the on-site check (核查) needs at least one photo", code="verify_photo_missing")
    cal = lcal.calendar()
    data: dict = {}
    why = pending_close = None
    # The step just finished: its deadline and whether it was met.
    if case["step_deadline_at"] is not None and action not in ("supervise", "extend", "rate"):
        data["deadline"] = _iso(case["step_deadline_at"])
        data["met"] = at <= case["step_deadline_at"]
    sets: dict = {}
    dep_id = case["department_id"]
    new_state = target or state

    if action == "dispatch":
        proposal = propose_department(conn, case_id)
        ref = kw.get("department")
        if ref in (None, ""):
            if proposal["proposed"] is None:
                raise InputError("no department can be proposed for this case: name one", code="no_department_proposed")
            dep = proposal["proposed"]
        else:
            dep = _department(conn, case["city_id"], ref)
        proposed_id = proposal["proposed"]["id"] if proposal["proposed"] else None
        override = kw.get("override_reason")
        if dep["id"] != proposed_id:
            if not (isinstance(override, str) and override.strip()):
                raise InputError(f"dispatching to {dep['code']} instead of the proposed "
                                 f"{proposal['proposed']['code'] if proposal['proposed'] else 'nobody'}: "
                                 "give override_reason", code="override_reason_missing",
                                 proposed=_zh(proposal["proposed"]["name"]) if proposal["proposed"] else "无")
            data["override_reason"] = override.strip()
        if state == "dispatched" and dep["id"] == case["department_id"]:
            raise Conflict(f"case {case['case_no']} is already dispatched to {dep['code']}", code="already_dispatched",
                           case=case["case_no"])
        data["proposed"] = proposal["proposed"]["code"] if proposal["proposed"] else None
        data["rule"] = proposal["rule"]
        data["department"] = dep["code"]
        dep_id = dep["id"]
        sets["department_id"] = dep_id
    elif action == "return":
        data["department"] = case["department_id"]
        sets["department_id"] = None
        dep_id = case["department_id"]
    elif action == "feedback":
        item = catalog().get(case["category_code"], {})
        if item.get("feedback_photos_required") and not kw.get("after_photos"):
            raise InputError(feedback_photos_message(item))
        needs_check = item.get("check", True)
        new_state = "verifying" if needs_check else "feedback"
    elif action == "verify_fail":
        sets["rework_count"] = case["rework_count"] + 1
        data["rework"] = case["rework_count"] + 1
    elif action == "close":
        sets["closed_at"] = at
        if case["close_deadline_at"] is not None:
            data["close_deadline"] = _iso(case["close_deadline_at"])
            data["close_met"] = at <= case["close_deadline_at"]
    elif action == "rate":
        rating = kw.get("rating")
        if rating not in RATINGS:
            raise InputError(f"rating must be one of {', '.join(RATINGS)} ({', '.join(RATINGS.values())})",
                             code="rating_invalid")
        if case["rating"] is not None:
            raise Conflict(f"case {case['case_no']} is rated already ({case['rating']})", code="already_rated",
                           case=case["case_no"])
        sets["rating"] = rating
        data["rating"] = rating
    elif action == "extend":
        try:
            amount = float(kw.get("amount"))
        except (TypeError, ValueError):
            raise InputError("'extend' needs amount (a number) and unit (wh, eh or wd)", code="extend_invalid") from None
        unit = kw.get("unit") or "wd"
        if not (0 < amount <= 365):
            raise InputError(f"extension amount must be between 0 and 365, got {amount}", code="extend_invalid")
        old_step, old_close = case["step_deadline_at"], case["close_deadline_at"]
        base = old_step or at
        sets["step_deadline_at"] = cal.add(base, amount, unit)
        if old_close is not None:
            sets["close_deadline_at"] = cal.add(old_close, amount, unit)
        data.update(old_deadline=_iso(old_step), new_deadline=_iso(sets["step_deadline_at"]),
                    old_close_deadline=_iso(old_close), new_close_deadline=_iso(sets.get("close_deadline_at")),
                    amount=amount, unit=unit, approved_by=actor.role)
    elif action in ("defer", "suspend"):
        data["prev_state"] = state if state not in ("deferred", "suspended") else _prev_state(conn, case_id)
        data["approved_by"] = actor.role
    elif action == "resume":
        new_state = _prev_state(conn, case_id)
    elif action == "supervise":
        if not note:
            raise InputError("a supervision notice (督办) needs its text in note", code="supervise_note_missing")
    elif action == "reopen":
        reopened = conn.execute(text("SELECT count(*) FROM case_event WHERE case_id = :c AND kind = 'reopened'"),
                                {"c": case_id}).scalar_one() + 1
        data["reopen_count"] = reopened
        data["escalated"] = reopened >= limits().get("reopen_escalate", 3)
        sets["closed_at"] = None
        sets["rating"] = None
        sets["department_id"] = None
        dep_id = case["department_id"]
        reopen_lim = close_limit(case["category_code"], case["request_type"], case["urgency"])
        sets["close_deadline_at"], why = lcal.add_or_none(at, *reopen_lim, cal=cal)
        if why:
            pending_close = reopen_lim

    # The clock of the next step. The action is never refused for want of a calendar year: the
    # deadline is flagged unknown and filled in when the year is loaded ('extend' is refused instead:
    # a new deadline is all it is for).
    if action not in ("extend", "supervise", "rate"):
        lim = step_limit(new_state, case["category_code"], case["urgency"])
        nxt, why_step = lcal.add_or_none(at, *lim, cal=cal) if lim else (None, None)
        why = why_step or why
        pend = _pending(at, new_state, lim if why_step else None, pending_close, why)
        if pend:
            data["deadline_pending"] = pend
        sets["step_deadline_at"] = nxt
        data["next_deadline"] = _iso(nxt)
        data["next_limit"] = list(lim) if lim else None
    sets["state"] = new_state
    sets["updated_at"] = at
    assign = ", ".join(f"{k} = :{k}" for k in sets)
    conn.execute(text(f"UPDATE case_file SET {assign} WHERE id = :id"), {**sets, "id": case_id})
    event_id = _event(conn, case_id, at, kind, actor, state, new_state, dep_id, note, photos, data)
    after = _load(conn, case_id)
    return {"id": case_id, "case_no": case["case_no"], "action": action, "event_id": event_id,
            "from_state": state, "state": new_state, "department_id": after["department_id"],
            "step_deadline_at": _iso(after["step_deadline_at"]), "close_deadline_at": _iso(after["close_deadline_at"]),
            "data": data, **({"calendar_warning": why} if why else {})}


def feedback_photos_message(item: dict) -> str:
    """Why a feedback of a class whose 处置反馈 needs photos was refused (zh-CN first)."""
    return (f"「{item.get('name', item.get('code'))}」类案件的处置反馈须上传至少一张处置后照片，请在反馈时上传照片 — "
            "this class needs at least one 'after' photo with the feedback: upload it with "
            "POST /api/v1/cases/{id}/feedback")


def _prev_state(conn: Connection, case_id: int) -> str:
    prev = conn.execute(text("""
        SELECT data->>'prev_state' FROM case_event WHERE case_id = :c AND kind IN ('deferred', 'suspended')
        ORDER BY at DESC, id DESC LIMIT 1"""), {"c": case_id}).scalar()
    if prev not in OPEN_STATES:
        raise Conflict("the state before the deferral is unknown")
    return prev


# -- reading ---------------------------------------------------------------------------------------

def allowed_actions(conn: Connection, case_id: int, user) -> list[dict]:
    """The actions ``user`` may apply to the case now: its role's, from the case's state, through the
    same gate as ``transition`` (own department, inspector's area); for the pages' buttons."""
    case = _load(conn, case_id)
    role_actions = ROLE_ACTIONS.get(getattr(user, "role", None), frozenset())
    out = [{"action": action, "to": target, "needs_reason": needs_reason(action, case["state"])}
           for action, (_, sources, target) in ACTIONS.items()
           if case["state"] in sources and action in role_actions
           and not (action == "rate" and case["rating"] is not None)]
    # Beyond the role, the gate (own department, inspector's area) is the same for every action.
    if out:
        try:
            authorize(conn, case, out[0]["action"], user)
        except Forbidden:
            return []
    return out


def clock(case: dict, at: dt.datetime | None = None) -> dict | None:
    """Time left and the overdue colour of the step a case waits for."""
    if case.get("step_deadline_at") is None or case["state"] in FINAL_STATES:
        return None
    lim = step_limit(case["state"], case["category_code"], case["urgency"])
    unit = lim[1] if lim else "eh"
    start = case.get("updated_at") or case["step_deadline_at"]
    return lcal.calendar().status(start, case["step_deadline_at"], unit, at or lcal.now())


def visibility(conn: Connection, city: CityInfo, user) -> tuple[str, dict]:
    """SQL condition on case_file ``c`` limiting what ``user`` may see."""
    role = getattr(user, "role", None)
    if role in ("operator", "supervisor", "admin", "planner"):
        return "TRUE", {}
    if role == "department":
        return "c.department_id = :my_dep", {"my_dep": user_department_id(conn, city.id, user) or -1}
    if role == "inspector":
        return ("c.state IN ('collected', 'verifying') AND (CAST(:my_area AS text) IS NULL "
                "OR coalesce(c.cell_code, c.area_code, '') LIKE :my_area || '%')"), {"my_area": user.area_code}
    return "FALSE", {}


_LIST_COLS = """c.id, c.case_no, c.source, c.channel, c.received_at, c.category_code, c.category_name,
    c.request_type, c.urgency, c.title, c.description, c.address, c.cell_code, c.area_code, c.state,
    c.department_id, d.code AS department_code, d.name AS department_name, c.step_deadline_at,
    c.close_deadline_at, c.closed_at, c.rating, c.merged_into, c.rework_count, c.updated_at,
    c.location_source, c.location_confidence, c.source_ref,
    CASE WHEN c.location IS NULL THEN NULL ELSE ST_X(ST_Transform(c.location, 4326)) END AS lon,
    CASE WHEN c.location IS NULL THEN NULL ELSE ST_Y(ST_Transform(c.location, 4326)) END AS lat"""


def _row_out(r: dict, at: dt.datetime) -> dict:
    out = dict(r)
    for k in ("received_at", "step_deadline_at", "close_deadline_at", "closed_at", "updated_at"):
        out[k] = _iso(out[k])
    out["state_label"] = STATES.get(r["state"], r["state"])
    out["clock"] = clock(r, at)
    return out


def list_cases(conn: Connection, city: CityInfo, user, *, state: str | None = None, category: str | None = None,
               department: str | None = None, overdue: bool | None = None, needs_location: bool = False,
               q: str | None = None, limit: int = 100, offset: int = 0) -> dict:
    where, params = visibility(conn, city, user)
    conds = ["c.city_id = :city", where]
    params.update(city=city.id, lim=limit, off=offset)
    if state:
        states = [s.strip() for s in state.split(",") if s.strip()]
        bad = [s for s in states if s not in STATES]
        if bad:
            raise InputError(f"unknown state '{bad[0]}': one of {', '.join(STATES)}", code="unknown_state",
                             value=bad[0])
        conds.append("c.state = ANY(:states)")
        params["states"] = states
    if category:
        conds.append("c.category_code LIKE :cat || '%'")
        params["cat"] = category
    if department:
        conds.append("(d.code = :dep OR CAST(d.id AS text) = :dep)")
        params["dep"] = department
    if overdue is not None:
        conds.append(("" if overdue else "NOT ") + "coalesce(c.step_deadline_at < :now, false)")
        params["now"] = lcal.now()
    if needs_location:
        # Written out as the partial index case_unlocated_open_idx's predicate (migration 0026), so that
        # the planner proves it even in a generic plan of a prepared statement: the queue then reads
        # the unlocated open cases, not the city's history.
        conds.append(UNLOCATED_OPEN)
    if q:
        if publication.text_form(getattr(user, "role", None)) == "full":
            conds.append("(c.case_no = :q OR c.description ILIKE '%' || :q || '%' OR c.address ILIKE '%' || :q || '%')")
        else:  # text the role sees scrubbed is no search key (it would tell whether a case holds a phone)
            conds.append("c.case_no = :q")
        params["q"] = q
    sql_where = " WHERE " + " AND ".join(conds)
    base = " FROM case_file c LEFT JOIN department d ON d.id = c.department_id"
    rows = conn.execute(text(f"SELECT {_LIST_COLS}" + base + sql_where +
                             " ORDER BY c.received_at DESC, c.id DESC LIMIT :lim OFFSET :off"), params).mappings().all()
    at = lcal.now()
    return {**_bounded_total(conn, base + sql_where, params, offset=offset, limit=limit, shown=len(rows)),
            "cases": publication.staff_cases(conn, [_row_out(dict(r), at) for r in rows], getattr(user, "role", None))}


#: The needs-location queue's condition, word for word the predicate of its partial index
#: (``case_unlocated_open_idx``, migration 0026): open states as literals, not a parameter.
UNLOCATED_OPEN = ("c.location IS NULL AND c.state IN ("
                  + ", ".join(f"'{s}'" for s in sorted(OPEN_STATES)) + ")")


def _bounded_total(conn: Connection, from_where: str, params: dict, *, offset: int, limit: int,
                   shown: int) -> dict:
    """A list's total without counting a province's history: exact up to ``list_count_cap`` cases
    (``CITYGRID_CASES_LIST_COUNT_CAP``, 10,000); past it ``total_exact`` is false, ``total_at_least``
    what is known for sure (the cap, or the rows up to this page) and ``total`` the planner's estimate of
    the rows, never below that (plus one while a page comes back full: a client paging until ``total``
    still asks for the next page)."""
    from citygrid import settings

    cap = settings.case_list().list_count_cap
    n = conn.execute(text(f"SELECT count(*) FROM (SELECT 1{from_where} LIMIT :cap_plus_one) t"),
                     {**params, "cap_plus_one": cap + 1}).scalar_one()
    if n <= cap:
        return {"total": n, "total_exact": True}
    plan = conn.execute(text(f"EXPLAIN (FORMAT JSON) SELECT 1{from_where}"), params).scalar_one()
    if isinstance(plan, str):
        plan = json.loads(plan)
    estimate = int(plan[0]["Plan"]["Plan Rows"])
    at_least = max(cap, offset + shown)
    return {"total": max(estimate, cap + 1, offset + shown + (1 if shown == limit else 0)),
            "total_exact": False, "total_at_least": at_least}


def case_detail(conn: Connection, city: CityInfo, case_id: int, user) -> dict:
    where, params = visibility(conn, city, user)
    # The case's month first (case_key, one index look-up): the queries below then name their partition
    # instead of planning and probing every month of case_file (migration 0025).
    received = conn.execute(text("SELECT received_at FROM case_key WHERE id = :i AND city_id = :c"),
                            {"i": case_id, "c": city.id}).scalar()
    row = None if received is None else conn.execute(
        text(f"SELECT {_LIST_COLS} FROM case_file c LEFT JOIN department d ON d.id = c.department_id "
             f"WHERE c.id = :id AND c.received_at = :r AND c.city_id = :city AND {where}"),
        {**params, "id": case_id, "r": received, "city": city.id}).mappings().first()
    if row is None:
        if received is not None:
            raise Forbidden(f"case {case_id} is not among the cases your role may see", code="case_not_visible",
                            case=case_id)
        raise NotFound(f"no case {case_id} in {city.slug}", code="case_not_found", case=case_id)
    out = _row_out(dict(row), lcal.now())
    out["events"] = events(conn, case_id, since=received)
    if getattr(user, "role", None) in CONTACT_ROLES:
        c = conn.execute(text("SELECT name, phone FROM case_contact WHERE case_id = :c"), {"c": case_id}).first()
        out["contact"] = {"name": c[0], "phone": c[1]} if c else None
    # What an importing source said of the case, as given (its category label, raw status): staff only.
    out["source_data"] = conn.execute(text("SELECT source_data FROM case_file WHERE id = :c AND received_at = :r"),
                                      {"c": case_id, "r": received}).scalar()
    out["proposal"] = propose_department(conn, case_id) if row["state"] in ("accepted", "collected") else None
    out["duplicates"] = [r[0] for r in conn.execute(
        text("SELECT case_no FROM case_file WHERE merged_into = :c ORDER BY id"), {"c": case_id})]
    return publication.staff_cases(conn, [out], getattr(user, "role", None))[0]


def events(conn: Connection, case_id: int, *, public: bool = False, since: dt.datetime | None = None) -> list[dict]:
    """The case's events in order. ``since``: the case's received_at, when known — no event of a case is
    older than its receipt less :data:`RECEIPT_LEAD`, and the bound prunes the months of case_event before it."""
    bound, params = "", {"c": case_id}
    if since is not None:
        bound, params["s"] = " AND e.at >= :s", since - RECEIPT_LEAD
    rows = conn.execute(text(f"""
        SELECT e.id, e.at, e.kind, e.actor_role, e.from_state, e.to_state, d.code, e.note, e.photos, e.data
        FROM case_event e LEFT JOIN department d ON d.id = e.department_id
        WHERE e.case_id = :c{bound} ORDER BY e.at, e.id"""), params).all()
    out = []
    for r in rows:
        ev = {"id": r[0], "at": _iso(r[1]), "kind": r[2], "actor_role": r[3], "from_state": r[4], "to_state": r[5],
              "department": r[6], "note": r[7], "photos": r[8], "data": r[9]}
        if public:
            ev = {"at": ev["at"], "kind": ev["kind"], "state": r[5]}
        out.append(ev)
    return out


def alerts(conn: Connection, city: CityInfo, user, *, levels=("yellow", "red"), limit: int = 500) -> list[dict]:
    """Open cases whose step clock is yellow (≥ 80 % used) or red (overdue), most urgent first."""
    where, params = visibility(conn, city, user)
    rows = conn.execute(text(f"""
        SELECT {_LIST_COLS} FROM case_file c LEFT JOIN department d ON d.id = c.department_id
        WHERE c.city_id = :city AND {where} AND c.state = ANY(:open) AND c.step_deadline_at IS NOT NULL
        ORDER BY c.step_deadline_at LIMIT :lim"""),
        {**params, "city": city.id, "open": sorted(OPEN_STATES), "lim": limit * 4}).mappings().all()
    at = lcal.now()
    out = [o for o in (_row_out(dict(r), at) for r in rows) if o["clock"] and o["clock"]["level"] in levels]
    return publication.staff_cases(conn, out[:limit], getattr(user, "role", None))


def place_location(conn: Connection, city: CityInfo, case_id: int, location, actor, *, source: str = "operator") -> dict:
    """An operator places a case of the "needs location" queue on the map: snap, log 'located'."""
    case = _load(conn, case_id, lock=True)
    if case["city_id"] != city.id:
        raise NotFound(f"no case {case_id} in {city.slug}")
    if case["state"] in FINAL_STATES:
        raise Conflict(f"case {case['case_no']} is {case['state']}: it can no longer be placed")
    cell_id, cell_code = snap_one(conn, city, location)
    conn.execute(text("""
        UPDATE case_file SET location = ST_SetSRID(ST_MakePoint(:x, :y), :srid), location_source = :src,
               location_confidence = 1.0, cell_id = :cell, cell_code = :code, area_code = :area WHERE id = :id"""),
        dict(x=location.x, y=location.y, srid=city.srid, src=source, cell=cell_id, code=cell_code,
             area=cell_code[:12], id=case_id))
    at = lcal.now()
    _event(conn, case_id, at, "located", actor, case["state"], case["state"], case["department_id"],
           data={"cell_code": cell_code, "source": source})
    return {"id": case_id, "case_no": case["case_no"], "cell_code": cell_code}
