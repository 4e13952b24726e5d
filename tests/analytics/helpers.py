"""Helpers of the analytics tests: cases written straight into case_file + case_event."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np

from layers.demo.synthetic import CaseBatch, bulk_insert_cases

TZ8 = dt.timezone(dt.timedelta(hours=8))
_seq = itertools.count()


def at(y, m, d, h=10, mi=0) -> dt.datetime:
    return dt.datetime(y, m, d, h, mi, tzinfo=TZ8)


def cell_xy(conn, city, cols, rows):
    """Centres of the grid cells (col, row) of a regular grid, via its stored geometry."""
    import shapely

    from layers.core import grid as lgrid

    g = lgrid.snapper(conn, city)
    c0, r0 = int(g.cols.min()), int(g.rows.min())  # (cols, rows) are offsets from the grid's corner
    key = {(int(c) - c0, int(r) - r0): i for i, (c, r) in enumerate(zip(g.cols, g.rows, strict=False))}
    idx = np.array([key[(int(c), int(r))] for c, r in zip(cols, rows, strict=False)])
    cen = shapely.centroid(g.geoms[idx])
    return shapely.get_x(cen), shapely.get_y(cen), g.ids[idx]


def insert(conn, city, xs, ys, times, cats, channels=None, events=None, phones=None, prefix="T"):
    n = len(xs)
    run = next(_seq)
    b = CaseBatch(case_no=[f"{prefix}{run:04d}-{i:06d}" for i in range(n)], received_at=list(times),
                  category_code=list(cats), channel=list(channels or ["电话"] * n), source=["hotline"] * n,
                  x=np.asarray(xs, float), y=np.asarray(ys, float), phone=phones, events=events or [])
    return bulk_insert_cases(conn, city, b)
