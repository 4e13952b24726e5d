"""The working-time calendar: 工作时, 紧急工作时, 工作日 across weekends, holidays and make-up days."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from layers.cases.calendar import WorkCalendar, calendar
from layers.core.errors import InputError

CST = ZoneInfo("Asia/Shanghai")


def t(*a):
    return dt.datetime(*a, tzinfo=CST)


def local(x):
    return x.astimezone(CST).replace(tzinfo=None)


def test_working_hours_across_a_weekend():
    cal = calendar()
    # Friday 27 Nov 2026, 17:00: 0.5 h left that day, the rest on Monday from 08:30.
    assert local(cal.add(t(2026, 11, 27, 17, 0), 2, "wh")) == dt.datetime(2026, 11, 30, 10, 0)
    # Across lunch: 11:30 + 1 h = 12:00 then 13:30 + 0.5 h.
    assert local(cal.add(t(2026, 11, 30, 11, 30), 1, "wh")) == dt.datetime(2026, 11, 30, 14, 0)
    # Received on Saturday night: the clock starts on Monday morning.
    assert local(cal.add(t(2026, 11, 28, 22, 0), 1, "wh")) == dt.datetime(2026, 11, 30, 9, 30)


def test_working_hours_and_days_across_the_may_day_holiday():
    cal = calendar()
    # Thursday 30 Apr 2026 16:00; 1–5 May are holidays; Wednesday 6 May is the next workday.
    assert local(cal.add(t(2026, 4, 30, 16, 0), 4, "wh")) == dt.datetime(2026, 5, 6, 11, 0)
    assert local(cal.add(t(2026, 4, 30, 16, 0), 1, "wd")) == dt.datetime(2026, 5, 6, 17, 30)
    assert local(cal.add(t(2026, 4, 30, 16, 0), 2, "wd")) == dt.datetime(2026, 5, 7, 17, 30)
    # 紧急工作时 run round the clock, holiday or not.
    assert local(cal.add(t(2026, 4, 30, 23, 0), 2, "eh")) == dt.datetime(2026, 5, 1, 1, 0)


def test_make_up_workday_counts():
    cal = calendar()
    # Saturday 9 May 2026 is a make-up workday (调休上班).
    assert cal.is_workday(dt.date(2026, 5, 9)) and not cal.is_workday(dt.date(2026, 5, 2))
    assert local(cal.add(t(2026, 5, 8, 17, 0), 2, "wh")) == dt.datetime(2026, 5, 9, 10, 0)
    # Friday 8 May + 1 working day = Saturday 9 May (end of day).
    assert local(cal.add(t(2026, 5, 8, 10, 0), 1, "wd")) == dt.datetime(2026, 5, 9, 17, 30)


def test_configurable_holidays():
    cal = WorkCalendar.from_config({"timezone": "Asia/Shanghai", "holidays": ["2026-12-01"],
                                    "workdays": ["2026-12-05"], "work_periods": [["09:00", "17:00"]]})
    assert local(cal.add(t(2026, 11, 30, 16, 0), 2, "wh")) == dt.datetime(2026, 12, 2, 10, 0)
    assert cal.is_workday(dt.date(2026, 12, 5))
    with pytest.raises(InputError):
        WorkCalendar.from_config({"work_periods": [["12:00", "08:00"]]})
    with pytest.raises(InputError):
        cal.add(t(2026, 11, 30, 16), 1, "fortnights")


def test_status_colours():
    cal = calendar()
    start = t(2026, 11, 27, 17, 0)
    deadline = cal.add(start, 2, "wh")  # Monday 10:00
    assert cal.status(start, deadline, "wh", t(2026, 11, 28, 12, 0))["level"] == "green"  # weekend: no time used
    s = cal.status(start, deadline, "wh", t(2026, 11, 30, 9, 45))
    assert s["level"] == "yellow" and s["left_seconds"] == 15 * 60 and not s["overdue"]
    s = cal.status(start, deadline, "wh", t(2026, 11, 30, 10, 30))
    assert s["level"] == "red" and s["overdue"] and s["left_seconds"] == -30 * 60
