"""Local hot-spot statistics on grid cells: spatial weights, Getis-Ord Gi*,
FDR-corrected hot/cold classification and Emerging Hot Spot Analysis.

All functions are pure (numpy/scipy only) and work on cell-level arrays in a
fixed cell order: index ``i`` of every input/output array refers to the same
cell. Weights are ``scipy.sparse.csr_matrix`` of shape ``(n, n)``; row ``i``
holds the neighbours of cell ``i``. Weight builders return *binary* weights
with a zero diagonal; the Gi* self-weight is added by :func:`getis_ord_gi_star`.

References
----------
* Ord, J.K. & Getis, A. (1995). Local spatial autocorrelation statistics:
  distributional issues and an application. Geographical Analysis 27(4),
  286-306.
* Benjamini, Y. & Hochberg, Y. (1995). Controlling the false discovery rate.
  JRSS B 57(1), 289-300.
* Esri, "How Hot Spot Analysis (Getis-Ord Gi*) works" and "How Emerging Hot
  Spot Analysis works" (ArcGIS Pro tool reference).
* Mann, H.B. (1945) Nonparametric tests against trend, Econometrica 13;
  Kendall, M.G. (1975) Rank Correlation Methods; Gilbert, R.O. (1987)
  Statistical Methods for Environmental Pollution Monitoring, ch. 16.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree
from scipy.special import ndtr

__all__ = [
    "queen_weights_regular",
    "distance_band_weights",
    "getis_ord_gi_star",
    "gi_star_pvalues",
    "fdr_threshold",
    "classify_hotspots",
    "MannKendall",
    "mann_kendall",
    "space_time_gi_star",
    "classify_emerging",
    "emerging_hotspots",
    "EMERGING_CATEGORIES",
]

# --------------------------------------------------------------------------
# Spatial weights
# --------------------------------------------------------------------------

_QUEEN_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _symmetric_binary(i: np.ndarray, j: np.ndarray, n: int) -> sp.csr_matrix:
    """Binary symmetric CSR matrix from one-sided pairs (i, j), i != j."""
    rows = np.concatenate([i, j])
    cols = np.concatenate([j, i])
    data = np.ones(rows.size, dtype=np.float64)
    w = sp.csr_matrix((data, (rows, cols)), shape=(n, n))
    w.sum_duplicates()
    w.data[:] = 1.0
    w.sort_indices()
    return w


def queen_weights_regular(cols, rows) -> sp.csr_matrix:
    """Binary queen (8-neighbour) contiguity weights for cells of a regular grid.

    Parameters
    ----------
    cols, rows : array_like of int, shape (n,)
        Integer grid keys of the cells (column and row index). Cells need not
        form a full rectangle; missing cells simply have fewer neighbours.

    Returns
    -------
    W : csr_matrix, shape (n, n)
        ``W[i, j] = 1`` if cells i and j share an edge or a corner
        (``max(|dc|, |dr|) == 1``), else 0; zero diagonal, symmetric.
        Same definition as ``libpysal.weights.lat2W(..., rook=False)``.

    Notes
    -----
    Keys are packed into one int64 with a one-cell pad on every side (so no
    offset can wrap into another column), sorted once, and each of the eight
    neighbour offsets is resolved with a vectorised ``searchsorted``:
    O(n log n), no Python loop over cells.
    """
    c = np.asarray(cols, dtype=np.int64).ravel()
    r = np.asarray(rows, dtype=np.int64).ravel()
    if c.shape != r.shape:
        raise ValueError("cols and rows must have the same length")
    n = c.size
    if n == 0:
        return sp.csr_matrix((0, 0), dtype=np.float64)
    c0 = c - c.min() + 1
    r0 = r - r.min() + 1
    height = int(r0.max()) + 2
    if (int(c0.max()) + 2) * height >= np.iinfo(np.int64).max:
        raise ValueError("grid extent too large to pack keys into int64")
    key = c0 * height + r0
    order = np.argsort(key, kind="stable")
    skey = key[order]
    if n > 1 and np.any(skey[1:] == skey[:-1]):
        raise ValueError("duplicate (col, row) keys")
    src_parts, dst_parts = [], []
    # Only the four "forward" offsets are needed; symmetry supplies the rest.
    for dc, dr in _QUEEN_OFFSETS[4:]:
        target = key + dc * height + dr
        pos = np.searchsorted(skey, target)
        pos_c = np.minimum(pos, n - 1)
        hit = skey[pos_c] == target
        src_parts.append(np.nonzero(hit)[0])
        dst_parts.append(order[pos_c[hit]])
    return _symmetric_binary(np.concatenate(src_parts), np.concatenate(dst_parts), n)


def distance_band_weights(x, y, threshold: float) -> sp.csr_matrix:
    """Binary distance-band weights: ``W[i, j] = 1`` iff ``i != j`` and
    ``d(i, j) <= threshold`` (same rule as ``libpysal.weights.DistanceBand``
    with ``binary=True``). Zero diagonal, symmetric CSR. Coordinates in metres
    (any projected unit; ``threshold`` in the same unit).
    """
    xy = np.column_stack([np.asarray(x, float).ravel(), np.asarray(y, float).ravel()])
    n = xy.shape[0]
    if n == 0:
        return sp.csr_matrix((0, 0), dtype=np.float64)
    pairs = cKDTree(xy).query_pairs(r=float(threshold), output_type="ndarray")
    return _symmetric_binary(pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), n)


# --------------------------------------------------------------------------
# Getis-Ord Gi*
# --------------------------------------------------------------------------


def getis_ord_gi_star(counts, W, self_weight: float | None = 1.0) -> np.ndarray:
    """Getis-Ord Gi* z-scores (Ord & Getis 1995, eq. 14-16; Esri Hot Spot Analysis).

    ``z_i = (sum_j w_ij x_j - xbar * S1_i) / (s * sqrt((n * S2_i - S1_i**2) / (n - 1)))``

    with ``S1_i = sum_j w_ij``, ``S2_i = sum_j w_ij**2``, ``xbar = mean(x)`` and
    ``s = sqrt(mean(x**2) - xbar**2)`` (population SD, divisor n); all sums run
    over j = 1..n *including* i (the "star" version).

    Parameters
    ----------
    counts : array_like, shape (n,)
        Attribute per cell (e.g. case counts).
    W : sparse matrix, shape (n, n)
        Spatial weights, usually binary from :func:`queen_weights_regular` or
        :func:`distance_band_weights`.
    self_weight : float or None
        Value written on the diagonal of ``W`` (default 1, i.e. each cell is
        its own neighbour). ``None`` keeps the diagonal of ``W`` as given.

    Returns
    -------
    z : ndarray, shape (n,)
        Gi* z-scores. If ``x`` is constant (s = 0) every z is 0; a cell whose
        neighbourhood is the whole study area (n*S2 = S1**2) gets z = 0.

    Notes
    -----
    For binary weights this equals ``esda.G_Local(y, w, transform='B',
    star=True).Zs``: esda fills a zero diagonal with 1 for ``'B'`` and uses
    ``E[G*_i] = S1_i / n`` and ``Var[G*_i] = S1_i (n - S1_i) / (n - 1) / n**2 *
    s**2 / xbar**2`` (its "cardinality" is the row sum including the self), which
    is the expression above with ``S2_i = S1_i``.
    """
    x = np.asarray(counts, dtype=np.float64).ravel()
    n = x.size
    W = sp.csr_matrix(W, dtype=np.float64)
    if W.shape != (n, n):
        raise ValueError(f"W has shape {W.shape}, expected {(n, n)}")
    diag = W.diagonal()
    d = diag if self_weight is None else np.full(n, float(self_weight))
    wx = W @ x - diag * x + d * x
    s1 = np.asarray(W.sum(axis=1)).ravel() - diag + d
    s2 = np.asarray(W.multiply(W).sum(axis=1)).ravel() - diag**2 + d**2
    xbar = x.mean()
    s = np.sqrt(max(np.mean(x * x) - xbar * xbar, 0.0))
    den = s * np.sqrt(np.maximum(n * s2 - s1 * s1, 0.0) / (n - 1)) if n > 1 else np.zeros(n)
    num = wx - xbar * s1
    z = np.zeros(n)
    ok = den > 0
    z[ok] = num[ok] / den[ok]
    return z


def gi_star_pvalues(z) -> np.ndarray:
    """Two-sided normal p-values ``2 * (1 - Phi(|z|))`` (Esri's Gi* p-value).

    Note: ``esda.G_Local.p_norm`` is the *one-sided* ``1 - Phi(|z|)``, i.e.
    half of this value.
    """
    z = np.asarray(z, dtype=np.float64)
    return 2.0 * ndtr(-np.abs(z))


def fdr_threshold(p, alpha: float) -> float:
    """Benjamini-Hochberg (1995) step-up critical p-value.

    With sorted p-values ``p_(1) <= ... <= p_(m)`` let ``k`` be the largest rank
    such that ``p_(k) <= k * alpha / m``; returns ``p_(k)`` (the hypotheses with
    ``p <= threshold`` are rejected), or ``0.0`` if no rank qualifies. NaNs
    are ignored (not counted in ``m``).
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    p = np.sort(p[~np.isnan(p)])
    m = p.size
    if m == 0:
        return 0.0
    ok = np.nonzero(p <= alpha * np.arange(1, m + 1) / m)[0]
    return float(p[ok[-1]]) if ok.size else 0.0


_LEVELS = ((1, 0.10), (2, 0.05), (3, 0.01))


def classify_hotspots(z, p=None, fdr: bool = True) -> np.ndarray:
    """Esri Hot Spot Analysis confidence bins (``Gi_Bin``).

    Returns an int8 array in {-3..3}: +3/+2/+1 = hot spot with 99/95/90 %
    confidence, -3/-2/-1 = cold spot likewise, 0 = not significant. The sign
    is the sign of ``z``; ``p`` defaults to :func:`gi_star_pvalues` (two-sided).

    Without FDR a cell gets level k if ``p <= alpha_k`` (0.10, 0.05, 0.01).
    With ``fdr=True`` (Esri's "Apply False Discovery Rate Correction") the
    Benjamini-Hochberg procedure is run separately for each alpha_k over all
    cells, and a cell keeps level k only if ``p <= fdr_threshold(p, alpha_k)``.
    The BH thresholds are nested, so the result is the highest level at which
    the cell survives.
    """
    z = np.asarray(z, dtype=np.float64).ravel()
    p = gi_star_pvalues(z) if p is None else np.asarray(p, dtype=np.float64).ravel()
    level = np.zeros(z.size, dtype=np.int8)
    for k, alpha in _LEVELS:
        thr = fdr_threshold(p, alpha) if fdr else alpha
        level[p <= thr] = k
    return (np.sign(z).astype(np.int8) * level).astype(np.int8)


# --------------------------------------------------------------------------
# Mann-Kendall trend test
# --------------------------------------------------------------------------


class MannKendall(NamedTuple):
    """Mann-Kendall result per series: ``s`` (Kendall's S), ``z``, two-sided ``p``.

    Kendall's tau-a is ``s / (T * (T - 1) / 2)``.
    """

    s: np.ndarray
    z: np.ndarray
    p: np.ndarray


def mann_kendall(series_2d) -> MannKendall:
    """Vectorised Mann-Kendall trend test on each column of a (T, n) array.

    ``S = sum_{i<j} sign(x_j - x_i)``;
    ``Var(S) = [T(T-1)(2T+5) - sum_g t_g(t_g-1)(2t_g+5)] / 18`` (t_g = size of
    tie group g); ``z = (S - sign(S)) / sqrt(Var(S))`` (continuity correction,
    Gilbert 1987 eq. 16.4); ``p = 2 * (1 - Phi(|z|))``. A column with
    ``Var(S) = 0`` (constant series) gets z = 0, p = 1. Cost O(T^2 n), meant for
    small T. Rows are time steps in chronological order; NaNs are not allowed.
    """
    x = np.asarray(series_2d, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if np.isnan(x).any():
        raise ValueError("NaN in series")
    t, n = x.shape
    s = np.zeros(n)
    sum_m = np.zeros(n)  # sum_i m_i   = sum_g t_g^2
    sum_m2 = np.zeros(n)  # sum_i m_i^2 = sum_g t_g^3
    for i in range(t):
        if i < t - 1:
            s += np.sign(x[i + 1 :] - x[i]).sum(axis=0)
        m = (x == x[i]).sum(axis=0).astype(np.float64)
        sum_m += m
        sum_m2 += m * m
    # sum_g t(t-1)(2t+5) = 2 sum t^3 + 3 sum t^2 - 5 sum t, with sum t = T
    ties = 2.0 * sum_m2 + 3.0 * sum_m - 5.0 * t
    var = (t * (t - 1) * (2 * t + 5) - ties) / 18.0
    z = np.zeros(n)
    ok = var > 0
    z[ok] = (s[ok] - np.sign(s[ok])) / np.sqrt(var[ok])
    return MannKendall(s=s, z=z, p=2.0 * ndtr(-np.abs(z)))


# --------------------------------------------------------------------------
# Emerging Hot Spot Analysis
# --------------------------------------------------------------------------

NO_PATTERN = "No Pattern Detected"
EMERGING_CATEGORIES = (
    NO_PATTERN,
    "New Hot Spot",
    "Consecutive Hot Spot",
    "Intensifying Hot Spot",
    "Persistent Hot Spot",
    "Diminishing Hot Spot",
    "Sporadic Hot Spot",
    "Oscillating Hot Spot",
    "Historical Hot Spot",
    "New Cold Spot",
    "Consecutive Cold Spot",
    "Intensifying Cold Spot",
    "Persistent Cold Spot",
    "Diminishing Cold Spot",
    "Sporadic Cold Spot",
    "Oscillating Cold Spot",
    "Historical Cold Spot",
)


def space_time_gi_star(counts_t_by_cell, W, time_lag: int = 1) -> np.ndarray:
    """Space-time Gi* z-scores for every bin of a (T, n) cube.

    The neighbourhood of bin (t, i) is every bin (tau, j) with ``W*[i, j] > 0``
    (W with unit self-weight) and ``t - time_lag <= tau <= t`` (Esri's
    "Neighborhood Time Step"; ``time_lag=0`` is a purely spatial neighbourhood).
    Mean and SD are taken over all ``N = T * n`` bins of the cube and ``n`` in
    the Gi* formula is ``N``, as for a Gi* on the flattened cube. Binary
    weights: ``S1 = S2 = |neighbourhood|``, which is smaller in the first
    ``time_lag`` steps (no bins before the start).
    """
    x = np.asarray(counts_t_by_cell, dtype=np.float64)
    t, n = x.shape
    W = sp.csr_matrix(W, dtype=np.float64)
    W = (W - sp.diags(W.diagonal()) + sp.identity(n, format="csr")).tocsr()
    W.data[:] = 1.0
    card = np.asarray(W.sum(axis=1)).ravel()
    wx = (W @ x.T).T  # (T, n) spatial sums per step
    lag = max(int(time_lag), 0)
    cs = np.cumsum(np.vstack([np.zeros((1, n)), wx]), axis=0)
    lo = np.maximum(np.arange(t) - lag, 0)
    num_sum = cs[np.arange(t) + 1] - cs[lo]
    nsteps = (np.arange(t) - lo + 1).astype(np.float64)
    s1 = nsteps[:, None] * card[None, :]
    big_n = x.size
    xbar = x.mean()
    s = np.sqrt(max(np.mean(x * x) - xbar * xbar, 0.0))
    den = s * np.sqrt(np.maximum(big_n * s1 - s1 * s1, 0.0) / (big_n - 1))
    z = np.zeros((t, n))
    ok = den > 0
    z[ok] = (num_sum - xbar * s1)[ok] / den[ok]
    return z


def classify_emerging(z_t_by_cell, bins_t_by_cell, trend_alpha: float = 0.05) -> np.ndarray:
    """Esri Emerging Hot Spot categories from per-bin Gi* results.

    Parameters
    ----------
    z_t_by_cell : (T, n) Gi* z-scores (the clustering intensity whose trend is
        tested with :func:`mann_kendall`).
    bins_t_by_cell : (T, n) significance bins (e.g. :func:`classify_hotspots`
        output); ``> 0`` = significant hot spot, ``< 0`` = significant cold spot.
    trend_alpha : two-sided significance level of the Mann-Kendall trend.

    Definitions (Esri, "How Emerging Hot Spot Analysis works"; "90 percent"
    is ``hot_steps / T >= 0.9``):

    * New Hot Spot - "a statistically significant hot spot for the final time
      step and has never been a statistically significant hot spot before".
    * Consecutive Hot Spot - "a single uninterrupted run of at least two
      statistically significant hot spot bins in the final time-step
      intervals. The location has never been a statistically significant hot
      spot prior to the final hot spot run and less than 90 percent of all
      bins are statistically significant hot spots".
    * Intensifying Hot Spot - "a statistically significant hot spot for 90
      percent of the time-step intervals, including the final time step. In
      addition, the intensity of clustering of high counts in each time step
      is increasing overall and that increase is statistically significant".
    * Persistent Hot Spot - "a statistically significant hot spot for 90
      percent of the time-step intervals with no discernible trend in the
      intensity of clustering over time".
    * Diminishing Hot Spot - as intensifying, but the intensity "is decreasing
      overall and that decrease is statistically significant".
    * Sporadic Hot Spot - "a statistically significant hot spot for the final
      time-step interval with a history of also being an on-again and off-again
      hot spot. Less than 90 percent of the time-step intervals have been
      statistically significant hot spots and none of the time-step intervals
      have been statistically significant cold spots".
    * Oscillating Hot Spot - "a statistically significant hot spot for the
      final time-step interval that has a history of also being a statistically
      significant cold spot during a prior time step. Less than 90 percent of
      the time-step intervals have been statistically significant hot spots".
    * Historical Hot Spot - "the most recent time period is not hot, but at
      least 90 percent of the time-step intervals have been statistically
      significant hot spots".
    * Cold-spot categories: the same with hot and cold exchanged
      (intensifying cold = significant *downward* trend of z).
    * No Pattern Detected - none of the above.

    Overlaps in the wording are resolved as in R ``sfdep``: a location whose
    final hot run is preceded by a significant cold spot is *Oscillating*
    (not New/Consecutive); Persistent/Intensifying/Diminishing require the
    final step to be hot (otherwise it is Historical); a category defined by
    the final step wins over Historical of the opposite kind.

    Returns an object array of category strings, one per cell.
    """
    z = np.asarray(z_t_by_cell, dtype=np.float64)
    b = np.asarray(bins_t_by_cell)
    if z.ndim == 1:
        z, b = z[:, None], b[:, None]
    t, n = b.shape
    mk = mann_kendall(z)
    up = (mk.p < trend_alpha) & (mk.s > 0)
    down = (mk.p < trend_alpha) & (mk.s < 0)
    out = np.full(n, NO_PATTERN, dtype=object)
    historical = []
    for sign, word, rising, falling in ((1, "Hot", up, down), (-1, "Cold", down, up)):
        this = (b * sign) > 0
        n_this = this.sum(axis=0)
        mostly = n_this / t >= 0.9
        final = this[-1]
        run = np.cumprod(this[::-1], axis=0).sum(axis=0)  # trailing run length
        before_run = n_this - run  # bins of this kind before the final run
        any_other = ((b * sign) < 0).any(axis=0)

        f = final & mostly
        out[f & rising] = f"Intensifying {word} Spot"
        out[f & falling] = f"Diminishing {word} Spot"
        out[f & ~rising & ~falling] = f"Persistent {word} Spot"
        g = final & ~mostly
        out[g & any_other] = f"Oscillating {word} Spot"
        h = g & ~any_other
        out[h & (before_run == 0) & (run == 1)] = f"New {word} Spot"
        out[h & (before_run == 0) & (run >= 2)] = f"Consecutive {word} Spot"
        out[h & (before_run > 0)] = f"Sporadic {word} Spot"
        historical.append((~final & mostly, f"Historical {word} Spot"))
    # Final-step categories take precedence (a location that was hot for 90 %
    # of the steps and is cold now is an Oscillating Cold Spot).
    for mask, label in historical:
        out[mask & (out == NO_PATTERN)] = label
    return out


def emerging_hotspots(
    counts_t_by_cell,
    W,
    time_lag: int = 1,
    alpha: float = 0.10,
    fdr: bool = True,
    trend_alpha: float = 0.05,
) -> np.ndarray:
    """Emerging Hot Spot Analysis (Esri) on a (T, n) count cube.

    1. Space-time Gi* for every bin (:func:`space_time_gi_star`, neighbourhood
       ``W`` x ``time_lag`` previous steps; Esri default time step 1).
    2. Per-bin significance at ``alpha`` (default 90 % confidence, Esri's
       weakest hot-spot bin), Benjamini-Hochberg FDR over all ``T * n`` bins
       when ``fdr`` (as Esri applies FDR to the cube).
    3. Mann-Kendall trend of each cell's Gi* z series, two-sided at
       ``trend_alpha``.
    4. Categories per :func:`classify_emerging`.

    Esri requires at least 10 time steps for trend-based categories; fewer
    steps are accepted but with T < 10 "Historical" is impossible and the
    trend test has little power.
    """
    x = np.asarray(counts_t_by_cell, dtype=np.float64)
    z = space_time_gi_star(x, W, time_lag=time_lag)
    p = gi_star_pvalues(z)
    thr = fdr_threshold(p, alpha) if fdr else alpha
    bins = np.where(p <= thr, np.sign(z), 0).astype(np.int8)
    return classify_emerging(z, bins, trend_alpha=trend_alpha)
