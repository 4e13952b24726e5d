import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from gis.hotspots import (
    EMERGING_CATEGORIES,
    classify_emerging,
    classify_hotspots,
    distance_band_weights,
    emerging_hotspots,
    fdr_threshold,
    getis_ord_gi_star,
    gi_star_pvalues,
    mann_kendall,
    queen_weights_regular,
    space_time_gi_star,
)

libpysal = pytest.importorskip("libpysal")
esda = pytest.importorskip("esda")


def _esda_gi_star(y, w):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return esda.G_Local(y, w, transform="B", star=True, permutations=0)


# ---------------------------------------------------------------- weights


def test_queen_weights_match_libpysal_lat2w():
    nrows, ncols = 30, 40
    w = libpysal.weights.lat2W(nrows, ncols, rook=False)  # id k = r * ncols + c
    k = np.arange(nrows * ncols)
    W = queen_weights_regular(k % ncols, k // ncols)
    assert isinstance(W, sp.csr_matrix)
    assert (W != w.sparse).nnz == 0
    assert W.diagonal().sum() == 0
    assert set(np.unique(W.data)) == {1.0}


def test_queen_weights_arbitrary_order_and_holes():
    rng = np.random.default_rng(5)
    cols, rows = np.meshgrid(np.arange(-3, 9), np.arange(100, 111))
    cols, rows = cols.ravel(), rows.ravel()
    keep = rng.random(cols.size) < 0.7
    cols, rows = cols[keep], rows[keep]
    perm = rng.permutation(cols.size)
    cols, rows = cols[perm], rows[perm]
    W = queen_weights_regular(cols, rows).toarray()
    dc = np.abs(cols[:, None] - cols[None, :])
    dr = np.abs(rows[:, None] - rows[None, :])
    expected = (np.maximum(dc, dr) == 1).astype(float)
    np.testing.assert_array_equal(W, expected)


def test_queen_weights_reject_duplicates():
    with pytest.raises(ValueError):
        queen_weights_regular([0, 1, 1], [0, 2, 2])


def test_distance_band_matches_libpysal():
    rng = np.random.default_rng(7)
    pts = rng.uniform(0, 2000, size=(400, 2))
    w = libpysal.weights.DistanceBand.from_array(pts, threshold=180.0, binary=True, silence_warnings=True)
    W = distance_band_weights(pts[:, 0], pts[:, 1], 180.0)
    assert (W != w.sparse).nnz == 0


# ---------------------------------------------------------------- Gi*


def test_gi_star_equals_esda_regular_queen():
    rng = np.random.default_rng(0)
    nrows, ncols = 30, 40
    y = rng.poisson(3.0, nrows * ncols).astype(float)
    y[rng.integers(0, y.size, 25)] += 20  # a few spikes
    w = libpysal.weights.lat2W(nrows, ncols, rook=False)
    k = np.arange(nrows * ncols)
    z = getis_ord_gi_star(y, queen_weights_regular(k % ncols, k // ncols))
    ref = _esda_gi_star(y, w)
    np.testing.assert_allclose(z, ref.Zs, rtol=0, atol=1e-9)
    np.testing.assert_allclose(gi_star_pvalues(z), 2 * ref.p_norm, rtol=1e-9, atol=1e-15)


def test_gi_star_equals_esda_distance_band():
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 3000, size=(600, 2))
    y = rng.gamma(2.0, 3.0, size=600)
    w = libpysal.weights.DistanceBand.from_array(pts, threshold=250.0, binary=True, silence_warnings=True)
    z = getis_ord_gi_star(y, distance_band_weights(pts[:, 0], pts[:, 1], 250.0))
    np.testing.assert_allclose(z, _esda_gi_star(y, w).Zs, rtol=0, atol=1e-9)


def test_gi_star_textbook_formula_and_self_weight():
    rng = np.random.default_rng(2)
    n = 50
    y = rng.poisson(4, n).astype(float)
    A = (rng.random((n, n)) < 0.1).astype(float)
    A = np.triu(A, 1)
    A = A + A.T
    Ws = A + np.eye(n)
    xbar, s = y.mean(), y.std()
    s1, s2 = Ws.sum(1), (Ws**2).sum(1)
    ref = (Ws @ y - xbar * s1) / (s * np.sqrt((n * s2 - s1**2) / (n - 1)))
    np.testing.assert_allclose(getis_ord_gi_star(y, sp.csr_matrix(A)), ref, atol=1e-12)
    # A diagonal already present is kept when self_weight=None, overwritten otherwise.
    np.testing.assert_allclose(getis_ord_gi_star(y, sp.csr_matrix(Ws), self_weight=None), ref, atol=1e-12)
    np.testing.assert_allclose(getis_ord_gi_star(y, sp.csr_matrix(A + 5 * np.eye(n))), ref, atol=1e-12)
    # Constant attribute: no variance, no hot spots.
    assert np.all(getis_ord_gi_star(np.ones(n), sp.csr_matrix(A)) == 0)


# ---------------------------------------------------------------- FDR / bins


def test_fdr_threshold_benjamini_hochberg_1995_example():
    # The 15 p-values of Benjamini & Hochberg (1995), section 4: at q = 0.05
    # the step-up procedure rejects the four smallest.
    p = np.array(
        "0.0201 0.0001 0.0004 0.0019 0.0095 0.0278 0.0298 0.0344 "
        "0.0459 0.3240 0.4262 0.5719 0.6528 0.7590 1.0000".split(),
        dtype=float,
    )
    assert fdr_threshold(p, 0.05) == 0.0095
    assert np.sum(p <= fdr_threshold(p, 0.05)) == 4
    assert fdr_threshold(np.array([0.5, 0.9]), 0.05) == 0.0


def test_fdr_threshold_matches_scipy_adjusted_pvalues():
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.uniform(size=900), rng.uniform(0, 0.002, size=100)])
    adj = stats.false_discovery_control(p, method="bh")
    for alpha in (0.10, 0.05, 0.01):
        np.testing.assert_array_equal(p <= fdr_threshold(p, alpha), adj <= alpha)


def test_classify_hotspots_bins_and_fdr():
    z = np.array([3.0, 2.2, 1.7, 0.5, -1.7, -2.2, -3.0])
    p = gi_star_pvalues(z)  # 0.0027, 0.028, 0.089, 0.62, ...
    np.testing.assert_array_equal(classify_hotspots(z, p, fdr=False), [3, 2, 1, 0, -1, -2, -3])
    # Add 993 null cells: BH at each level removes the weak ones.
    zz = np.concatenate([z, np.zeros(993)])
    bins = classify_hotspots(zz, fdr=True)[:7]
    pp = gi_star_pvalues(zz)
    for lvl, a in ((1, 0.10), (2, 0.05), (3, 0.01)):
        thr = fdr_threshold(pp, a)
        assert np.all((np.abs(bins) >= lvl) == (pp[:7] <= thr))
    assert np.all(np.abs(bins) <= np.abs(classify_hotspots(z, p, fdr=False)))
    assert classify_hotspots(zz, fdr=True).dtype == np.int8


# ---------------------------------------------------------------- Mann-Kendall


def test_mann_kendall_hand_values():
    t = 10
    up = np.arange(t, dtype=float)
    res = mann_kendall(np.column_stack([up, up[::-1], np.ones(t)]))
    var = t * (t - 1) * (2 * t + 5) / 18.0  # 125
    np.testing.assert_allclose(res.s, [45, -45, 0])
    np.testing.assert_allclose(res.z, [44 / np.sqrt(var), -44 / np.sqrt(var), 0])
    np.testing.assert_allclose(res.p[2], 1.0)
    # Ties: x = [1, 2, 2, 3]: S = 5, Var = (4*3*13 - 2*1*9)/18 = 138/18.
    r = mann_kendall(np.array([1.0, 2, 2, 3]))
    assert r.s[0] == 5
    np.testing.assert_allclose(r.z[0], 4 / np.sqrt(138 / 18))


def test_mann_kendall_against_bruteforce_and_scipy():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 4, size=(12, 200)).astype(float)  # many ties
    res = mann_kendall(x)
    for j in range(0, 200, 7):
        col = x[:, j]
        s = sum(np.sign(col[b] - col[a]) for a in range(12) for b in range(a + 1, 12))
        assert res.s[j] == s
        if s != 0:
            kt = stats.kendalltau(np.arange(12), col, method="asymptotic")
            sd = abs(s) / stats.norm.isf(kt.pvalue / 2)  # sqrt(Var S) used by scipy
            np.testing.assert_allclose(res.z[j], (s - np.sign(s)) / sd, rtol=1e-9)


# ---------------------------------------------------------------- emerging


def _series(pattern, z_trend=None):
    """bins from a string ('H' hot, 'C' cold, '.' none) and a z series."""
    b = np.array([{"H": 1, "C": -1, ".": 0}[ch] for ch in pattern])
    z = b * 3.0 if z_trend is None else np.asarray(z_trend, float)
    return z, b


HOT_UP = np.linspace(2.0, 6.0, 10)
HOT_FLAT = np.array([3.0, 3.2, 2.9, 3.1, 3.0, 2.8, 3.1, 3.0, 3.2, 2.9])

CASES = [
    ("..........", None, "No Pattern Detected"),
    (".........H", None, "New Hot Spot"),
    ("......HHHH", None, "Consecutive Hot Spot"),
    ("HHHHHHHHHH", HOT_UP, "Intensifying Hot Spot"),
    ("HHHHHHHHHH", HOT_FLAT, "Persistent Hot Spot"),
    (".HHHHHHHHH", np.r_[0.0, HOT_FLAT[1:]], "Persistent Hot Spot"),  # 90 %
    ("HHHHHHHHHH", HOT_UP[::-1], "Diminishing Hot Spot"),
    ("..H..H...H", None, "Sporadic Hot Spot"),
    ("H.H....HHH", None, "Sporadic Hot Spot"),  # hot before the final run
    ("..C..H...H", None, "Oscillating Hot Spot"),
    ("CC.......H", None, "Oscillating Hot Spot"),  # cold history beats "new"
    ("HHHHHHHHH.", None, "Historical Hot Spot"),
    ("HHHHHHHH..", None, "No Pattern Detected"),  # 80 % and not hot now
    ("HHHHHHHHHC", None, "Oscillating Cold Spot"),  # final state wins
    (".........C", None, "New Cold Spot"),
    ("........CC", None, "Consecutive Cold Spot"),
    ("CCCCCCCCCC", -HOT_UP, "Intensifying Cold Spot"),
    ("CCCCCCCCCC", -HOT_FLAT, "Persistent Cold Spot"),
    ("CCCCCCCCCC", -HOT_UP[::-1], "Diminishing Cold Spot"),
    ("C...C...CC", None, "Sporadic Cold Spot"),
    ("H...C....C", None, "Oscillating Cold Spot"),
    ("CCCCCCCCC.", None, "Historical Cold Spot"),
]


@pytest.mark.parametrize("pattern, z, expected", CASES)
def test_classify_emerging_each_category(pattern, z, expected):
    zz, b = _series(pattern, z)
    assert classify_emerging(zz[:, None], b[:, None])[0] == expected


def test_classify_emerging_vectorised_over_cells():
    zs, bs = zip(*[_series(p, z) for p, z, _ in CASES], strict=True)
    out = classify_emerging(np.column_stack(zs), np.column_stack(bs))
    assert list(out) == [e for _, _, e in CASES]
    assert set(out) <= set(EMERGING_CATEGORIES)


def test_space_time_gi_star_reduces_to_gi_star():
    rng = np.random.default_rng(8)
    k = np.arange(15 * 12)
    W = queen_weights_regular(k % 15, k // 15)
    y = rng.poisson(3, k.size).astype(float)
    np.testing.assert_allclose(
        space_time_gi_star(y[None, :], W, time_lag=0)[0], getis_ord_gi_star(y, W), atol=1e-12
    )
    # time_lag=1 on a cube equals Gi* over the flattened cube with space-time weights.
    cube = rng.poisson(3, (4, k.size)).astype(float)
    Wst = sp.kron(sp.eye(4) + sp.eye(4, k=-1), W + sp.eye(k.size)).tocsr()
    ref = getis_ord_gi_star(cube.ravel(), Wst, self_weight=None).reshape(4, -1)
    np.testing.assert_allclose(space_time_gi_star(cube, W, time_lag=1), ref, atol=1e-12)


def test_emerging_hotspots_end_to_end():
    rng = np.random.default_rng(9)
    nr = nc = 21
    k = np.arange(nr * nc)
    cols, rows = k % nc, k // nc
    W = queen_weights_regular(cols, rows)
    t = 12
    cube = rng.poisson(2.0, (t, k.size)).astype(float)
    block_new = (np.abs(cols - 4) <= 1) & (np.abs(rows - 4) <= 1)
    block_int = (np.abs(cols - 15) <= 1) & (np.abs(rows - 15) <= 1)
    cube[-1, block_new] += 25
    cube[:, block_int] += np.linspace(10, 40, t)[:, None]
    cat = emerging_hotspots(cube, W, time_lag=1)
    centre_new = np.nonzero((cols == 4) & (rows == 4))[0][0]
    centre_int = np.nonzero((cols == 15) & (rows == 15))[0][0]
    assert cat[centre_new] == "New Hot Spot"
    assert cat[centre_int] == "Intensifying Hot Spot"
    far = (np.abs(cols - 4) > 3) & (np.abs(cols - 15) > 3) & (np.abs(rows - 4) > 3) & (np.abs(rows - 15) > 3)
    assert np.mean(cat[far] == "No Pattern Detected") > 0.9
