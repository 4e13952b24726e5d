"""Quartic (biweight) kernel density for case heat maps.

Kernel (Silverman 1986, eq. 4.5; the kernel of ArcGIS "Kernel Density" and
QGIS "Heatmap" with the quartic shape):

    K_h(d) = 3 / (pi * h**2) * (1 - d**2 / h**2)**2   for d < h, else 0,

which integrates to 1 over the plane, so ``density(s) = sum_i w_i K_h(|s - p_i|)``
integrates to the total weight ``sum_i w_i``. Coordinates and ``h`` are in
metres (projected CRS); densities are returned in **count per km^2**
(``1e6 *`` the per-m^2 value). Multiply by the cell area in km^2 to get the
expected count in a cell.

Inputs are usually per-cell counts placed at cell centres (cases aggregated to
the ~100 m grid), so the estimate is a cell-to-cell convolution; on a regular
grid :func:`quartic_kde_regular` does it as one 2-D convolution with a
precomputed stencil. Aggregating points to cell centres displaces each case
by at most half a cell diagonal; with ``h`` several cells wide the effect on
the surface is negligible.

**Mass at small bandwidths.** The kernel sampled at cell offsets does not sum
to 1 / cell area when ``h`` is close to the cell size (at h = cell size the
stencil is the single centre value 3/(pi h^2): 0.95 of the mass; at h = half a
cell, 3.8 times the mass). The regular-grid stencil is therefore normalised
(``normalise=True``, the default) so that each case puts exactly its weight on
the lattice: ``sum(density) * cell area = sum(weights)`` at every bandwidth
(for h of 3 cells or more the correction is below 0.3 %). The direct sum
:func:`quartic_kde_grid` evaluates the continuous kernel (no normalisation).

**Edge.** No edge correction: the part of a kernel that falls outside the city
(or on cells that do not exist) is lost, so densities within ``h`` of the
boundary are biased low (by up to about half on a straight edge). The heat
answer says so (``edge_corrected: false``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree

__all__ = [
    "M2_PER_KM2",
    "quartic_kernel",
    "default_bandwidth",
    "quartic_kde_grid",
    "quartic_stencil",
    "quartic_kde_raster",
    "quartic_kde_regular",
]

M2_PER_KM2 = 1.0e6


def quartic_kernel(d, bandwidth: float) -> np.ndarray:
    """``K_h(d) = 3/(pi h^2) (1 - d^2/h^2)^2`` for ``d < h`` (per unit area of ``d``^2)."""
    h = float(bandwidth)
    if not h > 0:
        raise ValueError("bandwidth must be > 0")
    u2 = (np.asarray(d, dtype=np.float64) / h) ** 2
    return np.where(u2 < 1.0, 3.0 / (np.pi * h * h) * (1.0 - u2) ** 2, 0.0)


def default_bandwidth(x, y, weights=None) -> float:
    """ArcGIS Kernel Density default search radius (spatial Silverman rule).

    ``h = 0.9 * min(SD, sqrt(1 / ln 2) * Dm) * n**-0.2`` where

    * mean centre ``(X, Y)`` = weighted mean of the points,
    * ``SD = sqrt(sum w_i ((x_i - X)^2 + (y_i - Y)^2) / sum w_i)`` = weighted
      standard distance,
    * ``Dm`` = weighted median of the distances ``|p_i - (X, Y)|`` (the
      smallest distance at which the cumulative weight reaches half the total),
    * ``n`` = number of points, or ``sum w_i`` when weights (ArcGIS
      "population field", here per-cell counts) are given.

    Reference: Esri, "How Kernel Density works"; Silverman (1986) eq. 3.31.
    Returns a length in the unit of ``x, y``; 0.0 if all points coincide.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    keep = w > 0
    x, y, w = x[keep], y[keep], w[keep]
    if x.size == 0:
        raise ValueError("no points with positive weight")
    n = float(x.size) if weights is None else float(w.sum())
    wsum = w.sum()
    mx, my = (w * x).sum() / wsum, (w * y).sum() / wsum
    d2 = (x - mx) ** 2 + (y - my) ** 2
    sd = np.sqrt((w * d2).sum() / wsum)
    d = np.sqrt(d2)
    order = np.argsort(d, kind="stable")
    cw = np.cumsum(w[order])
    dm = d[order][np.searchsorted(cw, 0.5 * wsum)]
    return float(0.9 * min(sd, np.sqrt(1.0 / np.log(2.0)) * dm) * n**-0.2)


def quartic_kde_grid(px, py, weights, cell_x, cell_y, bandwidth: float, chunk: int = 65536) -> np.ndarray:
    """Direct-sum quartic KDE at arbitrary target locations.

    ``density_k = 1e6 * sum_i w_i K_h(|c_k - p_i|)`` in count per km^2, for
    points ``(px, py)`` with weights ``weights`` (None = 1 each) evaluated at
    ``(cell_x, cell_y)``. Pairs within ``h`` are found with a k-d tree
    (``sparse_distance_matrix``), in chunks of ``chunk`` targets; cost is
    proportional to the number of point-target pairs closer than ``h``.
    """
    h = float(bandwidth)
    pts = np.column_stack([np.asarray(px, float).ravel(), np.asarray(py, float).ravel()])
    w = np.ones(len(pts)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    tgt = np.column_stack([np.asarray(cell_x, float).ravel(), np.asarray(cell_y, float).ravel()])
    out = np.zeros(len(tgt))
    keep = w != 0
    if not keep.any() or len(tgt) == 0:
        return out
    pts, w = pts[keep], w[keep]
    ptree = cKDTree(pts)
    for s in range(0, len(tgt), chunk):
        block = tgt[s : s + chunk]
        pairs = cKDTree(block).sparse_distance_matrix(ptree, h, output_type="ndarray")
        if pairs.size:
            contrib = w[pairs["j"]] * quartic_kernel(pairs["v"], h)
            out[s : s + len(block)] = np.bincount(pairs["i"], weights=contrib, minlength=len(block))
    return out * M2_PER_KM2


def quartic_stencil(size: float, bandwidth: float, normalise: bool = True) -> np.ndarray:
    """Quartic kernel sampled at integer cell offsets, in count per km^2 per unit weight.

    Shape ``(2R+1, 2R+1)`` with ``R = ceil(h / size) - 1`` (largest offset that
    can be strictly inside ``h``); entry ``[R+dr, R+dc]`` is
    ``1e6 * K_h(size * hypot(dc, dr))``, times ``1 / (sum * size^2)`` when
    ``normalise`` (so the stencil times the cell area sums to exactly 1: no mass
    is lost or created at small bandwidths). Symmetric under flips and transposition.
    """
    size, h = float(size), float(bandwidth)
    if not size > 0:
        raise ValueError("size must be > 0")
    rad = max(int(np.ceil(h / size)) - 1, 0)
    off = np.arange(-rad, rad + 1, dtype=np.float64) * size
    d = np.hypot(off[:, None], off[None, :])
    k = quartic_kernel(d, h)
    if normalise:
        k = k / (k.sum() * size * size)
    return k * M2_PER_KM2


def _convolve(raster: np.ndarray, stencil: np.ndarray) -> np.ndarray:
    """Same-size 2-D convolution; exact direct sum for small stencils, FFT otherwise."""
    if stencil.size <= 81 or raster.size <= 4096:
        return ndimage.correlate(raster, stencil, mode="constant", cval=0.0)
    out = fftconvolve(raster, stencil, mode="same")
    # Remove FFT round-off (|err| ~ 1e-16 * total mass * max(stencil)) where
    # the exact result is 0 or below the smallest representable contribution.
    pos = stencil[stencil > 0]
    wmin = np.abs(raster[raster != 0]).min() if np.any(raster) else 0.0
    eps = 1e-6 * wmin * (pos.min() if pos.size else 0.0)
    out[np.abs(out) < eps] = 0.0
    return out


def quartic_kde_raster(cols, rows, counts, size: float, bandwidth: float | None = None, normalise: bool = True):
    """Quartic KDE of per-cell counts on a regular grid, as a full raster.

    Returns ``(density, col0, row0, h)``: ``density[r - row0, c - col0]`` is the
    density (count per km^2) at the centre of cell ``(c, r)``; the raster
    covers the cells' bounding box padded by the kernel radius, so every cell
    with non-zero density is included. ``h`` is the bandwidth used
    (``default_bandwidth`` of the weighted cell centres when None).
    Duplicate keys are summed.
    """
    c = np.asarray(cols, dtype=np.int64).ravel()
    r = np.asarray(rows, dtype=np.int64).ravel()
    w = np.asarray(counts, dtype=np.float64).ravel()
    if not (c.size == r.size == w.size):
        raise ValueError("cols, rows and counts must have the same length")
    size = float(size)
    if bandwidth is None:
        bandwidth = default_bandwidth(c * size, r * size, w)
        if not bandwidth > 0:
            bandwidth = size
    h = float(bandwidth)
    stencil = quartic_stencil(size, h, normalise)
    rad = stencil.shape[0] // 2
    if c.size == 0:
        return np.zeros((0, 0)), 0, 0, h
    col0, row0 = int(c.min()) - rad, int(r.min()) - rad
    ncol = int(c.max()) - col0 + 1 + rad
    nrow = int(r.max()) - row0 + 1 + rad
    raster = np.bincount((r - row0) * ncol + (c - col0), weights=w, minlength=nrow * ncol)
    raster = raster.reshape(nrow, ncol)
    return _convolve(raster, stencil), col0, row0, h


def quartic_kde_regular(
    cols, rows, counts, size: float, bandwidth: float | None = None, out_cols=None, out_rows=None,
    normalise: bool = True,
) -> np.ndarray:
    """Quartic KDE of per-cell counts on a regular grid, sampled at cells.

    Parameters
    ----------
    cols, rows : int arrays (n,)
        Grid keys; cell ``(c, r)`` has its centre at ``(x0 + c*size, y0 + r*size)``.
    counts : array (n,)
        Cases per cell (treated as located at the cell centre).
    size : float
        Cell edge length in metres.
    bandwidth : float, optional
        Kernel radius ``h`` in metres; default :func:`default_bandwidth` of
        the count-weighted cell centres.
    out_cols, out_rows : int arrays, optional
        Cells at which to return the density (default: the input cells).
    normalise : bool
        Normalise the stencil to keep each case's whole mass (module docstring).

    Returns
    -------
    density : ndarray, count per km^2 at the requested cell centres. With
    ``normalise=False`` equal (to round-off) to :func:`quartic_kde_grid` on the
    cell centres; normalised, that divided by the stencil's lattice mass.
    """
    dens, col0, row0, _ = quartic_kde_raster(cols, rows, counts, size, bandwidth, normalise)
    oc = np.asarray(cols if out_cols is None else out_cols, dtype=np.int64).ravel() - col0
    orow = np.asarray(rows if out_rows is None else out_rows, dtype=np.int64).ravel() - row0
    out = np.zeros(oc.size)
    if dens.size == 0:
        return out
    inside = (oc >= 0) & (oc < dens.shape[1]) & (orow >= 0) & (orow < dens.shape[0])
    out[inside] = dens[orow[inside], oc[inside]]
    return out
