"""The in-process day cache of the rollup stays equal to the rollup: incremental reloads after
committed writes, bypassed by transactions that wrote, full reload after a rebuild."""

from __future__ import annotations

import datetime as dt

import numpy as np
from shapely.geometry import box

from layers.analytics import cache as lcache
from layers.analytics import rollups
from tests.analytics.helpers import at, insert
from tests.conftest import metric_city


def _sql_counts(conn, city, arr, a, b):
    ids, n = rollups.cell_counts(conn, city, a, b)
    x = np.zeros(arr.n)
    x[arr.positions(ids)] = n
    return x


def test_day_cache_follows_the_rollup(engine):
    with engine.begin() as conn:
        city, _ = metric_city(conn, "dtest", "缓存测试市", "320696", box(650_000, 3_560_000, 651_000, 3_561_000))
    rng = np.random.default_rng(3)
    a, b = dt.date(2024, 5, 1), dt.date(2024, 5, 10)

    def add(conn, n, day):
        insert(conn, city, rng.uniform(650_000, 651_000, n), rng.uniform(3_560_000, 3_561_000, n),
               [at(2024, 5, day)] * n, ["D1"] * n, prefix="DC")

    with engine.begin() as conn:
        add(conn, 200, 2)
    with engine.connect() as conn:
        arr = lcache.grid_arrays(conn, city)
        x = lcache.dense_counts(conn, city, arr, a, b)
        assert x.sum() == 200 and np.array_equal(x, _sql_counts(conn, city, arr, a, b))
        cache = next(c for k, c in lcache._day_caches.items() if k[0] == city.id)
        loaded = cache.loaded_at
    with engine.begin() as conn:
        add(conn, 50, 2)
        add(conn, 30, 7)
    with engine.connect() as conn:
        x = lcache.dense_counts(conn, city, arr, a, b)
        assert x.sum() == 280 and np.array_equal(x, _sql_counts(conn, city, arr, a, b))
        assert cache.loaded_at == loaded  # incremental, not a full reload
        assert lcache.dense_counts(conn, city, arr, dt.date(2024, 5, 7), dt.date(2024, 5, 7)).sum() == 30
    with engine.connect() as conn:  # a transaction that wrote sees its own cases, and leaves no trace
        tx = conn.begin()
        add(conn, 70, 3)
        assert lcache.dense_counts(conn, city, arr, a, b).sum() == 350
        tx.rollback()
    with engine.connect() as conn:
        assert lcache.dense_counts(conn, city, arr, a, b).sum() == 280
    with engine.begin() as conn:
        rollups.rebuild(conn, city)
    with engine.connect() as conn:
        x = lcache.dense_counts(conn, city, arr, a, b)
        assert x.sum() == 280 and cache.loaded_at > loaded


def test_concurrent_intake_does_not_wait_and_compaction_keeps_the_cache_exact(engine):
    """Two open transactions adding cases to the same city and day do not wait for each other (the
    change log is append-only); compacting the log keeps the day cache equal to the rollup."""
    from sqlalchemy import text

    with engine.begin() as conn:
        city, _ = metric_city(conn, "intake-concurrency", "并发测试市", "320695",
                              box(652_000, 3_560_000, 653_000, 3_561_000))
    rng = np.random.default_rng(4)
    a, b = dt.date(2024, 6, 1), dt.date(2024, 6, 10)

    def add(conn, n, day, cat):
        insert(conn, city, rng.uniform(652_000, 653_000, n), rng.uniform(3_560_000, 3_561_000, n),
               [at(2024, 6, day)] * n, [cat] * n, prefix="CC" + cat)

    with engine.connect() as first, engine.connect() as second:
        t1 = first.begin()
        add(first, 5, 2, "K1")
        t2 = second.begin()
        second.execute(text("SET LOCAL lock_timeout = '2s'"))
        add(second, 7, 2, "K2")  # raises LockNotAvailable if it had to wait for the first
        t2.commit()
        t1.commit()
    with engine.connect() as conn:
        arr = lcache.grid_arrays(conn, city)
        assert lcache.dense_counts(conn, city, arr, a, b).sum() == 12
    for _ in range(3):
        with engine.begin() as conn:
            add(conn, 4, 5, "K1")
    with engine.begin() as conn:
        removed = lcache.compact_change_log(conn, city)
        left = conn.execute(text("SELECT count(*) FROM case_rollup_change WHERE city_id = :c"), {"c": city.id}).scalar_one()
    assert removed >= 3 and left == 2  # one row per day left
    with engine.begin() as conn:
        add(conn, 3, 5, "K2")
    with engine.connect() as conn:
        x = lcache.dense_counts(conn, city, arr, a, b)
        assert x.sum() == 27 and np.array_equal(x, _sql_counts(conn, city, arr, a, b))
