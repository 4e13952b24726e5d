"""Fixtures of the analytics tests: a small test city of our own (3 km × 2 km, 100 m grid = 600 cells)
in Haimen's working CRS, so statistics can be checked against esda quickly."""

from __future__ import annotations

import pytest
from shapely.geometry import box


@pytest.fixture(scope="session")
def acity(engine):
    from layers import city as lcity
    from layers import rollups
    from layers.errors import NotFound

    with engine.begin() as conn:
        try:
            return lcity.get_city(conn, "atest")
        except NotFound:
            pass
        x0, y0 = 620_000.0, 3_530_000.0
        c = lcity.create_city(conn, slug="atest", name="分析测试市", name_en="Analytics test city", adcode="320699",
                              boundary=box(x0, y0, x0 + 3000, y0 + 2000), src_crs="EPSG:4549", working_epsg=4549)
        lcity.generate_grid(conn, c, size=100.0)
        rollups.set_timezone(conn, c, "Asia/Shanghai")
        return c


@pytest.fixture(scope="session")
def bcity(engine):
    """A second small city with committed synthetic data (Aug–Oct 2026) for the API, bulletin and page."""
    import datetime as dt

    from layers import city as lcity
    from layers import rollups, synthetic
    from layers.errors import NotFound

    with engine.begin() as conn:
        try:
            return lcity.get_city(conn, "btest")
        except NotFound:
            pass
        x0, y0 = 630_000.0, 3_540_000.0
        c = lcity.create_city(conn, slug="btest", name="简报测试市", name_en="Bulletin test city", adcode="320698",
                              boundary=box(x0, y0, x0 + 4000, y0 + 3000), src_crs="EPSG:4549", working_epsg=4549)
        lcity.generate_grid(conn, c, size=100.0)
        rollups.set_timezone(conn, c, "Asia/Shanghai")
        synthetic.haimen_synthetic_year(conn, c, year_end=dt.date(2026, 10, 31), days=75, per_day=40, seed=7,
                                        log=None)
        return c
