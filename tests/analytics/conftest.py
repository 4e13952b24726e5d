"""Fixtures of the analytics tests: a small test city of our own (3 km × 2 km, 100 m grid = 600 cells)
in Haimen's working CRS, so statistics can be checked against esda quickly."""

from __future__ import annotations

import pytest
from shapely.geometry import box

from tests.conftest import metric_city


@pytest.fixture(scope="session")
def acity(engine):
    from layers.analytics import rollups

    with engine.begin() as conn:
        c, created = metric_city(conn, "atest", "分析测试市", "320699", box(620_000, 3_530_000, 623_000, 3_532_000))
        if created:
            rollups.set_timezone(conn, c, "Asia/Shanghai")
        return c


@pytest.fixture(scope="session")
def bcity(engine):
    """A second small city with committed synthetic data (Aug–Oct 2026) for the API, bulletin and page."""
    import datetime as dt

    from layers.analytics import rollups
    from layers.demo import synthetic

    with engine.begin() as conn:
        c, created = metric_city(conn, "btest", "简报测试市", "320698", box(630_000, 3_540_000, 634_000, 3_543_000))
        if not created:
            return c
        rollups.set_timezone(conn, c, "Asia/Shanghai")
        synthetic.haimen_synthetic_year(conn, c, year_end=dt.date(2026, 10, 31), days=75, per_day=40, seed=7,
                                        log=None)
        return c
