"""Hot spots of sparse case counts with valid inference: an exact conditional test per
neighbourhood, at a scale chosen from the data, with Benjamini-Hochberg FDR.

Why not Gi* read against the normal distribution
------------------------------------------------
Getis-Ord Gi* with binary weights is a standardised *neighbourhood sum*. Its z is read against
N(0, 1), which is a large-sample approximation: it needs many cases in every neighbourhood. On
100 m cells holding ~0.03 cases each per month a 9-cell neighbourhood expects ~0.3 cases; a
neighbourhood with 2 cases then gets z = 3.29 (normal p = 4.9e-4) where its exact probability is
0.031, and BH over 10^5 such p-values marks thousands of random cells "significant". Permutation
p-values (esda ``p_sim``) are valid but cannot go below ``1 / (R + 1)``, so BH over tens of
thousands of cells rejects nothing, real clusters included.

The test used here
------------------
Null hypothesis (the same as Gi*'s "no clustering"): the window's cases are spread over the city
with a constant intensity per unit of *base* (by default area; a population or any other
at-risk measure per cell can be passed instead). Under that null, whatever the Poisson intensity,
the counts of the cells **conditional on the window's total N** are multinomial with
probabilities ``base_i / sum(base)``, so the count ``X`` of any region R is exactly

    X ~ Binomial(N, pi_R),   pi_R = base(R) / base(city)

(a Poisson process conditioned on its total is N independent uniform points: this removes the
unknown intensity, a nuisance parameter, exactly; no large-sample argument is used anywhere).
For each analysis unit the region is its *neighbourhood*: the unit and its 8 nearest units (the
queen ring in the interior, the nearest units at the city's edge, ties at the 8th distance all
included, so every unit has at least 8 neighbours). The one-sided p-values are ``P(X >= x)`` (hot) and ``P(X <= x)`` (cold), computed
exactly by ``scipy.stats.binom``; the two-sided p is ``min(1, 2 min(p_hot, p_cold))`` and its
sign is the side. They are valid (P(p <= a) <= a under the null) at any expected count, and
conservative because counts are discrete. Benjamini-Hochberg (1995) at 0.10/0.05/0.01 then gives
the 90/95/99 % bins, as Esri's hot-spot tool does. Neighbourhoods overlap, so the p-values are
dependent; the overlap induces positive dependence, for which BH keeps its level (Benjamini &
Yekutieli 2001, PRDS); under complete randomness the FDR equals the probability of any rejection,
so a random city shows a significant cell in at most ~10 % of windows at the 90 % level, and
usually none. ``z`` reported beside p is the normal score of the exact one-sided p
(``Phi^-1(1 - p)``, signed), a strength measure on the familiar scale, never the test itself.

Scale
-----
Exactness makes any scale *valid*, but not useful: at an expected 0.3 cases per neighbourhood
the best possible p-value of one neighbourhood is far above what BH needs over 10^5 cells, and a
"hot spot" of 3 cases is not a place a supervisor can act on. Cases are therefore aggregated to
square analysis units of ``k x k`` base cells (as ArcGIS's Optimized Hot Spot Analysis aggregates
incidents), with ``k`` chosen as follows:

1. feasible scales: ``k`` such that a whole neighbourhood (9 units) expects at least
   ``min_expected`` cases (default 10: then the binomial is close to normal too, so the
   neighbourhood is a place with a meaningful count, and a doubling of the rate is detectable);
2. incremental spatial autocorrelation (Esri): global Moran's I of the unit densities with
   queen weights at each feasible scale (the finest few); the scale is the first peak of its
   z-score among those that are significant (z > 1.96), i.e. the scale at which clustering is
   most pronounced first; with no significant autocorrelation (a random city) the finest
   feasible scale.

The scale is chosen from the same data that are then tested (as ArcGIS does). Step 1 uses only the
total N, on which the test conditions anyway; step 2 uses a global statistic that, under complete
randomness, is rarely significant, so the finest feasible scale is used and the level of the local
test is unaffected (tests/gis/test_exact_hotspots.py checks the false-positive rate empirically).

The result states the scale (unit edge in metres, ``k``), the number of cases, the number of
units, and the expected count per neighbourhood. Fewer than ``MIN_CASES`` (30) cases in the
window is answered "too few cases", not a map.

References: Ord & Getis (1995); Benjamini & Hochberg (1995); Benjamini & Yekutieli (2001) Ann.
Stat. 29: 1165-1188; Esri, "How Optimized Hot Spot Analysis works", "Incremental Spatial
Autocorrelation"; Kulldorff (1997) Commun. Stat. 26: 1481 (conditioning on the total).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree
from scipy.stats import binom, norm

from gis import hotspots as ghot

__all__ = [
    "MIN_CASES",
    "SCALES",
    "Scale",
    "TooFewCases",
    "aggregate",
    "moran_z",
    "choose_scale",
    "exact_pvalues",
    "HotSpots",
    "exact_hotspots",
    "exact_emerging",
]

MIN_CASES = 30
SCALES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 25, 30, 40, 50, 60, 80)
NEIGHBOURS = 8
Z_CLIP = 37.5  # |Phi^-1(p)| for p down to ~1e-308


class TooFewCases(ValueError):
    """The window holds fewer cases than the analysis needs."""

    def __init__(self, n: int, need: int = MIN_CASES):
        self.n, self.need = int(n), int(need)
        super().__init__(f"too few cases: {self.n} in the window, at least {self.need} are needed")


@dataclass
class Scale:
    """Analysis units at one scale: ``unit[i]`` is the unit of base cell i."""

    k: int
    edge_m: float
    unit: np.ndarray  # (n_cells,) unit index of each base cell
    ux: np.ndarray  # (m,) base-weighted centroid of each unit
    uy: np.ndarray
    ubase: np.ndarray  # (m,) base (area) of each unit
    ukey: np.ndarray  # (m, 2) block (col, row) of each unit
    nbrs: sp.csr_matrix | None = field(default=None)  # (m, m) binary: unit -> its neighbourhood (itself included)

    @property
    def m(self) -> int:
        return self.ux.size

    def neighbourhoods(self) -> sp.csr_matrix:
        """Binary (m, m) matrix: row j holds unit j and every unit at most as far from it as its 8th
        nearest unit (ties at that distance are all included, so the neighbourhood does not depend on
        the order of the units: 8 neighbours in the interior - the queen ring - and at least 8 at the
        edge). Distances between base-weighted unit centroids."""
        if self.nbrs is None:
            m = self.m
            xy = np.column_stack([self.ux, self.uy])
            tree = cKDTree(xy)
            rows_l, cols_l = [], []
            todo, kq = np.arange(m), NEIGHBOURS + 5
            while todo.size:
                kq = min(kq, m)
                d, idx = tree.query(xy[todo], k=kq)
                d, idx = np.asarray(d).reshape(todo.size, kq), np.asarray(idx).reshape(todo.size, kq)
                kth = d[:, min(NEIGHBOURS, kq - 1)]
                keep = d <= kth[:, None] * (1 + 1e-9) + 1e-9
                # a tie that reaches the last neighbour asked for may go on: ask again with more
                more = keep[:, -1] & (kq < m)
                done = ~more
                rows_l.append(np.repeat(todo[done], keep[done].sum(axis=1)))
                cols_l.append(idx[done][keep[done]])
                todo, kq = todo[more], 4 * kq
            rows, cols = np.concatenate(rows_l), np.concatenate(cols_l)
            self.nbrs = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(m, m))
        return self.nbrs


def unit_geometries(scale: Scale, cell_geoms, units, cache: dict | None = None):
    """Polygons of the given analysis units: the k x k square for a unit whose cells are all whole
    (its base equals k^2 cells' area), else the union of its cells as drawn (clipped by the city).
    ``cache`` (a dict kept per grid and k) keeps them from one call to the next."""
    import shapely

    units = np.asarray(units, dtype=np.int64)
    cache = {} if cache is None else cache
    out = np.empty(units.size, dtype=object)
    todo = []
    for j, u in enumerate(units.tolist()):
        key = (int(scale.ukey[u, 0]), int(scale.ukey[u, 1]))
        g = cache.get(key)
        if g is None:
            todo.append(j)
        else:
            out[j] = g
    if todo:
        order = np.argsort(scale.unit, kind="stable")
        starts = np.searchsorted(scale.unit[order], np.arange(scale.m + 1))
        edge = scale.edge_m
        for j in todo:
            u = int(units[j])
            members = order[starts[u]:starts[u + 1]]
            c, r = scale.ukey[u]
            cell = edge / scale.k
            whole = members.size == scale.k ** 2 and abs(scale.ubase[u] - edge * edge) <= 1e-6 * edge * edge
            if whole and np.all(np.isclose(shapely.area(cell_geoms[members]), cell * cell, rtol=1e-9)):
                g = shapely.box(c * edge, r * edge, (c + 1) * edge, (r + 1) * edge)
            else:
                g = shapely.coverage_union_all(cell_geoms[members])
            cache[(int(c), int(r))] = out[j] = g
    return out


def dissolve_units(geoms):
    """One (multi)polygon from analysis units' polygons (a map's light layer). A general union, not a
    coverage union: a whole unit (its k x k square) beside a unit clipped by the city's edge has no
    vertices at the cell corners along their common edge, which ``coverage_union_all`` refuses."""
    import shapely

    return shapely.union_all(np.asarray(geoms, dtype=object))


def aggregate(cols, rows, cx, cy, base, k: int, cell_size: float) -> Scale:
    """Group base cells (grid keys ``cols``, ``rows``) into ``k x k`` blocks: the analysis units."""
    c = np.asarray(cols, dtype=np.int64) // int(k)
    r = np.asarray(rows, dtype=np.int64) // int(k)
    c0, r0 = c.min(initial=0), r.min(initial=0)
    height = int(r.max(initial=0) - r0) + 1
    packed, unit = np.unique((c - c0) * height + (r - r0), return_inverse=True)
    unit = unit.ravel()
    keys = np.column_stack([packed // height + c0, packed % height + r0])
    m = keys.shape[0]
    b = np.asarray(base, dtype=np.float64)
    ub = np.bincount(unit, weights=b, minlength=m)
    safe = np.where(ub > 0, ub, 1.0)
    ux = np.bincount(unit, weights=b * cx, minlength=m) / safe
    uy = np.bincount(unit, weights=b * cy, minlength=m) / safe
    # units with zero base (none on a real grid) fall back to the plain mean of their centroids
    if np.any(ub <= 0):
        cnt = np.bincount(unit, minlength=m)
        zero = ub <= 0
        ux[zero] = (np.bincount(unit, weights=cx, minlength=m) / cnt)[zero]
        uy[zero] = (np.bincount(unit, weights=cy, minlength=m) / cnt)[zero]
    return Scale(int(k), float(k * cell_size), unit, ux, uy, ub, keys)


def moran_z(values, W) -> float:
    """Global Moran's I z-score under the normality assumption (``esda.Moran(..., transform='B')``
    ``z_norm``) for a symmetric binary weights matrix ``W`` (zero diagonal)."""
    y = np.asarray(values, dtype=np.float64)
    n = y.size
    W = sp.csr_matrix(W, dtype=np.float64)
    z = y - y.mean()
    s0 = W.sum()
    zz = float(z @ z)
    if n < 3 or s0 == 0 or zz == 0:
        return 0.0
    i_stat = n / s0 * float(z @ (W @ z)) / zz
    ws = W + W.T
    s1 = 0.5 * float(ws.multiply(ws).sum())
    s2 = float(((np.asarray(W.sum(axis=1)).ravel() + np.asarray(W.sum(axis=0)).ravel()) ** 2).sum())
    ei = -1.0 / (n - 1)
    var = (n * n * s1 - n * s2 + 3 * s0 * s0) / ((n * n - 1) * s0 * s0) - ei * ei
    return float((i_stat - ei) / np.sqrt(var)) if var > 0 else 0.0


def _feasible_k(total: float, base_total: float, cell_base: float, min_expected: float) -> int:
    """Smallest candidate k whose full neighbourhood (9 units of k*k cells) expects min_expected."""
    for k in SCALES:
        if total * 9 * k * k * cell_base / base_total >= min_expected:
            return k
    return SCALES[-1]


def choose_scale(cols, rows, cx, cy, base, counts, cell_size: float, *, min_expected: float = 10.0,
                 expected_total: float | None = None, max_tried: int = 6, min_units: int = 30):
    """(Scale, report): the analysis scale by the rule of the module docstring.

    ``expected_total`` is the number of cases one neighbourhood's expectation is computed from
    (default: the window's total; the emerging analysis passes the cases of one time step).
    ``report`` lists the scales tried with their Moran's I z and says why the scale was chosen.
    """
    x = np.asarray(counts, dtype=np.float64)
    b = np.asarray(base, dtype=np.float64)
    total = float(x.sum()) if expected_total is None else float(expected_total)
    cell_base = float(np.median(b[b > 0])) if np.any(b > 0) else 1.0
    k0 = _feasible_k(total, float(b.sum()), cell_base, min_expected)
    tried = []
    scales = {}
    for k in [k for k in SCALES if k >= k0][:max_tried]:
        s = aggregate(cols, rows, cx, cy, b, k, cell_size)
        if tried and s.m < min_units:
            break
        ux = np.bincount(s.unit, weights=x, minlength=s.m)
        dens = ux / np.where(s.ubase > 0, s.ubase, 1.0)
        W = ghot.queen_weights_regular(s.ukey[:, 0], s.ukey[:, 1])
        tried.append((k, moran_z(dens, W)))
        scales[k] = s
    zs = [z for _, z in tried]
    chosen, why = tried[0][0], "no significant spatial autocorrelation: the finest feasible scale"
    sig = [i for i, z in enumerate(zs) if z > 1.96]
    if sig:
        for i in sig:
            if i == len(zs) - 1 or zs[i] > zs[i + 1]:
                chosen, why = tried[i][0], "first peak of Moran's I z (incremental spatial autocorrelation)"
                break
    return scales[chosen], {"tried": [{"k": k, "edge_m": k * cell_size, "moran_z": round(z, 3)} for k, z in tried],
                            "min_feasible_k": k0, "reason": why}


def exact_pvalues(x, n_total, share):
    """Exact one-sided binomial p-values of neighbourhood counts ``x`` with ``share`` of the base,
    given ``n_total`` cases: (p_hot = P(X >= x), p_cold = P(X <= x))."""
    x = np.asarray(x, dtype=np.float64)
    share = np.clip(np.asarray(share, dtype=np.float64), 0.0, 1.0)
    p_hot = np.where(x > 0, binom.sf(x - 1, n_total, share), 1.0)
    p_cold = binom.cdf(x, n_total, share)
    return p_hot, p_cold


def _signed(p_hot, p_cold):
    hot = p_hot < p_cold
    p2 = np.minimum(1.0, 2.0 * np.minimum(p_hot, p_cold))
    z = np.where(hot, norm.isf(p_hot), -norm.isf(p_cold))
    z = np.where(np.minimum(p_hot, p_cold) >= 0.5, 0.0, z)
    return np.clip(z, -Z_CLIP, Z_CLIP), p2


@dataclass
class HotSpots:
    """Result per analysis unit (``scale.unit`` maps base cells to units)."""

    scale: Scale
    n_cases: int
    observed: np.ndarray  # (m,) neighbourhood counts
    expected: np.ndarray  # (m,) neighbourhood expectations N * share
    p_hot: np.ndarray
    p_cold: np.ndarray
    p: np.ndarray  # two-sided
    z: np.ndarray  # signed normal score of the one-sided exact p
    bins: np.ndarray  # -3..3 after BH-FDR (or raw alpha without fdr)
    report: dict

    def per_cell(self, a: np.ndarray) -> np.ndarray:
        return a[self.scale.unit]


def exact_hotspots(counts, cols, rows, cx, cy, cell_size: float, *, base=None, fdr: bool = True,
                   min_expected: float = 10.0, k: int | None = None, min_cases: int = MIN_CASES) -> HotSpots:
    """Hot/cold spots of per-cell counts by the exact conditional test (module docstring).

    ``counts``, ``cols``, ``rows``, ``cx``, ``cy``, ``base`` are per base cell (``base``: area, or
    any at-risk measure; default 1 per cell). ``k`` forces the unit size (else chosen). Raises
    :class:`TooFewCases` below ``min_cases``.
    """
    x = np.asarray(counts, dtype=np.float64)
    b = np.ones_like(x) if base is None else np.asarray(base, dtype=np.float64)
    n = int(round(x.sum()))
    if n < min_cases:
        raise TooFewCases(n, min_cases)
    if k is None:
        scale, report = choose_scale(cols, rows, cx, cy, b, x, cell_size, min_expected=min_expected)
    else:
        scale, report = aggregate(cols, rows, cx, cy, b, int(k), cell_size), {"tried": [], "reason": "given"}
    ucount = np.bincount(scale.unit, weights=x, minlength=scale.m)
    nb = scale.neighbourhoods()
    obs = np.rint(nb @ ucount)
    share = (nb @ scale.ubase) / b.sum()
    p_hot, p_cold = exact_pvalues(obs, n, share)
    z, p2 = _signed(p_hot, p_cold)
    bins = ghot.classify_hotspots(z, p2, fdr=fdr)
    exp = n * share
    report = {**report, "k": scale.k, "unit_m": scale.edge_m, "units": int(scale.m), "cases": n,
              "neighbours": int(np.diff(nb.indptr).min() - 1),
              "expected_per_neighbourhood": round(float(np.median(exp)), 2)}
    return HotSpots(scale, n, obs, exp, p_hot, p_cold, p2, z, bins, report)


def exact_emerging(cube, cols, rows, cx, cy, cell_size: float, *, base=None, time_lag: int = 1,
                   alpha: float = 0.10, fdr: bool = True, trend_alpha: float = 0.05,
                   min_expected: float = 10.0, min_cases: int = MIN_CASES):
    """Emerging hot spots (Esri's categories) on the exact test.

    ``cube`` is (T, n_cells). Bin (t, unit) is tested on the cases of steps ``t - time_lag .. t`` in
    the unit's neighbourhood against Binomial(cases of those steps in the city, share): each step
    is conditioned on its own total, so a busy week does not make the whole city "hot". BH over all
    T x m bins at ``alpha``; the trend is Mann-Kendall on the signed normal scores. The scale is
    chosen so that one space-time neighbourhood expects ``min_expected`` cases (cases of
    ``time_lag + 1`` average steps). Returns (categories per unit, scale, report).
    """
    c = np.asarray(cube, dtype=np.float64)
    t, n = c.shape
    b = np.ones(n) if base is None else np.asarray(base, dtype=np.float64)
    total = int(round(c.sum()))
    if total < min_cases:
        raise TooFewCases(total, min_cases)
    lag = max(int(time_lag), 0)
    per = total / t * min(lag + 1, t)
    scale, report = choose_scale(cols, rows, cx, cy, b, c.sum(axis=0), cell_size, min_expected=min_expected,
                                 expected_total=per)
    nb = scale.neighbourhoods()
    share = (nb @ scale.ubase) / b.sum()
    u = np.stack([np.bincount(scale.unit, weights=c[s], minlength=scale.m) for s in range(t)])  # (T, m)
    cs = np.vstack([np.zeros((1, scale.m)), np.cumsum(u, axis=0)])
    tot = np.concatenate([[0.0], np.cumsum(c.sum(axis=1))])
    lo = np.maximum(np.arange(t) - lag, 0)
    win = cs[np.arange(t) + 1] - cs[lo]  # (T, m) unit counts of the window of each step
    ntot = tot[np.arange(t) + 1] - tot[lo]  # (T,)
    obs = np.rint((nb @ win.T).T)  # (T, m)
    p_hot, p_cold = exact_pvalues(obs, ntot[:, None].astype(np.int64), share[None, :])
    z, p2 = _signed(p_hot, p_cold)
    empty = ntot == 0
    z[empty], p2[empty] = 0.0, 1.0
    thr = ghot.fdr_threshold(p2, alpha) if fdr else alpha
    bins = np.where(p2 <= thr, np.sign(z), 0).astype(np.int8)
    cats = ghot.classify_emerging(z, bins, trend_alpha=trend_alpha)
    report = {**report, "k": scale.k, "unit_m": scale.edge_m, "units": int(scale.m), "cases": total,
              "steps": t, "significant_bins": int((bins != 0).sum())}
    return cats, scale, report
