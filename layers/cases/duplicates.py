"""The duplicate rule (并单): a new case of the same class, near an open case and soon after it, is
merged into that case instead of being dispatched a second time.

The radius and the time window are per class (``dup_radius_m`` / ``dup_window_h`` in the catalog,
inherited from the parent class; defaults in ``limits.json``: 50 m, 72 h). Channels do not matter:
a phone call and an inspector report of the same overflowing bin are one case.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, text

from layers.cases import calendar as lcal
from layers.cases.classes import catalog, limits
from layers.cases.vocab import FINAL_STATES, OPEN_STATES
from layers.core.errors import Conflict, InputError, NotFound


def rule_for(category_code: str) -> tuple[float, float]:
    """(radius in metres, window in hours) of a class."""
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
    The rule itself is the database function ``cg_find_duplicate`` (migration 0012), which opening a
    case applies too.
    """
    if location is None:
        return None
    radius, window = rule_for(category_code)
    return conn.execute(text("""
        SELECT cg_find_duplicate(:c, :cat, ST_SetSRID(ST_MakePoint(:x, :y), (SELECT working_srid FROM city WHERE id = :c)),
                                 :at, :r, :w, :open, :ex)"""),
        dict(c=city_id, cat=category_code, x=float(location.x), y=float(location.y), at=at, r=radius, w=window,
             open=sorted(OPEN_STATES), ex=exclude_id)).scalar()


def link_duplicate(conn: Connection, case_id: int, original_id: int, actor=None, *, at: dt.datetime | None = None,
                   note: str | None = None) -> None:
    """Merge ``case_id`` into ``original_id``: merged_into, state 'merged', an event on each case.

    A case already final (closed, merged, …) cannot be merged; nor into itself or into a closed case.
    (The database function ``cg_link_duplicate`` checks and writes; nothing is written on an error.)
    """
    out = conn.execute(text("SELECT cg_link_duplicate(:d, :o, :uid, :role, :at, :note, :final, :open)"),
                       dict(d=case_id, o=original_id, uid=getattr(actor, "id", None), role=getattr(actor, "role", None),
                            at=at or lcal.now(), note=note, final=sorted(FINAL_STATES),
                            open=sorted(OPEN_STATES))).scalar_one()
    if "error" in out:
        raise {404: NotFound, 409: Conflict}.get(out["error"], InputError)(out["message"])
