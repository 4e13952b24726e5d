import numpy as np
import pytest
from scipy import integrate

from gis.heat import (
    default_bandwidth,
    quartic_kde_grid,
    quartic_kde_raster,
    quartic_kde_regular,
    quartic_kernel,
    quartic_stencil,
)


def test_kernel_integrates_to_one_and_peak_value():
    h = 350.0
    mass, _ = integrate.quad(lambda r: 2 * np.pi * r * quartic_kernel(r, h), 0, h)
    assert mass == pytest.approx(1.0, rel=1e-12)
    assert quartic_kernel(0.0, h) == pytest.approx(3 / (np.pi * h * h))
    assert quartic_kernel(h, h) == 0.0 and quartic_kernel(2 * h, h) == 0.0


def test_units_count_per_km2():
    # One case, h = 1 km: density at the point is 3/pi cases per km^2.
    d = quartic_kde_grid([0.0], [0.0], [1.0], [0.0, 500.0], [0.0, 0.0], 1000.0)
    np.testing.assert_allclose(d, [3 / np.pi, 3 / np.pi * 0.75**2])


def test_mass_conservation_fine_grid():
    rng = np.random.default_rng(0)
    px, py = rng.uniform(1000, 2000, 40), rng.uniform(1000, 2000, 40)
    w = rng.integers(1, 20, 40).astype(float)
    step = 10.0  # 10 m evaluation grid, bandwidth 300 m
    g = np.arange(500, 2500, step) + step / 2
    gx, gy = np.meshgrid(g, g)
    dens = quartic_kde_grid(px, py, w, gx.ravel(), gy.ravel(), 300.0)
    cell_km2 = (step / 1000.0) ** 2
    assert dens.sum() * cell_km2 == pytest.approx(w.sum(), rel=1e-4)


def test_mass_conservation_regular_grid():
    rng = np.random.default_rng(1)
    cols, rows = rng.integers(20, 80, 300), rng.integers(20, 80, 300)
    counts = rng.poisson(5, 300).astype(float)
    dens, *_ = quartic_kde_raster(cols, rows, counts, size=100.0, bandwidth=500.0)
    assert dens.sum() * 0.1**2 == pytest.approx(counts.sum(), rel=2e-3)


@pytest.mark.parametrize("h", [300.0, 450.0, 1000.0])
def test_symmetry_single_cell(h):
    dens, col0, row0, _ = quartic_kde_raster([10], [20], [7.0], size=50.0, bandwidth=h, normalise=False)
    np.testing.assert_allclose(dens, dens[::-1, :], atol=1e-12 * dens.max())
    np.testing.assert_allclose(dens, dens[:, ::-1], atol=1e-12 * dens.max())
    np.testing.assert_allclose(dens, dens.T, atol=1e-12 * dens.max())
    assert dens[20 - row0, 10 - col0] == pytest.approx(7.0 * 3 / (np.pi * h * h) * 1e6)
    np.testing.assert_array_equal(quartic_stencil(50.0, h), quartic_stencil(50.0, h)[::-1, ::-1])
    np.testing.assert_array_equal(quartic_stencil(50.0, h), quartic_stencil(50.0, h).T)


@pytest.mark.parametrize("h", [430.0, 2000.0])  # small stencil (direct) and large (FFT)
def test_regular_convolution_equals_direct_sum(h):
    rng = np.random.default_rng(2)
    size = 100.0
    cols, rows = np.meshgrid(np.arange(-30, 30), np.arange(500, 550))
    cols, rows = cols.ravel(), rows.ravel()
    keep = rng.random(cols.size) < 0.6
    cols, rows = cols[keep], rows[keep]
    counts = rng.poisson(rng.gamma(0.5, 4, cols.size)).astype(float)
    x0, y0 = 500_000.0, 3_300_000.0  # projected-looking offsets
    cx, cy = x0 + cols * size, y0 + rows * size
    ref = quartic_kde_grid(cx, cy, counts, cx, cy, h)
    got = quartic_kde_regular(cols, rows, counts, size, h, normalise=False)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9 * ref.max())
    # normalised (the default): the same divided by the lattice mass of the sampled kernel
    lattice = quartic_stencil(size, h, normalise=False).sum() * (size / 1000) ** 2
    np.testing.assert_allclose(quartic_kde_regular(cols, rows, counts, size, h), ref / lattice, rtol=0,
                               atol=1e-9 * ref.max())
    # Cells outside the input (zero count, incl. beyond the bounding box).
    oc, orow = np.array([-40, -31, 0, 29, 35]), np.array([520, 499, 560, 549, 525])
    ref_o = quartic_kde_grid(cx, cy, counts, x0 + oc * size, y0 + orow * size, h)
    got_o = quartic_kde_regular(cols, rows, counts, size, h, out_cols=oc, out_rows=orow, normalise=False)
    np.testing.assert_allclose(got_o, ref_o, rtol=0, atol=1e-9 * ref.max())
    # FFT round-off is cleaned: cells farther than h from every case are exactly 0.
    dens, c0, r0, _ = quartic_kde_raster(cols, rows, counts, size, h)
    assert dens.min() >= 0.0


@pytest.mark.parametrize("h", [30.0, 50.0, 100.0, 150.0, 200.0, 290.0])
def test_small_bandwidth_keeps_the_whole_mass(h):
    """Unnormalised, the sampled stencil holds 0.95 (h = 1 cell) to 3.8 (h = half a cell) of the mass;
    normalised, every case puts exactly its weight on the lattice, at any bandwidth."""
    rng = np.random.default_rng(4)
    cols, rows = rng.integers(20, 80, 200), rng.integers(20, 80, 200)
    counts = rng.poisson(3, 200).astype(float) + 1
    dens, *_ = quartic_kde_raster(cols, rows, counts, size=100.0, bandwidth=h)
    assert dens.sum() * 0.1**2 == pytest.approx(counts.sum(), rel=1e-12)
    raw, *_ = quartic_kde_raster(cols, rows, counts, size=100.0, bandwidth=h, normalise=False)
    if h <= 100:  # a one-cell stencil: 3 / (pi h^2) times the cell area
        assert raw.sum() * 0.1**2 == pytest.approx(counts.sum() * 3 / np.pi * (100 / h) ** 2, rel=1e-12)


def test_default_bandwidth_rule():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0, 800, 500), rng.normal(0, 300, 500)
    mx, my = x.mean(), y.mean()
    d = np.hypot(x - mx, y - my)
    sd = np.sqrt(np.mean(d**2))
    dm = np.median(d) if d.size % 2 else np.sort(d)[d.size // 2 - 1]  # lower median
    expected = 0.9 * min(sd, np.sqrt(1 / np.log(2)) * dm) * 500**-0.2
    assert default_bandwidth(x, y) == pytest.approx(expected, rel=1e-12)
    # Integer weights behave as repeated points (n = sum of weights).
    w = rng.integers(1, 5, 500)
    h_w = default_bandwidth(x, y, w)
    assert h_w == pytest.approx(default_bandwidth(np.repeat(x, w), np.repeat(y, w)), rel=1e-12)
