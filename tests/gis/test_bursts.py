import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from gis.bursts import space_time_permutation_scan, surge_rule


def _grid(n):
    k = np.arange(n * n)
    return (k % n) * 100.0, (k // n) * 100.0


def _background(rng, n_cells, n_days, n_cases):
    """Cases with uniformly random cell and day: the permutation null holds exactly."""
    counts = np.zeros((n_cells, n_days), dtype=np.int64)
    np.add.at(counts, (rng.integers(0, n_cells, n_cases), rng.integers(0, n_days, n_cases)), 1)
    return counts


def _brute_force_max_llr(counts, cx, cy, max_window, max_cells, max_radius, max_share, min_cases):
    """Direct enumeration of circles (all cells within r) x prospective windows."""
    cz, cd, total = counts.sum(1), counts.sum(0), counts.sum()
    active = np.nonzero(cz > 0)[0]
    t = counts.shape[1]
    best = 0.0
    for i in active:
        d = np.hypot(cx[active] - cx[i], cy[active] - cy[i])
        for r in np.unique(d):
            members = active[d <= r + 1e-9]
            if r > max_radius + 1e-9 or members.size > max_cells:
                break
            if cz[members].sum() > max_share * total:
                break
            for w in range(1, max_window + 1):
                c = counts[members, t - w :].sum()
                mu = cz[members].sum() * cd[t - w :].sum() / total
                if c > mu and c >= min_cases:
                    llr = c * np.log(c / mu)
                    if total > c:
                        llr += (total - c) * np.log((total - c) / (total - mu))
                    best = max(best, llr)
    return best


def test_injected_cluster_is_found():
    rng = np.random.default_rng(11)
    n, t = 20, 60
    cx, cy = _grid(n)
    counts = _background(rng, n * n, t, 3000)
    inj = np.array([7 * n + 7, 7 * n + 8, 8 * n + 7])  # three adjacent cells (an L)
    counts[inj, -2] += 5
    counts[inj, -1] += 5  # 30 extra cases in the last 2 days
    clusters = space_time_permutation_scan(counts, cx, cy, max_window=7, n_sim=199, seed=1)
    top = clusters[0]
    assert top.p_value < 0.05
    assert set(inj) <= set(top.cells.tolist())
    assert top.cells.size <= 5  # the injected cells plus at most the rest of a radius-1 circle
    assert (top.start_day, top.end_day) == (t - 2, t - 1)
    assert top.observed >= 30 and top.expected < 5
    cz, cd = counts.sum(1), counts.sum(0)
    assert top.expected == pytest.approx(cz[top.cells].sum() * cd[-2:].sum() / counts.sum())
    assert top.recurrence_days == pytest.approx(1.0 / top.p_value)
    # Secondary clusters never share a cell with a more likely one, LLR decreasing.
    seen = set()
    for c in clusters:
        assert not seen & set(c.cells.tolist())
        seen |= set(c.cells.tolist())
    assert all(a.llr >= b.llr for a, b in itertools.pairwise(clusters))


def test_most_likely_cluster_matches_brute_force():
    rng = np.random.default_rng(12)
    n, t = 8, 20
    cx, cy = _grid(n)
    cx = cx + rng.normal(0, 5, cx.size)  # break most distance ties
    counts = _background(rng, n * n, t, 500)
    counts[[10, 11, 18], -3:] += 2
    counts[40, :] = 0  # an inactive cell
    kw = dict(max_window=5, max_cells=12, max_radius=250.0, max_share=0.5, min_cases=2)
    clusters = space_time_permutation_scan(counts, cx, cy, n_sim=9, seed=0, **kw)
    ref = _brute_force_max_llr(counts, cx, cy, **kw)
    assert clusters[0].llr == pytest.approx(ref, rel=1e-12)
    # Same with exact ties on the regular grid (circles of 1, 5, 9, ... cells).
    gx, gy = _grid(n)
    clusters = space_time_permutation_scan(counts, gx, gy, n_sim=9, seed=0, **kw)
    assert clusters[0].llr == pytest.approx(_brute_force_max_llr(counts, gx, gy, **kw), rel=1e-12)
    assert clusters[0].cells.size in (1, 5, 9)


def test_null_false_positive_rate():
    # Day labels of individual cases are shuffled: no space-time interaction.
    n_seeds, hits, pvals = 40, 0, []
    n, t = 10, 30
    cx, cy = _grid(n)
    for seed in range(n_seeds):
        rng = np.random.default_rng(1000 + seed)
        cells = rng.integers(0, n * n, 800)
        cells = np.where(rng.random(800) < 0.5, cells, rng.integers(0, 10, 800))  # uneven space
        days = rng.permutation(np.repeat(np.arange(t), 800 // t + 1)[:800])  # flat in time
        counts = np.zeros((n * n, t), dtype=np.int64)
        np.add.at(counts, (cells, days), 1)
        cl = space_time_permutation_scan(counts, cx, cy, n_sim=99, seed=seed)
        p = cl[0].p_value if cl else 1.0
        hits += p < 0.05
        pvals.append(p)
    # Monte Carlo p-values are valid: P(p <= 0.05) <= 0.05 under the null.
    assert hits <= stats.binom.ppf(0.999, n_seeds, 0.05)
    # ... and not degenerate (roughly uniform; the mean of 40 U(0,1) has SD 0.046).
    assert 0.3 < np.mean(pvals) < 0.7


def test_deterministic_with_seed_and_sparse_input():
    rng = np.random.default_rng(13)
    cx, cy = _grid(12)
    counts = _background(rng, 144, 40, 900)
    a = space_time_permutation_scan(counts, cx, cy, n_sim=49, seed=5)
    b = space_time_permutation_scan(counts, cx, cy, n_sim=49, seed=5)
    c = space_time_permutation_scan(sp.csr_matrix(counts), cx, cy, n_sim=49, seed=5)
    key = lambda cl: [(x.cells.tolist(), x.start_day, x.observed, x.llr, x.p_value) for x in cl]  # noqa: E731
    assert key(a) == key(b) == key(c)


def test_scan_edge_cases():
    cx, cy = _grid(3)
    assert space_time_permutation_scan(np.zeros((9, 10), int), cx, cy, n_sim=9, seed=0) == []
    # All cases on one day: every cylinder has observed == expected -> nothing to report.
    counts = np.zeros((9, 10), int)
    counts[:, -1] = 3
    assert space_time_permutation_scan(counts, cx, cy, n_sim=9, seed=0) == []
    with pytest.raises(ValueError):
        space_time_permutation_scan(np.zeros((9, 10), int), cx[:5], cy[:5])
    with pytest.raises(ValueError):
        space_time_permutation_scan(np.full((9, 10), 0.5), cx, cy)


def test_surge_rule():
    base = np.array([[10, 0, 40, 3], [12, 0, 42, 3], [11, 0, 38, 3], [9, 0, 40, 3]])
    # class 0: 30 >> 10.5 (sd 1.3, floor sqrt(10.5)=3.2 -> 20.2) and >= 21 -> flag
    # class 1: new class with 6 >= min_count -> flag
    # class 2: 70 > 40 + 3 * 6.3, but < 2 * 40 -> no flag
    # class 3: 8 > 3 + 3 * sqrt(3) = 8.2? no -> no flag (Poisson floor)
    today = np.array([30, 6, 70, 8])
    np.testing.assert_array_equal(
        surge_rule(today, base, min_count=5, factor=2.0), [True, True, False, False]
    )
    np.testing.assert_array_equal(
        surge_rule(today, base, min_count=5, factor=2.0, poisson_floor=False), [True, True, False, True]
    )
    np.testing.assert_array_equal(surge_rule([4], [[0], [0]], min_count=5), [False])
    np.testing.assert_array_equal(surge_rule([30, 30], np.empty((0, 2)), min_count=5), [True, True])
