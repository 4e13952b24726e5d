"""The duplicate rule (并单): a new case of the same class, near an open case and soon after it, is
merged into that case instead of being dispatched a second time.

The radius and the time window are per class (``dup_radius_m`` / ``dup_window_h`` in the catalog,
inherited from the parent class; defaults in ``limits.json``: 50 m, 72 h). Channels do not matter:
a phone call and an inspector report of the same overflowing bin are one case.
"""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import Connection, text

from layers import calendar as lcal
from layers.case_vocab import FINAL_STATES, OPEN_STATES
from layers.errors import Conflict, InputError, NotFound


def rule_for(category_code: str) -> tuple[float, float]:
    """(radius in metres, window in hours) of a class."""
    from layers.workflow import catalog, limits

    d = limits()["duplicate"]
    item = catalog().get(category_code)
    radius = float((item or {}).get("dup_radius_m") or d["radius_m"])
    window = float((item or {}).get("dup_window_h") or d["window_h"])
    return radius, window


def find_duplicate(conn: Connection, city_id: int, category_code: str, location, at: dt.datetime,
                   *, exclude_id: int | None = None) -> int | None:
    """The open case this one duplicates: same class, within the class radius of ``location`` (a
    working-CRS shapely Point) and received in the window before ``at``; None without a location.

    The nearest, then the earliest, wins; merged cases are never originals (the chain stays flat).
    """
    if location is None:
        return None
    radius, window = rule_for(category_code)
    srid = conn.execute(text("SELECT working_srid FROM city WHERE id = :c"), {"c": city_id}).scalar_one()
    row = conn.execute(text("""
        SELECT id FROM case_file
        WHERE city_id = :c AND category_code = :cat AND merged_into IS NULL
          AND state = ANY(:open)
          AND received_at BETWEEN :since AND :at
          AND location IS NOT NULL
          AND ST_DWithin(location, ST_SetSRID(ST_MakePoint(:x, :y), :srid), :r)
          AND (CAST(:ex AS bigint) IS NULL OR id <> :ex)
        ORDER BY ST_Distance(location, ST_SetSRID(ST_MakePoint(:x, :y), :srid)), received_at, id
        LIMIT 1"""), dict(c=city_id, cat=category_code, open=sorted(OPEN_STATES),
                          since=at - dt.timedelta(hours=window), at=at, x=float(location.x),
                          y=float(location.y), srid=srid, r=radius, ex=exclude_id)).first()
    return int(row[0]) if row else None


def link_duplicate(conn: Connection, case_id: int, original_id: int, actor=None, *, at: dt.datetime | None = None,
                   note: str | None = None) -> None:
    """Merge ``case_id`` into ``original_id``: merged_into, state 'merged', an event on each case.

    A case already final (closed, merged, …) cannot be merged; nor into itself or into a closed case.
    """
    if case_id == original_id:
        raise InputError("a case cannot be merged into itself")
    at = at or lcal.now()
    rows = {r[0]: r for r in conn.execute(text("""
        SELECT id, state, merged_into, city_id, case_no FROM case_file WHERE id = ANY(:ids) FOR UPDATE"""),
        {"ids": [case_id, original_id]})}
    if case_id not in rows:
        raise NotFound(f"no case {case_id}")
    if original_id not in rows:
        raise NotFound(f"no case {original_id}")
    dup, orig = rows[case_id], rows[original_id]
    if dup[3] != orig[3]:
        raise InputError("cases of different cities cannot be merged")
    if dup[1] in FINAL_STATES:
        raise Conflict(f"case {dup[4]} is {dup[1]}: it cannot be merged")
    if orig[1] not in OPEN_STATES or orig[2] is not None:
        raise Conflict(f"case {orig[4]} is {orig[1]}: merge into an open case")
    role = getattr(actor, "role", None)
    uid = getattr(actor, "id", None)
    conn.execute(text("""
        UPDATE case_file SET merged_into = :o, state = 'merged', step_deadline_at = NULL, updated_at = :at
        WHERE id = :d"""), {"o": original_id, "d": case_id, "at": at})
    conn.execute(text("""
        INSERT INTO case_event (case_id, at, kind, actor_id, actor_role, from_state, to_state, note, data)
        VALUES (:d, :at, 'merged', :uid, :role, :fs, 'merged', :note, CAST(:data AS jsonb)),
               (:o, :at, 'merged', :uid, :role, :os, :os, :note, CAST(:odata AS jsonb))"""),
        dict(d=case_id, o=original_id, at=at, uid=uid, role=role, fs=dup[1], os=orig[1], note=note,
             data=json.dumps({"merged_into": original_id, "merged_into_no": orig[4]}),
             odata=json.dumps({"duplicate": case_id, "duplicate_no": dup[4]})))
