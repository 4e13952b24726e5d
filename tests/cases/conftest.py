"""Fixtures of the case workflow tests: departments of the Haimen demo city, users bound to them,
points inside the city, and a frozen clock."""

from __future__ import annotations

import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from shapely.geometry import Point

from gis import crs as gcrs
from tests.conftest import auth

CST = ZoneInfo("Asia/Shanghai")
# A point in Haimen town (WGS-84) and one a few km east.
HAIMEN_LONLAT = (121.17, 31.89)


def working_point(city, lon, lat, src="EPSG:4326") -> Point:
    x, y = gcrs.transform_xy(np.array([lon]), np.array([lat]), src, city.working_crs)
    return Point(float(x[0]), float(y[0]))


@pytest.fixture(scope="session")
def departments(engine, haimen):
    from layers.cases.workflow import ensure_departments

    with engine.begin() as conn:
        return ensure_departments(conn, haimen)


@pytest.fixture(scope="session")
def make_user(engine):
    from layers.core.users import add_user

    def make(role, department=None, area_code=None):
        with engine.begin() as conn:
            user, tok = add_user(conn, f"wf_{role}_{uuid.uuid4().hex[:8]}", role, department=department,
                                 area_code=area_code)
        return user, auth(tok)

    return make


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t

    def set(self, t):
        self.t = t

    def advance(self, **kw):
        self.t = self.t + dt.timedelta(**kw)


@pytest.fixture
def clock(monkeypatch):
    from layers.cases import calendar as lcal

    c = Clock(dt.datetime(2026, 4, 30, 16, 0, tzinfo=CST))
    monkeypatch.setattr(lcal, "now", c)
    return c


_offset = [0]


@pytest.fixture
def spot(haimen):
    """A fresh point in Haimen for each call, > 200 m from the previous ones (no accidental 并单)."""

    def make():
        _offset[0] += 1
        i = _offset[0]
        lon = HAIMEN_LONLAT[0] + 0.003 * (i % 20)
        lat = HAIMEN_LONLAT[1] + 0.003 * (i // 20)
        return lon, lat

    return make
