"""Fixtures of the assets area: a small Helsinki test city (real OSM data) and auth headers."""

from __future__ import annotations

import uuid

import pytest
import shapely

from tests.conftest import SHARED, auth

HELSINKI = SHARED / "helsinki" / "helsinki_osm.gpkg"
# A box a little smaller than the extract (24.9352–24.9534 E, 60.1642–60.1791 N): some rows fall outside.
HELSINKI_BOX = (24.9370, 60.1650, 24.9520, 60.1780)


@pytest.fixture(scope="session")
def helsinki(engine):
    from layers.core import city as lcity

    slug = f"hel-{uuid.uuid4().hex[:6]}"
    with engine.begin() as conn:
        city = lcity.create_city(conn, slug=slug, name="赫尔辛基（测试）", name_en="Helsinki (test)", adcode="990101",
                                 boundary=shapely.box(*HELSINKI_BOX), src_crs="EPSG:4326")
        lcity.generate_grid(conn, city, size=100.0)
    return city


@pytest.fixture(scope="session")
def admin_h(tokens):
    return auth(tokens["admin"])


@pytest.fixture(scope="session")
def planner_h(tokens):
    return auth(tokens["planner"])


@pytest.fixture(scope="session")
def inspector_h(tokens):
    return auth(tokens["inspector"])


@pytest.fixture(scope="session")
def dept_h(tokens):
    return auth(tokens["department"])
