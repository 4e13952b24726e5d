"""Rollups kept current by the trigger; heat from the rollup; Gi* over DB data equals esda."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from sqlalchemy import text

from gis import hotspots as ghot
from layers.analytics import cache as lcache
from layers.analytics import emerging_hot_spots as lemerging
from layers.analytics import heatmap as la
from layers.analytics import hot_spots as lhot
from layers.analytics import rollups
from layers.core import grid as lgrid
from tests.analytics.helpers import at, insert
from tests.conftest import rollup_equals_cases


def _random_cases(conn, city, rng, n, day0=dt.date(2020, 1, 1), days=10, cats=("A1", "B2")):
    g = lgrid.snapper(conn, city)
    import shapely
    minx, miny, maxx, maxy = shapely.total_bounds(g.geoms)
    # a dense blob plus background
    k = n // 2
    xs = np.concatenate([rng.normal(minx + 800, 150, k), rng.uniform(minx, maxx, n - k)])
    ys = np.concatenate([rng.normal(miny + 700, 150, k), rng.uniform(miny, maxy, n - k)])
    xs, ys = np.clip(xs, minx + 1, maxx - 1), np.clip(ys, miny + 1, maxy - 1)
    times = [at(day0.year, day0.month, day0.day, 8) + dt.timedelta(days=int(d), hours=float(h))
             for d, h in zip(rng.integers(0, days, n), rng.uniform(0, 12, n), strict=False)]
    cats_ = rng.choice(list(cats), n).tolist()
    chans = rng.choice(["电话", "微信"], n).tolist()
    return insert(conn, city, xs, ys, times, cats_, chans), xs, ys, times, cats_, chans


def test_rollup_kept_current_by_trigger(conn, acity):
    rng = np.random.default_rng(1)
    ids, *_ = _random_cases(conn, acity, rng, 500)
    assert rollup_equals_cases(conn, acity) > 50
    # the local day: 23:30 UTC+8 of 1 Jan is 1 Jan, 00:30 of 2 Jan is 2 Jan
    # an update of class / cell / merge moves the counts; a delete removes them
    conn.execute(text("UPDATE case_file SET category_code = 'C3' WHERE id = ANY(:ids)"), {"ids": ids[:40].tolist()})
    conn.execute(text("UPDATE case_file SET cell_id = NULL WHERE id = ANY(:ids)"), {"ids": ids[40:60].tolist()})
    conn.execute(text("UPDATE case_file SET merged_into = :m WHERE id = ANY(:ids)"),
                 {"m": int(ids[0]), "ids": ids[60:70].tolist()})
    conn.execute(text("UPDATE case_file SET title = 'x' WHERE id = ANY(:ids)"), {"ids": ids[70:90].tolist()})
    conn.execute(text("DELETE FROM case_file WHERE id = ANY(:ids)"), {"ids": ids[90:120].tolist()})
    rollup_equals_cases(conn, acity)
    total = conn.execute(text("SELECT sum(n) FROM case_rollup WHERE city_id = :c"), {"c": acity.id}).scalar()
    assert total == 500 - 10 - 30
    assert rollups.rebuild(conn, acity) > 0
    rollup_equals_cases(conn, acity)


def test_heat_from_rollup_equals_direct_kde(conn, acity):
    from gis import heat as gheat

    rng = np.random.default_rng(2)
    _, xs, ys, times, cats, _ = _random_cases(conn, acity, rng, 400)
    h = la.heat(conn, acity, dt.date(2020, 1, 1), dt.date(2020, 1, 10), categories=["A1"], bandwidth=300)
    assert h["total"] == cats.count("A1")
    arr = h["arrays"]
    # the same KDE by direct sum from the cell centres of the cases' cells
    g = arr.grid
    idx = g.locate(xs, ys)
    sel = np.array([c == "A1" for c in cats]) & (idx >= 0)
    direct = gheat.quartic_kde_grid(arr.cx[idx[sel]], arr.cy[idx[sel]], None, arr.cx, arr.cy, 300)
    # the regular grid's stencil is normalised to keep each case's mass: the direct sum divided by the
    # lattice mass of the kernel sampled at the cell offsets (within 300 m: offsets up to 2 cells)
    off = np.arange(-2, 3) * 100.0
    lattice = gheat.quartic_kernel(np.hypot(off[:, None], off[None, :]), 300).sum() * 100.0 ** 2
    # the test city is aligned to the 100 m grid: every cell is whole, its centroid is its centre
    assert np.allclose(h["density"], direct / lattice, rtol=1e-9, atol=1e-9)
    # no edge correction: the mass that falls outside the city is lost, none is created
    assert 0.8 * h["total"] < h["density"].sum() * 0.01 <= h["total"] * (1 + 1e-9)
    assert h["density"].max() > 0
    fc = la.heat_geojson(conn, acity, dt.date(2020, 1, 1), dt.date(2020, 1, 10))
    assert fc["features"] and fc["bandwidth_m"] >= 100
    assert all(f["geometry"].startswith('{"type":"Polygon"') or 'MultiPolygon' in f["geometry"]
               for f in fc["features"])
    import json
    geom = json.loads(fc["features"][0]["geometry"])
    ring = geom["coordinates"][0] if geom["type"] == "Polygon" else geom["coordinates"][0][0]
    lon, lat = ring[0]
    assert 121.2 < lon < 121.35 and 31.8 < lat < 31.95  # EPSG:4326 around the test city
    # an empty window: an empty layer, no error
    assert la.heat_geojson(conn, acity, dt.date(2019, 1, 1), dt.date(2019, 1, 2))["features"] == []


def test_hotspots_on_db_data_equal_scipy_and_weights_equal_libpysal(conn, acity):
    import esda
    import libpysal
    from scipy import stats

    rng = np.random.default_rng(3)
    _random_cases(conn, acity, rng, 800)
    h = lhot.hotspots(conn, acity, dt.date(2020, 1, 1), dt.date(2020, 1, 10))
    arr = h["arrays"]
    g = arr.grid
    # the same counts read independently from case_file
    counts = dict(conn.execute(text("""SELECT cell_id, count(*) FROM case_file WHERE city_id = :c
        AND (received_at AT TIME ZONE 'Asia/Shanghai')::date BETWEEN '2020-01-01' AND '2020-01-10'
        AND merged_into IS NULL AND cell_id IS NOT NULL GROUP BY 1"""), {"c": acity.id}).all())
    y = np.array([counts.get(int(i), 0) for i in g.ids], dtype=float)
    assert np.array_equal(y, h["counts"])
    assert not h["too_few"] and h["report"]["cases"] == int(y.sum())
    # every cell's p is the exact binomial p of its unit's neighbourhood: scipy's binomtest, with the
    # neighbourhood's share of the city's area read from PostGIS
    r = h["result"]
    area = dict(conn.execute(text("SELECT id, ST_Area(geom) FROM grid_cell WHERE grid_id = :g"),
                             {"g": g.info.id}).all())
    a = np.array([area[int(i)] for i in g.ids])
    nb = r.scale.neighbourhoods()
    for u in np.unique(r.scale.unit[h["bins"] != 0].tolist() + [0, r.scale.m // 2]):
        members = np.isin(r.scale.unit, nb[u].indices)
        share = a[members].sum() / a.sum()
        obs = int(y[members].sum())
        p_hot = stats.binomtest(obs, int(y.sum()), share, alternative="greater").pvalue
        p_cold = stats.binomtest(obs, int(y.sum()), share, alternative="less").pvalue
        i = int(np.flatnonzero(r.scale.unit == u)[0])
        assert h["p"][i] == pytest.approx(min(1.0, 2 * min(p_hot, p_cold)), rel=1e-9)
    assert (h["bins"] > 0).any()  # the blob is a significant hot spot
    fc = lhot.hotspots_geojson(conn, acity, dt.date(2020, 1, 1), dt.date(2020, 1, 10))
    assert fc["status"] == "ok" and fc["cases"] == int(y.sum()) and fc["scale"]["unit_m"] >= 100
    assert len(fc["features"]) == int((r.bins != 0).sum())  # one feature per significant unit
    assert sum(f["properties"]["cells"] for f in fc["features"]) == int((h["bins"] != 0).sum())
    assert all(f["properties"]["bin"] != 0 and f["properties"]["p"] <= 0.1 for f in fc["features"])
    # a unit's polygon covers exactly its cells (the test city is aligned: whole units are squares)
    import shapely
    f0 = fc["features"][0]["properties"]
    members = np.flatnonzero(r.scale.unit == f0["unit"])
    assert f0["cells"] == members.size and f0["count"] == int(y[members].sum())
    geom = lhot._unit_geoms(arr, r, np.array([f0["unit"]]))[0]
    assert geom.area == pytest.approx(lhot.cell_areas(arr)[members].sum(), rel=1e-9)
    assert shapely.covers(geom, shapely.centroid(g.geoms[members])).all()
    hot = [f for f in fc["features"] if f["properties"]["bin"] == 3]
    assert hot and all("热点 99%" in f["properties"]["label"] for f in hot)
    assert all(f["properties"]["observed"] > f["properties"]["expected"] for f in hot)
    # the queen weights of the grid (kept for Gi*) equal libpysal's on the cell polygons
    import geopandas as gpd
    w = libpysal.weights.Queen.from_dataframe(gpd.GeoDataFrame(geometry=g.geoms), use_index=False,
                                              silence_warnings=True)
    gl = esda.G_Local(y, w, transform="B", star=True, permutations=0)
    assert np.max(np.abs(gl.Zs - ghot.getis_ord_gi_star(y, lcache.weights(arr, "queen")))) < 1e-9
    wd = libpysal.weights.DistanceBand(np.column_stack([arr.cx, arr.cy]), threshold=250, binary=True,
                                       silence_warnings=True)
    gd = esda.G_Local(y, wd, transform="B", star=True, permutations=0)
    assert np.max(np.abs(gd.Zs - ghot.getis_ord_gi_star(y, lcache.weights(arr, "distance", 250)))) < 1e-9


def test_too_few_cases_is_an_answer_not_a_map(conn, acity):
    from tests.analytics.helpers import cell_xy

    x, y, _ = cell_xy(conn, acity, [3] * 29, [4] * 29)
    insert(conn, acity, x, y, [at(2019, 5, 2)] * 29, ["F1"] * 29)
    fc = lhot.hotspots_geojson(conn, acity, dt.date(2019, 5, 1), dt.date(2019, 5, 3))
    assert fc["status"] == "too_few_cases" and fc["cases"] == 29 and fc["features"] == []
    assert "案件过少" in fc["message"] and "Too few cases" in fc["message"]
    insert(conn, acity, x[:1], y[:1], [at(2019, 5, 2)], ["F1"])
    fc = lhot.hotspots_geojson(conn, acity, dt.date(2019, 5, 1), dt.date(2019, 5, 3))
    assert fc["status"] == "ok" and fc["cases"] == 30


def test_emerging_hotspots(conn, acity):
    # a cell that becomes hot in the last two weeks of 8 (new / consecutive hot spot)
    from tests.analytics.helpers import cell_xy

    rng = np.random.default_rng(4)
    end = dt.date(2020, 6, 28)
    x, y, _ = cell_xy(conn, acity, [10, 11, 10, 11], [8, 8, 9, 9])
    xs, ys, ts = [], [], []
    for wk in range(8):
        for _ in range(int(rng.poisson(3))):
            xs.append(rng.uniform(620_000, 623_000))
            ys.append(rng.uniform(3_530_000, 3_532_000))
            ts.append(at(2020, 5, 4) + dt.timedelta(days=7 * wk + int(rng.integers(0, 7))))
        if wk >= 6:
            for k in range(4):
                for _ in range(6):
                    xs.append(x[k])
                    ys.append(y[k])
                    ts.append(at(2020, 5, 4) + dt.timedelta(days=7 * wk + int(rng.integers(0, 7))))
    insert(conn, acity, xs, ys, ts, ["E1"] * len(xs))
    fc = lemerging.emerging_geojson(conn, acity, end, steps=8, step_days=7, categories=["E1"])
    cats = [f["properties"]["category"] for f in fc["features"]]
    assert any(c in ("New Hot Spot", "Consecutive Hot Spot") for c in cats), fc["summary"]
    assert fc["status"] == "ok" and fc["scale"]["unit_m"] >= 100
    assert sum(f["properties"]["cells"] for f in fc["features"]) == sum(fc["summary"].values())


def test_gi_star_equals_esda_on_a_clipped_grid(engine):
    """A round city: boundary cells are clipped, some no longer touch their grid neighbours
    our queen
    weights are those of the cell polygons (libpysal Queen), so Gi* equals esda to 1e-9; the exact test
    uses the clipped areas."""
    import esda
    import geopandas as gpd
    import libpysal
    from shapely.geometry import Point

    from tests.conftest import metric_city

    with engine.begin() as conn:
        city, _ = metric_city(conn, "ctest", "圆形测试市", "320697", Point(640_033.0, 3_550_071.0).buffer(1234, 7))
    with engine.connect() as conn:
        tx = conn.begin()
        rng = np.random.default_rng(9)
        xs = np.concatenate([rng.normal(640_400, 200, 300), rng.uniform(638_900, 641_200, 300)])
        ys = np.concatenate([rng.normal(3_550_300, 200, 300), rng.uniform(3_548_900, 3_551_200, 300)])
        insert(conn, city, xs, ys, [at(2020, 2, 1)] * 600, ["R1"] * 600)
        h = lhot.hotspots(conn, city, dt.date(2020, 2, 1), dt.date(2020, 2, 1))
        g = h["arrays"].grid
        assert (h["bins"] > 0).any() and h["report"]["neighbours"] >= 8
        assert g.index.partial.sum() > 20
        w = libpysal.weights.Queen.from_dataframe(gpd.GeoDataFrame(geometry=g.geoms), use_index=False,
                                                  silence_warnings=True)
        assert w.sparse.nnz < ghot.queen_weights_regular(g.cols, g.rows).nnz  # clipping removed some pairs
        gl = esda.G_Local(h["counts"], w, transform="B", star=True, permutations=0)
        assert np.max(np.abs(gl.Zs - ghot.getis_ord_gi_star(h["counts"], lcache.weights(h["arrays"])))) < 1e-9
        # the clipped cells' areas (PostGIS) are the base of the exact test
        area = dict(conn.execute(text("SELECT id, ST_Area(geom) FROM grid_cell WHERE grid_id = :g"),
                                 {"g": g.info.id}).all())
        assert np.allclose(lhot.cell_areas(h["arrays"]), [area[int(i)] for i in g.ids], rtol=1e-9)
        tx.rollback()


def test_heat_vector_tile_matches_the_heat_layer(conn, acity):
    """Heat tiles decode to the cells of the heat layer, with the same densities, in the right tile."""
    import mapbox_vector_tile
    import pytest

    from gis import crs as gcrs
    from layers.core.errors import InputError

    rng = np.random.default_rng(5)
    _random_cases(conn, acity, rng, 300, day0=dt.date(2021, 3, 1), days=5)
    s, e = dt.date(2021, 3, 1), dt.date(2021, 3, 5)
    h = la.heat(conn, acity, s, e, bandwidth=250)
    arr, d = h["arrays"], h["density"]
    top = int(np.argmax(d))
    lon, lat = gcrs.transform_xy(arr.cx[top], arr.cy[top], acity.working_crs, "EPSG:4326")
    z = 15
    mx, my = gcrs.transform_xy(lon, lat, "EPSG:4326", "EPSG:3857")
    size = 2 * la.WEB_MERCATOR_HALF / 2 ** z
    x, y = int((mx + la.WEB_MERCATOR_HALF) // size), int((la.WEB_MERCATOR_HALF - my) // size)
    tile = mapbox_vector_tile.decode(la.heat_tile(conn, acity, s, e, z, x, y, bandwidth=250))
    feats = {f["properties"]["code"]: f["properties"] for f in tile["heat"]["features"]}
    assert str(arr.grid.codes[top]) in feats
    assert feats[str(arr.grid.codes[top])]["density"] == pytest.approx(round(float(d[top]), 3))
    assert feats[str(arr.grid.codes[top])]["level"] == 1.0
    for code, props in feats.items():
        i = int(np.flatnonzero(arr.grid.codes == code)[0])
        assert props["density"] == pytest.approx(round(float(d[i]), 3))
    # a tile far away is empty; a tile that does not exist is refused
    far = mapbox_vector_tile.decode(la.heat_tile(conn, acity, s, e, z, 0, 0))
    assert far.get("heat", {"features": []})["features"] == []
    with pytest.raises(InputError):
        la.heat_tile(conn, acity, s, e, 3, 9, 0)
