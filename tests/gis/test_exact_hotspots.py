"""The exact hot-spot test (gis/exact_hotspots.py): valid under complete spatial randomness, finds an
injected cluster, p-values equal scipy's binomial test, Moran's I equals esda; emerging hot spots on
the same inference; the burst scan's false-alert rate at a recurrence-interval threshold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from gis import exact_hotspots as gex

CELL = 100.0


def _disc(radius_cells: int = 191):
    """A round synthetic city of 100 m cells: radius 191 cells = 114,553 cells (Haimen has 114,778)."""
    cc, rr = np.meshgrid(np.arange(-radius_cells, radius_cells + 1), np.arange(-radius_cells, radius_cells + 1))
    inside = cc**2 + rr**2 <= radius_cells**2
    cols, rows = cc[inside].ravel(), rr[inside].ravel()
    return cols, rows, cols * CELL + CELL / 2, rows * CELL + CELL / 2


@pytest.fixture(scope="module")
def city():
    return _disc()


def _uniform(rng, n_cells, n_cases):
    return np.bincount(rng.integers(0, n_cells, n_cases), minlength=n_cells).astype(float)


def test_complete_spatial_randomness_stays_within_the_fdr_level(city):
    """Cases uniform over the city (500, 3,500 and 40,000; 10 seeds each). Under the complete null every
    rejection is false, so BH's FDR equals the probability that a run has any significant unit: at most
    q = 0.10 for the 90 % bin (and 0.01 for the 99 % bin), given the exact (valid, conservative) p-values
    and the positive dependence of overlapping neighbourhoods. The number of runs with any hot unit is
    then at most Binomial(30, 0.10); the test allows its 99.9 % quantile (9 of 30), and at most the
    99.9 % quantile of Binomial(30, 0.01) (3) runs with a 99 % hot unit. Expected: 0 in most runs."""
    cols, rows, cx, cy = city
    runs = any_hot = any_99 = 0
    hot_cells = {}
    for n_cases in (500, 3_500, 40_000):
        hot_cells[n_cases] = []
        for seed in range(10):
            x = _uniform(np.random.default_rng(1000 * n_cases + seed), cols.size, n_cases)
            r = gex.exact_hotspots(x, cols, rows, cx, cy, CELL)
            assert r.n_cases == n_cases and r.report["neighbours"] == 8
            assert r.report["expected_per_neighbourhood"] >= 10 - 1e-9
            runs += 1
            any_hot += bool((r.bins > 0).any())
            any_99 += bool((r.bins == 3).any())
            hot_cells[n_cases].append(int((r.per_cell(r.bins) > 0).sum()))
    assert any_hot <= stats.binom.ppf(0.999, runs, 0.10) == 9, (any_hot, hot_cells)
    assert any_99 <= stats.binom.ppf(0.999, runs, 0.01) == 3, (any_99, hot_cells)
    # the probe: 3,500 random cases, not thousands of hot cells (the old Gi* marked 3,496)
    assert np.median(hot_cells[3_500]) == 0, hot_cells


@pytest.mark.parametrize("n_background,seeds", [(3_500, 20), (40_000, 10)])
def test_injected_cluster_is_found_at_its_place(city, n_background, seeds):
    """60 extra cases around one point (2-D normal, sd 150 m: ~95 % within 370 m) on top of uniform
    background: its analysis unit is a significant hot spot in at least 90 % of the seeds."""
    cols, rows, cx, cy = city
    key = {(int(c), int(r)): i for i, (c, r) in enumerate(zip(cols, rows, strict=True))}
    found = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        x = _uniform(rng, cols.size, n_background)
        centre = (int(rng.integers(-120, 120)), int(rng.integers(-120, 120)))
        pts = np.floor((np.array(centre) * CELL + CELL / 2 + rng.normal(0, 150, (60, 2))) / CELL).astype(int)
        for c, r in pts:
            x[key[(int(c), int(r))]] += 1
        res = gex.exact_hotspots(x, cols, rows, cx, cy, CELL)
        found += res.per_cell(res.bins)[key[centre]] > 0
    assert found >= 0.9 * seeds, found


def _brute_force(x, cols, rows, cx, cy, base, k):
    """Independent implementation: blocks of k x k cells by a dict, the neighbourhood (the unit and
    every unit as near as its 8th nearest) by a full distance matrix, scipy.stats.binomtest."""
    units: dict = {}
    for i, (c, r) in enumerate(zip(cols, rows, strict=True)):
        units.setdefault((int(c) // k, int(r) // k), []).append(i)
    keys = sorted(units)
    members = [np.array(units[u]) for u in keys]
    ubase = np.array([base[m].sum() for m in members])
    ux = np.array([(base[m] * cx[m]).sum() for m in members]) / ubase
    uy = np.array([(base[m] * cy[m]).sum() for m in members]) / ubase
    ucount = np.array([x[m].sum() for m in members])
    d = np.hypot(ux[:, None] - ux[None, :], uy[:, None] - uy[None, :])
    n = int(x.sum())
    p_hot, p_cold, cell_unit = [], [], np.empty(x.size, dtype=int)
    for j, m in enumerate(members):
        cell_unit[m] = j
        nb = d[j] <= np.sort(d[j])[8] * (1 + 1e-9) + 1e-9
        obs = int(ucount[nb].sum())
        share = ubase[nb].sum() / base.sum()
        p_hot.append(stats.binomtest(obs, n, share, alternative="greater").pvalue)
        p_cold.append(stats.binomtest(obs, n, share, alternative="less").pvalue)
    return np.array(p_hot), np.array(p_cold), cell_unit


@pytest.mark.parametrize("k", [1, 2, None])
def test_pvalues_equal_scipy_binomtest(k):
    """A small grid (40 x 25 cells, a clipped corner with partial areas) with a blob: the exact
    p-values of every unit's neighbourhood equal scipy.stats.binomtest computed independently."""
    cc, rr = np.meshgrid(np.arange(40), np.arange(25))
    keep = ~((cc > 33) & (rr > 19))
    cols, rows = cc[keep].ravel(), rr[keep].ravel()
    cx, cy = cols * CELL + 50, rows * CELL + 50
    base = np.where((cols == 0) | (rows == 0), 5_000.0, 10_000.0)  # boundary cells clipped to half
    rng = np.random.default_rng(3)
    x = rng.poisson(0.4, cols.size).astype(float)
    x[(np.abs(cols - 12) <= 1) & (np.abs(rows - 8) <= 1)] += 4
    r = gex.exact_hotspots(x, cols, rows, cx, cy, CELL, base=base, k=k)
    bk = r.scale.k
    assert k is None or bk == k
    p_hot, p_cold, cell_unit = _brute_force(x, cols, rows, cx, cy, base, bk)
    # the same partition of the cells into units
    assert len(set(zip(r.scale.unit.tolist(), cell_unit.tolist(), strict=True))) == r.scale.m == cell_unit.max() + 1
    order = np.array([int(np.flatnonzero(r.scale.unit == u)[0]) for u in range(r.scale.m)])
    np.testing.assert_allclose(r.p_hot, p_hot[cell_unit[order]], rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(r.p_cold, p_cold[cell_unit[order]], rtol=1e-9, atol=1e-300)
    assert np.allclose(r.p, np.minimum(1, 2 * np.minimum(r.p_hot, r.p_cold)))
    # the blob is a hot spot; BH at 0.05 equals scipy's BH-adjusted p-values on the same p-values
    assert (r.bins[r.scale.unit[(cols == 12) & (rows == 8)]] > 0).all()
    rej = stats.false_discovery_control(r.p, method="bh") <= 0.05
    assert rej.any() and np.array_equal(rej, np.abs(r.bins) >= 2)


def test_too_few_cases():
    cols, rows, cx, cy = _disc(20)
    x = np.zeros(cols.size)
    x[:29] = 1
    with pytest.raises(gex.TooFewCases, match="29"):
        gex.exact_hotspots(x, cols, rows, cx, cy, CELL)
    x[29] = 1
    assert gex.exact_hotspots(x, cols, rows, cx, cy, CELL).n_cases == 30


def test_every_unit_has_eight_neighbours_and_the_edge_is_handled():
    cols, rows, cx, cy = _disc(30)
    x = np.random.default_rng(0).poisson(0.5, cols.size).astype(float)
    r = gex.exact_hotspots(x, cols, rows, cx, cy, CELL, k=3)
    nb = r.scale.neighbourhoods()
    size = np.diff(nb.indptr)
    assert size.min() >= 9 and np.all(nb.diagonal() == 1) and r.report["neighbours"] >= 8
    # interior units: exactly the queen ring
    interior = np.flatnonzero(np.hypot(r.scale.ux, r.scale.uy) < 2000)
    assert interior.size > 20 and np.all(size[interior] == 9)
    key = {tuple(k): j for j, k in enumerate(r.scale.ukey.tolist())}
    for j in interior[:10]:
        c, rr = r.scale.ukey[j]
        ring = {key[(c + dc, rr + dr)] for dc in (-1, 0, 1) for dr in (-1, 0, 1)}
        assert set(nb[j].indices.tolist()) == ring


def test_moran_z_equals_esda():
    import esda
    import libpysal

    from gis import hotspots as ghot

    rng = np.random.default_rng(5)
    w = libpysal.weights.lat2W(12, 9, rook=False)
    y = rng.poisson(2 + np.repeat(np.arange(12), 9) / 3).astype(float)
    w.transform = "B"
    ref = esda.Moran(y, w, transformation="B", permutations=0).z_norm
    r_, c_ = np.divmod(np.arange(108), 9)
    W = ghot.queen_weights_regular(c_, r_)
    assert gex.moran_z(y, W) == pytest.approx(ref, rel=1e-9)


def test_scale_follows_the_data(city):
    """Sparse data are aggregated more (a neighbourhood expects >= 10 cases), and the report says why."""
    cols, rows, cx, cy = city
    rng = np.random.default_rng(8)
    ks = []
    for n in (500, 3_500, 40_000):
        r = gex.exact_hotspots(_uniform(rng, cols.size, n), cols, rows, cx, cy, CELL)
        ks.append(r.scale.k)
        assert r.report["unit_m"] == r.scale.k * CELL and r.report["cases"] == n and r.report["reason"]
        assert r.report["tried"][0]["k"] == r.report["min_feasible_k"]
    assert ks[0] > ks[1] > ks[2] >= 1


def test_emerging_on_the_exact_test():
    """Random weekly data: no pattern almost everywhere; a place that becomes hot in the last two of
    ten weeks is a New/Consecutive hot spot."""
    cols, rows, cx, cy = _disc(60)
    n = cols.size
    rng = np.random.default_rng(2)
    cube = np.stack([_uniform(rng, n, 400) for _ in range(10)])
    cats, scale, rep = gex.exact_emerging(cube, cols, rows, cx, cy, CELL)
    assert rep["cases"] == 4000 and (cats != "No Pattern Detected").mean() < 0.05
    place = np.flatnonzero((np.abs(cols - 10) <= 1) & (np.abs(rows + 5) <= 1))
    for t in (8, 9):
        cube[t, place] += 5
    cats, scale, rep = gex.exact_emerging(cube, cols, rows, cx, cy, CELL)
    got = set(cats[scale.unit[place]].tolist())
    assert got & {"New Hot Spot", "Consecutive Hot Spot"}, got


def test_scan_false_alert_rate_at_a_recurrence_threshold():
    """Shuffled days (no space-time interaction): a cluster is an alert when its recurrence interval
    1/p is at least T days. The permutation p is valid, so P(alert) <= 1/T. Fast configuration: T = 10
    days with 99 replicates, 60 analyses (the default, T = 365 with 999 replicates, is the same rule;
    bench/bench_analytics.py runs it). Allowed: the 99.9 % quantile of Binomial(60, 1/10)."""
    from gis.bursts import space_time_permutation_scan

    rng = np.random.default_rng(21)
    cc, rr = np.meshgrid(np.arange(20), np.arange(15))
    cx, cy = cc.ravel() * CELL, rr.ravel() * CELL
    runs, alerts, ri_min = 60, 0, 10.0
    for _ in range(runs):
        n = 250
        cell = rng.integers(0, cx.size, n)
        day = rng.permutation(np.arange(n) % 28)
        counts = np.zeros((cx.size, 28), dtype=np.int64)
        np.add.at(counts, (cell, day), 1)
        cl = space_time_permutation_scan(counts, cx, cy, max_window=7, n_sim=99, seed=int(rng.integers(1 << 30)),
                                         max_cells=20)
        alerts += any(c.recurrence_days >= ri_min for c in cl)
    assert alerts <= stats.binom.ppf(0.999, runs, 1 / ri_min), alerts


def test_dissolving_whole_units_beside_clipped_ones():
    """A whole unit is drawn as its k x k square, a unit cut by the city's edge as the union of its
    clipped cells: along their common edge only the latter has vertices at the cell corners. The
    dissolved layer is still their exact union (a coverage union refused it: the dashboard got a 500)."""
    import shapely

    size, k = 100.0, 2
    boundary = shapely.Polygon([(0, 0), (400, 0), (400, 130), (0, 170)])  # a slanted north edge
    cols, rows = np.meshgrid(np.arange(4), np.arange(2))
    cols, rows = cols.ravel(), rows.ravel()
    cells = shapely.intersection(shapely.box(cols * size, rows * size, (cols + 1) * size, (rows + 1) * size), boundary)
    base = shapely.area(cells)
    scale = gex.aggregate(cols, rows, cols * size + 50, rows * size + 50, base, k, size)
    geoms = gex.unit_geometries(scale, cells, np.arange(scale.m))
    assert scale.m == 2 and not all(g.equals(shapely.box(*g.bounds)) for g in geoms)
    whole = shapely.box(0, 0, 400, 100)
    mixed = np.array([shapely.box(0, 0, 200, 200), shapely.union_all(cells[cols >= 2])], dtype=object)
    for parts in (geoms, mixed):
        out = gex.dissolve_units(parts)
        assert out.is_valid and out.area == pytest.approx(sum(shapely.area(parts)), rel=1e-9)
    assert gex.dissolve_units(mixed).contains(whole)
