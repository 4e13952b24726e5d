"""The working-time calendar: deadlines in 工作时, 紧急工作时 and 工作日.

* ``wh`` 工作时 — working hours: only the work periods of workdays count (08:30–12:00, 13:30–17:30
  by default);
* ``eh`` 紧急工作时 — emergency hours: clock hours, nights, weekends and holidays included;
* ``wd`` 工作日 — working days: the deadline is the end of the N-th workday after the day of
  receipt (the day of receipt itself does not count).

A workday is a weekday that is not a holiday, or a make-up workday (调休上班) even on a weekend.
Holidays and make-up workdays are configuration (``layers/cases/data/calendar.json``).
All functions take and return timezone-aware datetimes; naive ones are read as local time.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from layers.core.errors import InputError

DATA = Path(__file__).resolve().parent / "data"
UNITS = {"wh": "工作时 working hours", "eh": "紧急工作时 clock hours", "wd": "工作日 working days"}


def now() -> dt.datetime:
    """The clock of the workflow (tests replace it to freeze time)."""
    return dt.datetime.now(dt.UTC)


def _hm(s: str) -> dt.time:
    h, m = s.split(":")
    return dt.time(int(h), int(m))


@dataclass
class WorkCalendar:
    timezone: str = "Asia/Shanghai"
    weekend: tuple[int, ...] = (5, 6)
    work_periods: tuple[tuple[dt.time, dt.time], ...] = ((dt.time(8, 30), dt.time(12)), (dt.time(13, 30), dt.time(17, 30)))
    holidays: frozenset[dt.date] = field(default_factory=frozenset)
    workdays: frozenset[dt.date] = field(default_factory=frozenset)

    @classmethod
    def from_config(cls, cfg: dict) -> WorkCalendar:
        try:
            periods = tuple((_hm(a), _hm(b)) for a, b in cfg.get("work_periods", [["08:30", "12:00"], ["13:30", "17:30"]]))
            if any(a >= b for a, b in periods) or any(periods[i][1] > periods[i + 1][0] for i in range(len(periods) - 1)):
                raise InputError("work_periods must be increasing, non-overlapping [start, end] pairs")
            cal = cls(timezone=cfg.get("timezone", "Asia/Shanghai"), weekend=tuple(cfg.get("weekend", (5, 6))),
                      work_periods=periods,
                      holidays=frozenset(dt.date.fromisoformat(d) for d in cfg.get("holidays", [])),
                      workdays=frozenset(dt.date.fromisoformat(d) for d in cfg.get("workdays", [])))
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
        return sum((dt.datetime.combine(dt.date.min, b) - dt.datetime.combine(dt.date.min, a)).seconds
                   for a, b in self.work_periods) / 3600

    # -- working hours ------------------------------------------------------------------------
    def add_working_seconds(self, start: dt.datetime, seconds: float) -> dt.datetime:
        t = self.local(start)
        left = float(seconds)
        if left <= 0:
            return t
        d = t.date()
        for _ in range(3700):  # ten years of days at most
            for a, b in self.periods_on(d):
                if b <= t:
                    continue
                s = max(a, t)
                avail = (b - s).total_seconds()
                if left <= avail:
                    return s + dt.timedelta(seconds=left)
                left -= avail
            d += dt.timedelta(days=1)
        raise InputError("the calendar has no workdays for ten years: check holidays/weekend")

    def working_seconds_between(self, a: dt.datetime, b: dt.datetime) -> float:
        """Working seconds in [a, b] (negative when b < a)."""
        a, b = self.local(a), self.local(b)
        if b < a:
            return -self.working_seconds_between(b, a)
        total = 0.0
        d = a.date()
        while d <= b.date():
            for s, e in self.periods_on(d):
                lo, hi = max(s, a), min(e, b)
                if hi > lo:
                    total += (hi - lo).total_seconds()
            d += dt.timedelta(days=1)
        return total

    # -- working days -------------------------------------------------------------------------
    def add_working_days(self, start: dt.datetime, n: int) -> dt.datetime:
        d = self.local(start).date()
        found = 0
        for _ in range(3700):
            d += dt.timedelta(days=1)
            if self.is_workday(d):
                found += 1
                if found >= n:
                    return dt.datetime.combine(d, self.work_periods[-1][1], self.tz)
        raise InputError("the calendar has no workdays for ten years: check holidays/weekend")

    # -- one interface ------------------------------------------------------------------------
    def add(self, start: dt.datetime, amount: float, unit: str) -> dt.datetime:
        """The deadline ``amount`` ``unit`` after ``start`` (UTC)."""
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
        """Time left and the overdue colour: green < 80 % of the limit used, yellow 80–100 %, red > 100 %."""
        total = self.used(start, deadline, unit)
        spent = self.used(start, at, unit)
        left = self.used(at, deadline, unit) if at <= deadline else -self.used(deadline, at, "eh")
        frac = spent / total if total > 0 else (0.0 if at <= deadline else float("inf"))
        level = "red" if at > deadline else ("yellow" if frac >= 0.8 else "green")
        return {"deadline": deadline.astimezone(dt.UTC).isoformat(), "unit": unit,
                "left_seconds": round(left), "used_fraction": round(frac, 4) if frac != float("inf") else None,
                "overdue": at > deadline, "level": level}


@lru_cache
def _default() -> WorkCalendar:
    return WorkCalendar.from_config(json.loads((DATA / "calendar.json").read_text(encoding="utf-8")))


def calendar() -> WorkCalendar:
    """The configured calendar."""
    return _default()


def _epoch(t: dt.datetime) -> float:
    return t.timestamp()


class WorkTimeline:
    """Working time over a span of days as a piecewise-linear map, for deadlines of many cases at once.

    ``W(t)`` = working seconds from the span's start to ``t``; a deadline ``amount`` working hours
    after ``t`` is ``W⁻¹(W(t) + amount·3600)``. Both directions are ``numpy.searchsorted``.
    """

    def __init__(self, cal: WorkCalendar, first: dt.date, last: dt.date):
        starts, ends = [], []
        d = first
        while d <= last:
            for a, b in cal.periods_on(d):
                starts.append(a.timestamp())
                ends.append(b.timestamp())
            d += dt.timedelta(days=1)
        self.s = np.array(starts, dtype=np.float64)
        self.e = np.array(ends, dtype=np.float64)
        lens = self.e - self.s
        self.cum = np.concatenate([[0.0], np.cumsum(lens)])  # working seconds before period i

    def work(self, t: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.s, t, side="right") - 1
        inside = np.clip(t - self.s[np.maximum(i, 0)], 0, (self.e - self.s)[np.maximum(i, 0)])
        return np.where(i < 0, 0.0, self.cum[np.maximum(i, 0)] + inside)

    def at_work(self, w: np.ndarray) -> np.ndarray:
        j = np.searchsorted(self.cum[1:], w, side="left")  # first period whose end reaches w
        if (j >= len(self.s)).any():
            raise InputError("a deadline falls beyond the calendar span")
        return self.s[j] + (w - self.cum[j])


def add_many(cal: WorkCalendar, starts: np.ndarray, amount: float, unit: str) -> np.ndarray:
    """Deadlines for many start times (UNIX seconds, float64) at once; returns UNIX seconds."""
    starts = np.asarray(starts, dtype=np.float64)
    if len(starts) == 0:
        return starts
    if unit == "eh":
        return starts + amount * 3600.0
    tz = cal.tz
    lo = dt.datetime.fromtimestamp(float(starts.min()), tz).date() - dt.timedelta(days=1)
    hi = dt.datetime.fromtimestamp(float(starts.max()), tz).date()
    if unit == "wh":
        span = int(amount * 3600 / max(cal.hours_per_day * 3600, 1)) + 40
        line = WorkTimeline(cal, lo, hi + dt.timedelta(days=span))
        return line.at_work(line.work(starts) + amount * 3600.0)
    if unit == "wd":
        # The deadline depends on the local date only: one lookup per distinct day.
        local_days = _local_ordinals(starts, tz)
        uniq, inv = np.unique(local_days, return_inverse=True)
        out = np.array([cal.add_working_days(dt.datetime.combine(dt.date.fromordinal(int(o)), dt.time(12), tz),
                                             int(amount)).timestamp() for o in uniq])
        return out[inv]
    raise InputError(f"unknown time unit '{unit}': one of {', '.join(UNITS)}")


def _local_ordinals(starts: np.ndarray, tz: ZoneInfo) -> np.ndarray:
    """Local calendar day (ordinal) of many UNIX times, handling DST by the offset of each hour."""
    hours = np.floor(starts / 3600.0)
    uh, inv = np.unique(hours, return_inverse=True)
    offs = np.array([dt.datetime.fromtimestamp(float(h) * 3600.0, tz).utcoffset().total_seconds() for h in uh])
    local = starts + offs[inv]
    return (np.floor(local / 86400.0) + dt.date(1970, 1, 1).toordinal()).astype(np.int64)
