"""The working-time calendar: deadlines in 工作时, 紧急工作时 and 工作日.

* ``wh`` 工作时 — working hours: only the work periods of workdays count (08:30–12:00, 13:30–17:30
  by default);
* ``eh`` 紧急工作时 — emergency hours: clock hours, nights, weekends and holidays included;
* ``wd`` 工作日 — working days: the deadline is the end of the N-th workday after the day of
  receipt (the day of receipt itself does not count).

A workday is a weekday that is not a holiday, or a make-up workday (调休上班) even on a weekend.
The rules that never change are ``layers/cases/data/calendar.json``; the holidays and make-up
workdays of each year come from that year's State Council notice: shipped files
(``layers/cases/data/calendar_years/<year>.json``) and years loaded into the database (table
``calendar_year``, ``citygrid calendar import FILE`` or ``POST /api/v1/admin/calendar/years``), the
database winning for a year it has.

**Configured years.** Before the first configured year only weekends count as days off (the result is
exact for weekends but knows no holidays: it is flagged approximate). A deadline that would run
into a year after the first configured one that is not configured raises :class:`CalendarMissing`
— never a silent guess; clocks (time left, colour) are still shown, flagged ``calendar_complete:
false``.

**Working time in O(log n).** The calendar keeps, for every day from 1970 to 2100, its cumulative
working seconds (a prefix sum) and its cumulative count of workdays; working seconds between two
instants are two look-ups, a deadline is one ``searchsorted``. Old cases cost the same as new ones.

All functions take and return timezone-aware datetimes; naive ones are read as local time. Working
time is counted on the local wall clock (as the step-by-day reckoning always did).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from layers.core.errors import CalendarMissing, InputError

DATA = Path(__file__).resolve().parent / "data"
YEARS_DIR = DATA / "calendar_years"
UNITS = {"wh": "工作时 working hours", "eh": "紧急工作时 clock hours", "wd": "工作日 working days"}
#: The span the day arrays cover (instants outside it are refused as input errors).
FIRST_DAY = dt.date(1970, 1, 1)
LAST_DAY = dt.date(2100, 12, 31)
_BASE = FIRST_DAY.toordinal()
#: How often a process looks for years loaded by another process (seconds).
REFRESH_SECONDS = 2.0


def now() -> dt.datetime:
    """The clock of the workflow (tests replace it to freeze time)."""
    return dt.datetime.now(dt.UTC)


def _hm(s: str) -> dt.time:
    h, m = s.split(":")
    return dt.time(int(h), int(m))


def _secs(t: dt.time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


@dataclass
class WorkCalendar:
    timezone: str = "Asia/Shanghai"
    weekend: tuple[int, ...] = (5, 6)
    work_periods: tuple[tuple[dt.time, dt.time], ...] = ((dt.time(8, 30), dt.time(12)), (dt.time(13, 30), dt.time(17, 30)))
    holidays: frozenset[dt.date] = field(default_factory=frozenset)
    workdays: frozenset[dt.date] = field(default_factory=frozenset)
    #: Years whose holiday notice is configured; None: the years of the listed dates.
    years: frozenset[int] | None = None
    #: year → the notice it came from (title, document number, date, where it was loaded from).
    sources: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.years is None:
            self.years = frozenset(d.year for d in (*self.holidays, *self.workdays))

    @classmethod
    def from_config(cls, cfg: dict, years: dict | None = None) -> WorkCalendar:
        """The calendar of a configuration dict (``calendar.json``) plus ``years``: year → a checked
        year document (see :func:`check_year`)."""
        try:
            periods = tuple((_hm(a), _hm(b)) for a, b in cfg.get("work_periods", [["08:30", "12:00"], ["13:30", "17:30"]]))
            if not periods or any(a >= b for a, b in periods) or any(periods[i][1] > periods[i + 1][0] for i in range(len(periods) - 1)):
                raise InputError("work_periods must be increasing, non-overlapping [start, end] pairs")
            hol = {dt.date.fromisoformat(d) for d in cfg.get("holidays", [])}
            wrk = {dt.date.fromisoformat(d) for d in cfg.get("workdays", [])}
            yrs = set(cfg["years"]) if "years" in cfg else {d.year for d in (*hol, *wrk)}
            sources = {}
            for y, doc in (years or {}).items():
                hol = {d for d in hol if d.year != y} | {dt.date.fromisoformat(d) for d in doc["holidays"]}
                wrk = {d for d in wrk if d.year != y} | {dt.date.fromisoformat(d) for d in doc["workdays"]}
                yrs.add(int(y))
                sources[int(y)] = doc.get("source")
            cal = cls(timezone=cfg.get("timezone", "Asia/Shanghai"), weekend=tuple(cfg.get("weekend", (5, 6))),
                      work_periods=periods, holidays=frozenset(hol), workdays=frozenset(wrk),
                      years=frozenset(int(y) for y in yrs), sources=sources)
            ZoneInfo(cal.timezone)
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"calendar configuration is invalid: {e}") from None
        return cal

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local(self, t: dt.datetime) -> dt.datetime:
        if t.tzinfo is None:
            return t.replace(tzinfo=self.tz)
        return t.astimezone(self.tz)

    def is_workday(self, d: dt.date) -> bool:
        if d in self.workdays:
            return True
        if d in self.holidays:
            return False
        return d.weekday() not in self.weekend

    def periods_on(self, d: dt.date) -> list[tuple[dt.datetime, dt.datetime]]:
        if not self.is_workday(d):
            return []
        return [(dt.datetime.combine(d, a, self.tz), dt.datetime.combine(d, b, self.tz)) for a, b in self.work_periods]

    @property
    def hours_per_day(self) -> float:
        return self._day_seconds / 3600

    @property
    def first_year(self) -> int | None:
        return min(self.years) if self.years else None

    @property
    def last_year(self) -> int | None:
        """The last year of the run of configured years that starts at the first one."""
        if not self.years:
            return None
        y = min(self.years)
        while y + 1 in self.years:
            y += 1
        return y

    # -- the day arrays (built once per calendar) ------------------------------------------------
    @cached_property
    def _periods_s(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = np.array([_secs(p[0]) for p in self.work_periods], dtype=np.float64)
        b = np.array([_secs(p[1]) for p in self.work_periods], dtype=np.float64)
        return a, b, np.concatenate([[0.0], np.cumsum(b - a)])

    @cached_property
    def _day_seconds(self) -> int:
        return int(sum(_secs(b) - _secs(a) for a, b in self.work_periods))

    @cached_property
    def _days(self) -> dict:
        n = LAST_DAY.toordinal() - _BASE + 1
        ords = np.arange(_BASE, _BASE + n, dtype=np.int64)
        work = ~np.isin((ords - 1) % 7, np.array(self.weekend, dtype=np.int64))
        for d in self.holidays:
            if FIRST_DAY <= d <= LAST_DAY:
                work[d.toordinal() - _BASE] = False
        for d in self.workdays:
            if FIRST_DAY <= d <= LAST_DAY:
                work[d.toordinal() - _BASE] = True
        year = (np.arange(n).astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970)
        first = self.first_year
        if first is None:  # nothing configured: weekends only everywhere, flagged, never refused
            approx = np.ones(n, dtype=bool)
            missing = np.zeros(n, dtype=bool)
        else:
            approx = year < first
            missing = (year >= first) & ~np.isin(year, np.array(sorted(self.years), dtype=np.int64))
        zero = np.zeros(1, dtype=np.int64)
        return {"work": work, "year": year,
                "cum": np.concatenate([zero, np.cumsum(work.astype(np.int64) * self._day_seconds)]),
                "wcount": np.concatenate([zero, np.cumsum(work.astype(np.int64))]),
                "miss": np.concatenate([zero, np.cumsum(missing.astype(np.int64))]),
                "approx": np.concatenate([zero, np.cumsum(approx.astype(np.int64))])}

    def _index(self, d: dt.date) -> int:
        if not (FIRST_DAY <= d <= LAST_DAY):
            raise InputError(f"{d} is outside the calendar's span ({FIRST_DAY.year}–{LAST_DAY.year})")
        return d.toordinal() - _BASE

    @cached_property
    def _scalar(self) -> tuple[list, list, list, list]:
        """Python lists of the day arrays, for one instant at a time (numpy scalar access costs more)."""
        d = self._days
        a, b, _ = self._periods_s
        return d["work"].tolist(), d["cum"].tolist(), list(zip(a.tolist(), b.tolist(), strict=True)), \
            (d["miss"].tolist(), d["approx"].tolist())

    def _pos(self, t: dt.datetime) -> tuple[int, float]:
        """(day index, working seconds of that day before ``t``) of an instant, on the local wall clock."""
        t = self.local(t)
        i = self._index(t.date())
        work, _, periods, _ = self._scalar
        if not work[i]:
            return i, 0.0
        tod = t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6
        w = 0.0
        for a, b in periods:
            if tod > a:
                w += (b if tod > b else tod) - a
        return i, w

    def _missing_year(self, i: int, j: int) -> int | None:
        """The first not-configured year (after the first configured one) among days i..j, or None."""
        miss = self._days["miss"]
        lo, hi = min(i, j), max(i, j)
        if miss[hi + 1] - miss[lo] == 0:
            return None
        k = int(np.searchsorted(miss, miss[lo] + 1, side="left")) - 1
        return int(self._days["year"][k])

    def _refuse(self, i: int, j: int) -> None:
        y = self._missing_year(i, j)
        if y is not None:
            raise CalendarMissing(
                f"工作日历缺少{y}年节假日安排 the working-time calendar has no holiday schedule for {y} "
                f"(configured: {self.describe_years()}): this deadline cannot be computed. An administrator loads "
                f"the State Council notice for {y} with `citygrid calendar import FILE` or POST "
                f"/api/v1/admin/calendar/years", year=y)

    def describe_years(self) -> str:
        return ", ".join(str(y) for y in sorted(self.years)) or "none"

    def complete_between(self, a: dt.datetime, b: dt.datetime) -> bool:
        """True when every day from ``a`` to ``b`` lies in a configured year (no approximation)."""
        i, j = sorted((self._pos(a)[0], self._pos(b)[0]))
        miss, approx = self._scalar[3]
        return miss[j + 1] - miss[i] == 0 and approx[j + 1] - approx[i] == 0

    def _at(self, j: int, sec: float) -> dt.datetime:
        """Local wall time ``sec`` seconds after midnight of day index ``j``."""
        day = dt.date.fromordinal(_BASE + j)
        return dt.datetime.combine(day, dt.time(0), self.tz) + dt.timedelta(seconds=sec)

    # -- working hours ------------------------------------------------------------------------
    def add_working_seconds(self, start: dt.datetime, seconds: float) -> dt.datetime:
        t = self.local(start)
        if seconds <= 0:
            return t
        if self._day_seconds <= 0 or self._days["wcount"][-1] == 0:
            raise InputError("the calendar has no working time: check holidays/weekend")
        cum = self._days["cum"]
        i, w = self._pos(t)
        rel = w + float(seconds)  # working seconds from the start of day i
        j = int(np.searchsorted(cum, cum[i] + rel, side="left")) - 1
        if j >= len(cum) - 1:
            raise InputError(f"a deadline {seconds / 3600:g} working hours after {t} falls beyond {LAST_DAY.year}")
        self._refuse(i, j)
        rem = rel - float(cum[j] - cum[i])
        a, _, cp = self._periods_s
        k = min(int(np.searchsorted(cp[1:], rem, side="left")), len(a) - 1)
        return self._at(j, a[k] + (rem - cp[k]))

    def working_seconds_between(self, a: dt.datetime, b: dt.datetime) -> float:
        """Working seconds in [a, b] (negative when b < a); two look-ups, whatever the span."""
        ia, wa = self._pos(a)
        ib, wb = self._pos(b)
        cum = self._scalar[1]
        return float(cum[ib] - cum[ia]) + (wb - wa)

    # -- working days -------------------------------------------------------------------------
    def add_working_days(self, start: dt.datetime, n: int) -> dt.datetime:
        i = self._index(self.local(start).date())
        wc = self._days["wcount"]
        target = wc[i + 1] + max(int(n), 1)
        j = int(np.searchsorted(wc, target, side="left")) - 1
        if j >= len(wc) - 1:
            raise InputError(f"a deadline {n} working days after {start} falls beyond {LAST_DAY.year}")
        self._refuse(i, j)
        return dt.datetime.combine(dt.date.fromordinal(_BASE + j), self.work_periods[-1][1], self.tz)

    # -- one interface ------------------------------------------------------------------------
    def add(self, start: dt.datetime, amount: float, unit: str) -> dt.datetime:
        """The deadline ``amount`` ``unit`` after ``start`` (UTC); :class:`CalendarMissing` when it
        would run into a year whose holiday schedule is not configured."""
        if amount < 0:
            raise InputError(f"a time limit cannot be negative ({amount} {unit})")
        if unit == "eh":
            out = self.local(start) + dt.timedelta(hours=amount)
        elif unit == "wh":
            out = self.add_working_seconds(start, amount * 3600)
        elif unit == "wd":
            if amount != int(amount):
                raise InputError(f"working days must be whole days, got {amount}")
            out = self.add_working_days(start, int(amount))
        else:
            raise InputError(f"unknown time unit '{unit}': one of {', '.join(UNITS)}")
        return out.astimezone(dt.UTC)

    def used(self, start: dt.datetime, at: dt.datetime, unit: str) -> float:
        """Seconds of the limit's kind spent between start and at (working seconds for wh/wd)."""
        if unit == "eh":
            return (self.local(at) - self.local(start)).total_seconds()
        return self.working_seconds_between(start, at)

    def status(self, start: dt.datetime, deadline: dt.datetime, unit: str, at: dt.datetime) -> dict:
        """Time left and the overdue colour: green < 80 % of the limit used, yellow 80–100 %, red > 100 %.
        ``calendar_complete`` is false when the span reaches a day of a year that is not configured
        (weekends only were counted there)."""
        total = self.used(start, deadline, unit)
        spent = self.used(start, at, unit)
        left = self.used(at, deadline, unit) if at <= deadline else -self.used(deadline, at, "eh")
        frac = spent / total if total > 0 else (0.0 if at <= deadline else float("inf"))
        level = "red" if at > deadline else ("yellow" if frac >= 0.8 else "green")
        complete = unit == "eh" or self.complete_between(min(start, at, deadline), max(start, at, deadline))
        return {"deadline": deadline.astimezone(dt.UTC).isoformat(), "unit": unit,
                "left_seconds": round(left), "used_fraction": round(frac, 4) if frac != float("inf") else None,
                "overdue": at > deadline, "level": level, "calendar_complete": bool(complete)}


# -- the years: shipped files and the database --------------------------------------------------------

def check_year(doc) -> dict:
    """A year document (``{"year", "source": {"title", …}, "holidays": [...], "workdays": [...]}``)
    checked: every date of that year, make-up workdays on weekend days, no date in both lists, the
    notice named. Returns it normalised (sorted ISO dates); InputError says what is wrong."""
    if not isinstance(doc, dict):
        raise InputError("a calendar year is a JSON object with year, source, holidays and workdays")
    y = doc.get("year")
    if not isinstance(y, int) or isinstance(y, bool) or not (FIRST_DAY.year <= y <= LAST_DAY.year):
        raise InputError(f"year must be an integer between {FIRST_DAY.year} and {LAST_DAY.year}, got {y!r}")
    src = doc.get("source")
    if not isinstance(src, dict) or not isinstance(src.get("title"), str) or not src["title"].strip():
        raise InputError("source.title must name the notice the dates come from "
                         "(e.g. 国务院办公厅关于2027年部分节假日安排的通知), with document_no and date")
    out = {}
    for key in ("holidays", "workdays"):
        vals = doc.get(key, [])
        if not isinstance(vals, list) or len(vals) > 366:
            raise InputError(f"{key} must be a list of dates (YYYY-MM-DD)")
        days = set()
        for v in vals:
            try:
                d = dt.date.fromisoformat(v) if isinstance(v, str) else None
            except ValueError:
                d = None
            if d is None:
                raise InputError(f"{key}: {str(v)[:40]!r} is not a date (YYYY-MM-DD)")
            if d.year != y:
                raise InputError(f"{key}: {d} is not in {y}")
            days.add(d)
        out[key] = days
    if not out["holidays"]:
        raise InputError(f"no holidays for {y}: a notice always gives some")
    both = out["holidays"] & out["workdays"]
    if both:
        raise InputError(f"{min(both)} is both a holiday and a make-up workday")
    return {"year": y, "source": {k: v for k, v in src.items() if isinstance(v, str | int | float | bool)},
            "holidays": sorted(d.isoformat() for d in out["holidays"]),
            "workdays": sorted(d.isoformat() for d in out["workdays"])}


def _check_weekend_workdays(base: dict, doc: dict) -> None:
    weekend = set(base.get("weekend", (5, 6)))
    wrong = [d for d in doc["workdays"] if dt.date.fromisoformat(d).weekday() not in weekend]
    if wrong:
        raise InputError(f"workdays lists make-up workdays (调休上班) on weekend days; {wrong[0]} is a weekday")


@lru_cache
def base_config() -> dict:
    return json.loads((DATA / "calendar.json").read_text(encoding="utf-8"))


@lru_cache
def shipped_years() -> dict[int, dict]:
    out = {}
    for p in sorted(YEARS_DIR.glob("*.json")):
        doc = check_year(json.loads(p.read_text(encoding="utf-8")))
        doc["source"]["loaded_from"] = f"shipped file {p.name}"
        out[doc["year"]] = doc
    return out


def database_years(conn) -> dict[int, dict]:
    from sqlalchemy import text

    rows = conn.execute(text("SELECT year, holidays, workdays, source, loaded_at, loaded_by FROM calendar_year")).all()
    return {int(r[0]): {"year": int(r[0]), "holidays": [d.isoformat() for d in r[1]],
                        "workdays": [d.isoformat() for d in r[2]],
                        "source": {**(r[3] or {}), "loaded_from": f"database, {r[4].isoformat()} by {r[5] or '?'}"}}
            for r in rows}


def build(db_years: dict | None = None) -> WorkCalendar:
    """The calendar of the shipped files overlaid with the database's years."""
    return WorkCalendar.from_config(base_config(), {**shipped_years(), **(db_years or {})})


class _Current:
    """The process's calendar. Bound to an engine (the app's, the CLI's), it looks at most every
    :data:`REFRESH_SECONDS` for a change of the ``calendar_year`` table (one tiny query) and rebuilds
    when another process loaded a year; a deadline refused for a missing year looks again at once
    (so a year loaded a moment ago is never refused by a process that has not noticed yet)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.engine = None
        self.stamp = None
        self.checked = 0.0
        self.cal: WorkCalendar | None = None

    def get(self, *, force: bool = False) -> WorkCalendar:
        if self.engine is None:
            if self.cal is None:
                self.cal = build()
            return self.cal
        if force or self.cal is None or time.monotonic() - self.checked > REFRESH_SECONDS:
            with self.lock:
                self._refresh()
        return self.cal

    def _refresh(self) -> None:
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        try:
            with self.engine.connect() as conn:
                stamp = tuple(conn.execute(text("SELECT count(*), max(loaded_at) FROM calendar_year")).one())
                if stamp != self.stamp or self.cal is None:
                    self.cal = build(database_years(conn) if stamp[0] else {})
                    self.stamp = stamp
        except DBAPIError:
            if self.cal is None:  # no table yet (an old schema) or no database: the shipped years
                self.cal = build()
        self.checked = time.monotonic()


_current = _Current()


def bind(engine) -> None:
    """Read loaded years from this engine's database from now on (the app's lifespan, the CLI)."""
    _current.engine = engine
    _current.cal = None
    _current.stamp = None


def calendar(*, force: bool = False) -> WorkCalendar:
    """The configured calendar (shipped years + years loaded into the bound database)."""
    return _current.get(force=force)


def add_or_none(start: dt.datetime, amount: float, unit: str, cal: WorkCalendar | None = None):
    """``(deadline, None)``, or ``(None, message)`` when the calendar lacks a year the deadline needs
    (looked for again at once in the database first). For the places that must record what they
    are given — a call, a report — and flag its deadline as unknown rather than lose it."""
    cal = cal or calendar()
    try:
        return cal.add(start, amount, unit), None
    except CalendarMissing:
        cal = calendar(force=True)
        try:
            return cal.add(start, amount, unit), None
        except CalendarMissing as e:
            return None, str(e)


def import_year(conn, doc, *, loaded_by: str | None = None) -> dict:
    """Store a year (replacing the stored one of that year), then give the open cases whose deadline
    was flagged unknown their deadline where it is now computable. Returns what was done."""
    from sqlalchemy import text

    doc = check_year(doc)
    _check_weekend_workdays(base_config(), doc)
    conn.execute(text("""
        INSERT INTO calendar_year (year, holidays, workdays, source, loaded_at, loaded_by)
        VALUES (:y, CAST(:h AS date[]), CAST(:w AS date[]), CAST(:s AS jsonb), clock_timestamp(), :by)
        ON CONFLICT (year) DO UPDATE SET holidays = EXCLUDED.holidays, workdays = EXCLUDED.workdays,
            source = EXCLUDED.source, loaded_at = EXCLUDED.loaded_at, loaded_by = EXCLUDED.loaded_by"""),
        {"y": doc["year"], "h": doc["holidays"], "w": doc["workdays"],
         "s": json.dumps(doc["source"], ensure_ascii=False), "by": loaded_by})
    cal = build(database_years(conn))
    filled = fill_pending_deadlines(conn, cal)
    if _current.engine is not None:
        _current.stamp = None  # this process: rebuild at the next use
        _current.checked = 0.0
    return {"year": doc["year"], "holidays": len(doc["holidays"]), "workdays": len(doc["workdays"]),
            "source": doc["source"], "configured_years": sorted(cal.years), "last_year": cal.last_year,
            "deadlines_filled": filled}


def fill_pending_deadlines(conn, cal: WorkCalendar) -> dict:
    """Open cases whose step or close deadline was recorded as unknown (event data
    ``deadline_pending``) get it now, if the calendar can compute it; an event 'note' says so."""
    from sqlalchemy import text

    # The step's pending deadline is in the event that started the step (the latest with
    # 'next_deadline'), the close deadline's in the latest 'received' or 'reopened' event.
    rows = conn.execute(text("""
        SELECT c.id, c.state, c.step_deadline_at, c.close_deadline_at,
            (SELECT e.data->'deadline_pending'->'step' FROM case_event e
             WHERE e.case_id = c.id AND e.data ? 'next_deadline' ORDER BY e.at DESC, e.id DESC LIMIT 1),
            (SELECT e.data->'deadline_pending'->'close' FROM case_event e
             WHERE e.case_id = c.id AND e.kind IN ('received', 'reopened') ORDER BY e.at DESC, e.id DESC LIMIT 1)
        FROM case_file c
        WHERE (c.step_deadline_at IS NULL OR c.close_deadline_at IS NULL)
          AND c.state NOT IN ('closed', 'void', 'merged', 'rejected')
          AND EXISTS (SELECT 1 FROM case_event e WHERE e.case_id = c.id AND e.data ? 'deadline_pending')""")).all()
    out = {"step": 0, "close": 0, "still_unknown": 0}
    for cid, state, step_dl, close_dl, p_step, p_close in rows:
        sets = {}
        for which, current, p in (("step", step_dl, p_step), ("close", close_dl, p_close)):
            if current is not None or not p or (which == "step" and p.get("state") != state):
                continue
            try:
                sets[f"{which}_deadline_at"] = cal.add(dt.datetime.fromisoformat(p["from"]), p["amount"], p["unit"])
            except CalendarMissing:
                out["still_unknown"] += 1
        if not sets:
            continue
        for k in sets:
            out[k.split("_")[0]] += 1
        conn.execute(text(f"UPDATE case_file SET {', '.join(f'{k} = :{k}' for k in sets)} WHERE id = :id"),
                     {**sets, "id": cid})
        conn.execute(text("""
            INSERT INTO case_event (case_id, at, kind, from_state, to_state, note, data)
            VALUES (:c, :at, 'note', :s, :s, :note, CAST(:d AS jsonb))"""),
            {"c": cid, "at": now(), "s": state, "note": "工作日历已补充, 期限已计算 deadline computed after the calendar year was loaded",
             "d": json.dumps({"deadline_filled": {k: v.isoformat() for k, v in sets.items()}})})
    return out


# -- many deadlines at once ---------------------------------------------------------------------------

def add_many(cal: WorkCalendar, starts: np.ndarray, amount: float, unit: str) -> np.ndarray:
    """Deadlines for many start times (UNIX seconds, float64) at once; returns UNIX seconds, NaN where
    the deadline would run into a year that is not configured (see :meth:`WorkCalendar.add`)."""
    starts = np.asarray(starts, dtype=np.float64)
    if len(starts) == 0:
        return starts
    if unit == "eh":
        return starts + amount * 3600.0
    if unit not in UNITS:
        raise InputError(f"unknown time unit '{unit}': one of {', '.join(UNITS)}")
    d = cal._days
    offs = _offsets(starts, cal.tz)
    local = starts + offs
    day = np.floor(local / 86400.0)
    i = (day + (dt.date(1970, 1, 1).toordinal() - _BASE)).astype(np.int64)
    if (i < 0).any() or (i >= len(d["work"])).any():
        raise InputError(f"a time is outside the calendar's span ({FIRST_DAY.year}–{LAST_DAY.year})")
    a, b, cp = cal._periods_s
    if unit == "wh":
        tod = local - day * 86400.0
        within = np.where(d["work"][i], np.clip(tod[:, None] - a, 0.0, b - a).sum(axis=1), 0.0)
        rel = within + amount * 3600.0
        if amount <= 0:
            return starts
        j = np.searchsorted(d["cum"], d["cum"][i] + rel, side="left") - 1
        if (j >= len(d["work"])).any():
            raise InputError(f"a deadline falls beyond {LAST_DAY.year}")
        rem = rel - (d["cum"][j] - d["cum"][i])
        k = np.minimum(np.searchsorted(cp[1:], rem, side="left"), len(a) - 1)
        sec = a[k] + (rem - cp[k])
    else:
        if amount != int(amount):
            raise InputError(f"working days must be whole days, got {amount}")
        j = np.searchsorted(d["wcount"], d["wcount"][i + 1] + max(int(amount), 1), side="left") - 1
        if (j >= len(d["work"])).any():
            raise InputError(f"a deadline falls beyond {LAST_DAY.year}")
        sec = np.full(len(starts), float(_secs(cal.work_periods[-1][1])))
    local_out = (j - (dt.date(1970, 1, 1).toordinal() - _BASE)).astype(np.float64) * 86400.0 + sec
    out = local_out - _offsets(local_out - offs, cal.tz)
    refused = d["miss"][j + 1] - d["miss"][i] > 0
    return np.where(refused, np.nan, out)


def _offsets(t: np.ndarray, tz: ZoneInfo) -> np.ndarray:
    """UTC offset (seconds) of ``tz`` at many UNIX times, one look-up per distinct hour."""
    hours = np.floor(t / 3600.0)
    uh, inv = np.unique(hours, return_inverse=True)
    offs = np.array([dt.datetime.fromtimestamp(float(h) * 3600.0, tz).utcoffset().total_seconds() for h in uh])
    return offs[inv]


def _local_ordinals(starts: np.ndarray, tz: ZoneInfo) -> np.ndarray:
    """Local calendar day (ordinal) of many UNIX times, handling DST by the offset of each hour."""
    hours = np.floor(starts / 3600.0)
    uh, inv = np.unique(hours, return_inverse=True)
    offs = np.array([dt.datetime.fromtimestamp(float(h) * 3600.0, tz).utcoffset().total_seconds() for h in uh])
    local = starts + offs[inv]
    return (np.floor(local / 86400.0) + dt.date(1970, 1, 1).toordinal()).astype(np.int64)
