"""Helpers for the benchmarks: timing (best of N), the demo database, and a results table.

Each benchmark prints this project's figure beside its anchor measured in the same run, as a ratio:
this machine is shared and noisy, so absolute numbers vary from run to run and ratios much less.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Fastest of ``repeat`` runs (seconds) and the last result."""
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def demo_engine():
    """The demo database (``make run``'s), with the Haimen city loaded if it is not there yet."""
    from citygrid.dbcluster import database_url
    from layers.core.db import make_engine, migrate
    from layers.demo.haimen import load_haimen

    engine = make_engine(database_url(log=lambda *_: None), pool_size=2)
    migrate(engine)
    with engine.begin() as conn:
        city = load_haimen(conn, log=lambda *_: None)
    return engine, city


class Table:
    def __init__(self, title: str):
        self.title = title
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, figure: str, anchor: str = "", verdict: str = "") -> None:
        self.rows.append((what, figure, anchor, verdict))

    def print(self) -> None:
        w = [max(len(r[i]) for r in self.rows + [("what", "figure", "anchor", "target")]) for i in range(4)]
        print(f"\n== {self.title}")
        head = ("what", "figure", "anchor (same run)", "target")
        print("  ".join(h.ljust(w[i]) for i, h in enumerate(head)))
        for r in self.rows:
            print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))


def bench_city(engine, haimen, slug: str, name: str, fill=None):
    """A copy of Haimen's boundary with its own 100 m grid (Asia/Shanghai days), made once under
    ``slug``; ``fill(conn, city)`` writes its cases when the city is new."""
    import shapely
    from sqlalchemy import text

    from layers.analytics import rollups
    from layers.core import city as lcity
    from layers.core.errors import NotFound

    with engine.begin() as conn:
        try:
            return lcity.get_city(conn, slug)
        except NotFound:
            pass
        wkb = conn.execute(text("SELECT ST_AsBinary(ST_Transform(boundary, 4326)) FROM city WHERE id = :c"),
                           {"c": haimen.id}).scalar_one()
        c = lcity.create_city(conn, slug=slug, name=name, name_en="bench copy of Haimen", adcode=haimen.adcode,
                              boundary=shapely.from_wkb(bytes(wkb)), src_crs="EPSG:4326", working_epsg=haimen.srid)
        lcity.generate_grid(conn, c, size=100.0)
        rollups.set_timezone(conn, c, "Asia/Shanghai")
        if fill is not None:
            fill(conn, c)
        return c
