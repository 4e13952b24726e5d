"""Burst detection: prospective space-time permutation scan and a per-class surge rule.

Space-time permutation scan statistic
-------------------------------------
Kulldorff, M., Heffernan, R., Hartman, J., Assuncao, R. & Mostashari, F.
(2005). A space-time permutation scan statistic for disease outbreak
detection. PLoS Medicine 2(3): e59. Implemented as in SaTScan (prospective
analysis, high rates only, no geographical overlap of secondary clusters).

Notation: ``c_zd`` cases in cell z on day d, ``C_z = sum_d c_zd``,
``C_d = sum_z c_zd``, ``C = sum c_zd``.

* Cylinder A = (circle Z_A, window D_A). Circles are centred on each cell
  centre and contain the k nearest cells; windows end on the last day
  (prospective) and last 1..``max_window`` days.
* Expected count under the null of no space-time interaction:
  ``mu_zd = C_z C_d / C``, so ``mu_A = (sum_{z in Z_A} C_z)(sum_{d in D_A} C_d) / C``.
* Poisson generalised likelihood ratio, for ``c_A > mu_A`` (else 0):
  ``LLR_A = c_A ln(c_A / mu_A) + (C - c_A) ln((C - c_A) / (C - mu_A))``.
* Test statistic: ``max_A LLR_A``. Its null distribution is obtained by
  randomly permuting the day labels of the C individual cases, which keeps
  every ``C_z`` and ``C_d`` (hence every ``mu_A``) fixed. Monte Carlo
  p-value ``p = (1 + #{r : max LLR_r >= LLR_obs}) / (R + 1)``; secondary
  clusters are compared with the same distribution of the maximum
  (conservative, as in SaTScan).
* Recurrence interval (Kulldorff 2001, JRSS A 164: 61-72): the expected time
  between false signals this strong when the analysis is repeated every
  ``analysis_interval_days``: ``RI = analysis_interval_days / p`` days, i.e.
  ``1 / (p * analyses per year)`` years; for a daily analysis ``RI = 1/p`` days.
  Because R = 999 limits ``p >= 0.001``, RI is capped at 1000 analyses.

Implementation: only cells with ``C_z > 0`` enter (a cell with no case adds
nothing to ``c_A`` or ``mu_A``). For every centre the sorted neighbour list is
computed once with a k-d tree; ``c_A`` for all (circle, window) pairs is a
cumulative sum along that list of the per-cell trailing-window sums, so a
replicate costs O(n_active * max_cells * max_window) vectorised operations.
Under the permutation null only the last ``max_window`` day columns are
random; they are drawn day by day as multivariate hypergeometric samples
without replacement from the pool of cases (``C_z`` per cell), which is the
exact marginal of a uniform permutation of day labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree
from scipy.special import xlogy

__all__ = ["SpaceTimeCluster", "space_time_permutation_scan", "surge_rule"]

_CHUNK_ELEMS = 1 << 21  # elements of the (centres, k, window) block per step


@dataclass(frozen=True)
class SpaceTimeCluster:
    """One scan cluster; day indices are 0-based columns of the input, inclusive."""

    cells: np.ndarray  # input row indices, nearest to the centre first
    center: int  # input row index of the centre cell
    radius: float  # distance from the centre to the farthest member (m)
    start_day: int
    end_day: int
    observed: int
    expected: float
    llr: float
    p_value: float
    recurrence_days: float

    @property
    def n_days(self) -> int:
        """Window length in days."""
        return self.end_day - self.start_day + 1

    @property
    def obs_over_exp(self) -> float:
        """Observed / expected (SaTScan's measure of the cluster's excess)."""
        return self.observed / self.expected if self.expected > 0 else float("inf")


def _llr(c: np.ndarray, mu: np.ndarray, total: float) -> np.ndarray:
    """Poisson GLR of Kulldorff et al. (2005); caller guarantees c > mu, mu < C."""
    return xlogy(c, c / mu) + xlogy(total - c, (total - c) / (total - mu))


class _Scanner:
    """Precomputed geometry and expectations shared by the observed and simulated data."""

    def __init__(self, cz, cd_w, xy, max_cells, max_radius, max_share, min_cases):
        m = cz.size
        self.total = float(cz.sum())
        k = int(min(max_cells, m))
        kq = min(k + 1, m)
        tree = cKDTree(xy)
        ub = np.inf if max_radius is None else float(max_radius) * (1 + 1e-12) + 1e-9
        dist, nbr = tree.query(xy, k=kq, distance_upper_bound=ub)
        dist = np.asarray(dist, dtype=np.float64).reshape(m, kq)
        nbr = np.asarray(nbr, dtype=np.int64).reshape(m, kq)
        if kq == k:  # all cells fit: pad one column so every circle has a "next" distance
            dist = np.hstack([dist, np.full((m, 1), np.inf)])
            nbr = np.hstack([nbr, np.full((m, 1), m)])
        d_k, d_next = dist[:, :k], dist[:, 1 : k + 1]
        # A circle is a complete set {cells within r}: the next neighbour must
        # be strictly farther (ties at equal distance are added together).
        tol = 1e-9 * np.maximum(np.where(np.isfinite(d_next), d_next, 0.0), 1.0)
        complete = np.isfinite(d_k) & ~(d_next <= d_k + tol)
        self.nbr = nbr[:, :k]
        self.nbr_t = np.ascontiguousarray(self.nbr.T)  # (k, m): k-major for fast cumsum
        self.dist = np.where(np.isfinite(d_k), d_k, np.nan)
        cz_pad = np.append(cz.astype(np.float64), 0.0)
        cum_cz = np.cumsum(cz_pad[self.nbr], axis=1)
        valid = complete & (cum_cz <= max_share * self.total * (1 + 1e-12))
        self.mu = cum_cz[:, :, None] * (np.asarray(cd_w, float)[None, None, :] / self.total)
        # Threshold a cylinder's count must exceed to be scored (counts are
        # integers): c > mu and c >= min_cases; +inf for invalid cylinders.
        thr = np.maximum(self.mu, float(max(min_cases, 0)) - 0.5)
        thr[~valid[:, :, None] | (self.mu >= self.total)] = np.inf
        self.thr_t = np.ascontiguousarray(thr.transpose(1, 0, 2))  # (k, m, w)
        self.mu_t = np.ascontiguousarray(self.mu.transpose(1, 0, 2))
        self.m, self.k, self.w = m, k, len(cd_w)
        self.step = max(1, _CHUNK_ELEMS // max(1, k * self.w))
        # Per chunk of centres: flat (k, centre) indices of the circles that
        # can be scored at all, with their thresholds and expectations.
        # On a regular grid only ~1 in 5 values of k is a complete circle.
        scorable = np.isfinite(self.thr_t).any(axis=2)  # (k, m)
        self.chunks = []
        for lo in range(0, m, self.step):
            hi = min(lo + self.step, m)
            flat = np.flatnonzero(scorable[:, lo:hi])
            kk, cc = np.divmod(flat, hi - lo)
            self.chunks.append((lo, hi, flat, self.thr_t[kk, lo + cc], self.mu_t[kk, lo + cc]))

    def _block_counts(self, cw_pad, lo, hi):
        """Observed counts of all cylinders of centres lo..hi-1, shape (k, hi-lo, w)."""
        c = cw_pad[self.nbr_t[:, lo:hi]]
        for j in range(1, c.shape[0]):  # row-wise adds beat np.cumsum(axis=0) ~5x here
            c[j] += c[j - 1]
        return c

    def max_llr(self, cw_pad) -> float:
        """Maximum LLR over all cylinders (0 if no cylinder has excess cases)."""
        best = 0.0
        for lo, hi, flat, thr, mu in self.chunks:
            if flat.size == 0:
                continue
            c = self._block_counts(cw_pad, lo, hi).reshape(-1, self.w)[flat]
            sel = c > thr
            if sel.any():
                best = max(best, float(_llr(c[sel], mu[sel], self.total).max()))
        return best

    def best_per_centre(self, cw_pad):
        """(llr, k index, window index, observed) of the best cylinder of each centre."""
        out_llr = np.zeros(self.m)
        out_k = np.zeros(self.m, dtype=np.int64)
        out_w = np.zeros(self.m, dtype=np.int64)
        out_c = np.zeros(self.m)
        for lo in range(0, self.m, self.step):
            hi = min(lo + self.step, self.m)
            c = self._block_counts(cw_pad, lo, hi)
            sel = c > self.thr_t[:, lo:hi]
            llr = np.zeros(c.shape)
            llr[sel] = _llr(c[sel], self.mu_t[:, lo:hi][sel], self.total)
            flat = llr.transpose(1, 0, 2).reshape(hi - lo, -1)
            arg = flat.argmax(axis=1)
            rows = np.arange(hi - lo)
            out_llr[lo:hi] = flat[rows, arg]
            out_k[lo:hi], out_w[lo:hi] = np.divmod(arg, self.w)
            out_c[lo:hi] = c.transpose(1, 0, 2).reshape(hi - lo, -1)[rows, arg]
        return out_llr, out_k, out_w, out_c


def space_time_permutation_scan(
    counts,
    cx,
    cy,
    max_window: int = 7,
    max_cells: int = 50,
    max_radius: float | None = 1000.0,
    max_share: float = 0.5,
    min_cases: int = 2,
    n_sim: int = 999,
    seed=None,
    max_clusters: int = 10,
    analysis_interval_days: float = 1.0,
) -> list[SpaceTimeCluster]:
    """Prospective space-time permutation scan (Kulldorff et al. 2005).

    Parameters
    ----------
    counts : (n_cells, n_days) int array or scipy sparse matrix
        Cases per cell and day over the study period (non-negative integers);
        the last column is the analysis day (every window ends there).
    cx, cy : (n_cells,) cell centroids in metres.
    max_window : longest window in days (windows are 1..max_window days
        ending on the last day).
    max_cells : at most this many cells (the k nearest, k = 1..max_cells) per circle.
    max_radius : circles may not extend beyond this distance (m); None = no limit.
    max_share : at most this share of all cases in the study period may lie in
        a circle (SaTScan's "maximum spatial cluster size, % of population at
        risk", default 50 %).
    min_cases : cylinders with fewer observed cases are ignored (SaTScan
        default 2 for prospective analyses).
    n_sim : number of Monte Carlo permutation replicates R (999 gives p >= 0.001).
    seed : seed / Generator for ``numpy.random.default_rng``; same seed,
        same result.
    max_clusters : report at most this many clusters.
    analysis_interval_days : days between repeated analyses (1 = daily),
        for the recurrence interval.

    Returns
    -------
    Clusters sorted by decreasing LLR: the most likely cluster first, then
    secondary clusters that share no cell with any cluster listed before them
    (SaTScan "no geographical overlap"; each centre contributes its best
    cylinder). Only cylinders with ``observed > expected`` are reported.
    Circles contain every cell within their radius: cells at equal distance
    from the centre enter together, so on a regular grid the circles around a
    cell hold 1, 5, 9, 13, ... cells.
    """
    if sp.issparse(counts):
        mat = sp.csr_matrix(counts)
        n_cells, n_days = mat.shape
        cz_all = np.asarray(mat.sum(axis=1)).ravel()
        cd = np.asarray(mat.sum(axis=0)).ravel()
    else:
        arr = np.asarray(counts)
        if arr.ndim != 2:
            raise ValueError("counts must be 2-D (cells x days)")
        n_cells, n_days = arr.shape
        cz_all = arr.sum(axis=1)
        cd = arr.sum(axis=0)
    data = mat.data if sp.issparse(counts) else arr
    if np.any(data < 0) or not np.array_equal(data, np.rint(data)):
        raise ValueError("counts must be non-negative integers")
    cz_all = np.rint(cz_all).astype(np.int64)
    cd = np.rint(cd).astype(np.int64)
    cx = np.asarray(cx, dtype=np.float64).ravel()
    cy = np.asarray(cy, dtype=np.float64).ravel()
    if cx.size != n_cells or cy.size != n_cells:
        raise ValueError("cx, cy must have one entry per cell (row of counts)")
    total = int(cz_all.sum())
    if total == 0 or n_days == 0:
        return []

    active = np.nonzero(cz_all > 0)[0]
    cz = cz_all[active]
    w = int(min(max(1, max_window), n_days))
    win_days = np.arange(n_days - w, n_days)
    if sp.issparse(counts):
        last = np.asarray(mat[active][:, win_days].todense())
    else:
        last = np.asarray(arr[np.ix_(active, win_days)])
    last = np.rint(last).astype(np.int64)
    cd_rev = cd[win_days][::-1]  # last day first
    cd_w = np.cumsum(cd_rev)  # total cases in windows of length 1..w

    scan = _Scanner(
        cz, cd_w, np.column_stack([cx[active], cy[active]]), max_cells, max_radius, max_share, min_cases
    )
    m = active.size

    def window_sums(cols_last_first: np.ndarray) -> np.ndarray:
        cw = np.cumsum(cols_last_first, axis=1).astype(np.float64)
        return np.vstack([cw, np.zeros((1, w))])

    obs_cw = window_sums(last[:, ::-1])
    llr_c, k_c, w_c, c_c = scan.best_per_centre(obs_cw)

    rng = np.random.default_rng(seed)
    sim_max = np.empty(int(n_sim))
    sim_cols = np.empty((m, w), dtype=np.int64)
    for r in range(int(n_sim)):
        remaining = cz.copy()
        for j in range(w):  # j = 0 is the last day
            if cd_rev[j]:
                draw = rng.multivariate_hypergeometric(remaining, int(cd_rev[j]), method="marginals")
                remaining -= draw
                sim_cols[:, j] = draw
            else:
                sim_cols[:, j] = 0
        sim_max[r] = scan.max_llr(window_sums(sim_cols))
    sim_sorted = np.sort(sim_max)

    clusters: list[SpaceTimeCluster] = []
    used = np.zeros(m + 1, dtype=bool)
    for centre in np.argsort(-llr_c, kind="stable"):
        if len(clusters) >= max_clusters or llr_c[centre] <= 0:
            break
        kk, ww = int(k_c[centre]), int(w_c[centre])
        members = scan.nbr[centre, : kk + 1]
        if used[members].any():
            continue
        used[members] = True
        llr = float(llr_c[centre])
        n_ge = sim_sorted.size - np.searchsorted(sim_sorted, llr * (1 - 1e-12), side="left")
        p = (1.0 + n_ge) / (sim_sorted.size + 1.0)
        clusters.append(
            SpaceTimeCluster(
                cells=active[members],
                center=int(active[centre]),
                radius=float(scan.dist[centre, kk]),
                start_day=int(n_days - 1 - ww),
                end_day=int(n_days - 1),
                observed=int(round(c_c[centre])),
                expected=float(scan.mu[centre, kk, ww]),
                llr=llr,
                p_value=float(p),
                recurrence_days=float(analysis_interval_days / p),
            )
        )
    return clusters


def surge_rule(
    today_counts_by_class,
    baseline_same_weekday,
    min_count: int = 5,
    factor: float = 2.0,
    n_sd: float = 3.0,
    poisson_floor: bool = True,
) -> np.ndarray:
    """Per-class surge flag: today against the same weekday of previous weeks.

    For class k with baseline counts ``b_1..b_W`` (same weekday, W previous
    weeks), mean ``m`` and sample SD ``s`` (ddof=1; 0 when W = 1), class k is
    flagged iff all of

    * ``today >= min_count``            (ignore small numbers),
    * ``today >  m + n_sd * s'``         (outside the usual variation),
    * ``today >= factor * m``            (a material relative jump),

    where ``s' = max(s, sqrt(m))`` if ``poisson_floor`` (a Poisson count of
    mean m cannot be expected to vary less than sqrt(m); protects against a
    near-constant short baseline) else ``s``. A class never seen in the
    baseline (m = 0) is flagged once it reaches ``min_count``.

    Parameters: ``today_counts_by_class`` (K,), ``baseline_same_weekday``
    (W weeks x K classes). Returns a bool array (K,).
    """
    today = np.asarray(today_counts_by_class, dtype=np.float64).ravel()
    base = np.asarray(baseline_same_weekday, dtype=np.float64)
    if base.ndim == 1:
        base = base[:, None] if today.size == 1 else base[None, :]
    if base.shape[1] != today.size:
        raise ValueError("baseline must be (weeks, classes) with one column per class")
    if base.shape[0] == 0:
        return today >= min_count
    mean = base.mean(axis=0)
    sd = base.std(axis=0, ddof=1) if base.shape[0] > 1 else np.zeros(today.size)
    if poisson_floor:
        sd = np.maximum(sd, np.sqrt(mean))
    return (today >= min_count) & (today > mean + n_sd * sd) & (today >= factor * mean)
