"""The in-process day cache of the rollup stays equal to the rollup: incremental reloads after
committed writes, bypassed by transactions that wrote, full reload after a rebuild."""

from __future__ import annotations

import datetime as dt

import numpy as np
from shapely.geometry import box

from layers import analytics as la
from layers import rollups
from tests.analytics.helpers import at, insert


def _sql_counts(conn, city, arr, a, b):
    ids, n = rollups.cell_counts(conn, city, a, b)
    x = np.zeros(arr.n)
    x[arr.positions(ids)] = n
    return x


def test_day_cache_follows_the_rollup(engine):
    from layers import city as lcity

    with engine.begin() as conn:
        city = lcity.create_city(conn, slug="dtest", name="缓存测试市", adcode="320696", src_crs="EPSG:4549",
                                 boundary=box(650_000, 3_560_000, 651_000, 3_561_000), working_epsg=4549)
        lcity.generate_grid(conn, city, size=100.0)
    rng = np.random.default_rng(3)
    a, b = dt.date(2024, 5, 1), dt.date(2024, 5, 10)

    def add(conn, n, day):
        insert(conn, city, rng.uniform(650_000, 651_000, n), rng.uniform(3_560_000, 3_561_000, n),
               [at(2024, 5, day)] * n, ["D1"] * n, prefix="DC")

    with engine.begin() as conn:
        add(conn, 200, 2)
    with engine.connect() as conn:
        arr = la.grid_arrays(conn, city)
        x = la.dense_counts(conn, city, arr, a, b)
        assert x.sum() == 200 and np.array_equal(x, _sql_counts(conn, city, arr, a, b))
        cache = next(c for k, c in la._day_caches.items() if k[0] == city.id)
        loaded = cache.loaded_at
    with engine.begin() as conn:
        add(conn, 50, 2)
        add(conn, 30, 7)
    with engine.connect() as conn:
        x = la.dense_counts(conn, city, arr, a, b)
        assert x.sum() == 280 and np.array_equal(x, _sql_counts(conn, city, arr, a, b))
        assert cache.loaded_at == loaded  # incremental, not a full reload
        assert la.dense_counts(conn, city, arr, dt.date(2024, 5, 7), dt.date(2024, 5, 7)).sum() == 30
    with engine.connect() as conn:  # a transaction that wrote sees its own cases, and leaves no trace
        tx = conn.begin()
        add(conn, 70, 3)
        assert la.dense_counts(conn, city, arr, a, b).sum() == 350
        tx.rollback()
    with engine.connect() as conn:
        assert la.dense_counts(conn, city, arr, a, b).sum() == 280
    with engine.begin() as conn:
        rollups.rebuild(conn, city)
    with engine.connect() as conn:
        x = la.dense_counts(conn, city, arr, a, b)
        assert x.sum() == 280 and cache.loaded_at > loaded
