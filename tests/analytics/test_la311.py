"""The whole pipeline on real data: 10,000 MyLA311 requests in a Los Angeles test city (100 m grid)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from sqlalchemy import text

from tests.conftest import SHARED


@pytest.fixture(scope="module")
def la(engine):
    from layers.demo import synthetic

    with engine.begin() as conn:
        city = synthetic.load_la_city(conn, SHARED / "311" / "la_neighborhood_councils.geojson")
        report = synthetic.load_la311(conn, city, SHARED / "311" / "la_311_2020-01-01_03.csv")
    return city, report


def test_la311_import_hotspots_kpis_bulletin(engine, la):
    from layers.analytics import bulletin as lb
    from layers.analytics import hot_spots as lhot
    from layers.analytics import kpi as lkpi

    city, rep = la
    assert rep["rows"] == 10_000 and rep["no_location"] >= 11
    assert rep["written"] + rep["already_there"] == 10_000 - rep["no_created_time"]
    assert rep["closed_before_received"] == 0  # the rule of `citygrid import cases` (none in this file)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT working_srid FROM city WHERE id = :c"), {"c": city.id}).scalar() == 32611
        located = rep["located_in_grid"]
        assert located > 9_500
        # The source's own words are kept beside the case: its request type and raw status.
        said = dict(conn.execute(text("""SELECT source_data->>'status', count(*) FROM case_file
                                         WHERE city_id = :c AND source_data->>'category' <> '' GROUP BY 1"""),
                                 {"c": city.id}).all())
        assert sum(said.values()) == rep["written"] + rep["already_there"] and said.get("Closed", 0) > 8_000
        # rollup = cases per local day (LA time): 1–3 January 2020
        days = dict(conn.execute(text("SELECT day, sum(n) FROM case_rollup WHERE city_id = :c GROUP BY 1"),
                                 {"c": city.id}).all())
        assert set(days) <= {dt.date(2020, 1, d) for d in (1, 2, 3)} and sum(days.values()) == rep["written"] + \
            rep["already_there"]
        d0, d1 = dt.date(2020, 1, 1), dt.date(2020, 1, 3)
        hs = lhot.hotspots(conn, city, d0, d1)
        assert hs["counts"].sum() == located and (hs["bins"] == 3).sum() > 10
        # hot spots sit where the counts are: the hot analysis units (all their cells, empty ones included)
        # hold well over their share of the city's cases, and every hot neighbourhood is above its expectation
        assert hs["counts"][hs["bins"] == 3].mean() > 2.5 * hs["counts"].mean()
        r = hs["result"]
        assert (r.observed[r.bins > 0] > r.expected[r.bins > 0]).all() and hs["report"]["cases"] == located
        k = lkpi.kpis(conn, city, d0, d1 + dt.timedelta(days=1),
                      as_of=dt.datetime(2020, 3, 1, tzinfo=dt.UTC))["all"]
        n_closed = conn.execute(text("SELECT count(*) FROM case_event e JOIN case_file f ON f.id = e.case_id "
                                     "WHERE f.city_id = :c AND e.kind = 'closed' AND e.at < '2020-03-01Z'"),
                                    {"c": city.id}).scalar()
        assert k["受理量"]["value"] == rep["written"] + rep["already_there"]
        assert k["结案率"]["num"] == n_closed and 0.5 < k["结案率"]["value"] <= 1
        assert 0 < k["按期结案率"]["value"] < k["结案率"]["value"]
        by_nc = lkpi.kpis(conn, city, d0, d1 + dt.timedelta(days=1), by="street")
        assert len(by_nc) > 90
        doc = lb.render_html(conn, city, "2020-01")
        assert "洛杉矶" in doc and doc.count("data:image/png;base64,") == 2 and "Illegal Dumping" in doc
    assert np.isfinite(hs["z"]).all()
