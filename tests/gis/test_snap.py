from functools import lru_cache

import numpy as np
import pytest
import shapely

from gis.grid import generate_regular_grid, voronoi_partition
from gis.snap import PolygonGridIndex, RegularGridIndex
from tests.gis.shapes import haimen_boundary, synthetic_boundary


@lru_cache(maxsize=1)
def synthetic():
    cells = generate_regular_grid(synthetic_boundary(), 100.0)
    return cells, RegularGridIndex.from_cells(cells), PolygonGridIndex(cells.geoms)


@lru_cache(maxsize=1)
def haimen():
    boundary = haimen_boundary()
    cells = generate_regular_grid(boundary, 100.0)
    return boundary, cells, RegularGridIndex.from_cells(cells)


def cell_at(cells, col, row):
    (i,) = np.flatnonzero((cells.cols == col) & (cells.rows == row))
    return i


def brute_force(geoms, x, y):
    """Cell intersecting each point (points off every edge), -1 for none."""
    tree = shapely.STRtree(geoms)
    pt, cell = tree.query(shapely.points(x, y), predicate="intersects")
    assert len(np.unique(pt)) == len(pt), "a random point fell on an edge"
    out = np.full(len(x), -1)
    out[pt] = cell
    return out


def random_points(bounds, n, seed):
    rng = np.random.default_rng(seed)
    minx, miny, maxx, maxy = bounds
    return rng.uniform(minx - 50, maxx + 50, n), rng.uniform(miny - 50, maxy + 50, n)


@pytest.mark.parametrize("which", ["regular", "polygon"])
def test_interior_edges_and_corners(which):
    cells, regular, polygon = synthetic()
    index = regular if which == "regular" else polygon
    # Cell (15, 30) and its neighbours are full squares.
    c = cell_at(cells, 15, 30)
    assert not cells.partial[c]
    cases = {
        (1550.0, 3050.0): (15, 30),  # centre
        (1500.0, 3000.0): (15, 30),  # south-west corner: owned
        (1550.0, 3000.0): (15, 30),  # south edge: owned
        (1500.0, 3050.0): (15, 30),  # west edge: owned
        (1600.0, 3050.0): (16, 30),  # east edge: the eastern neighbour's
        (1550.0, 3100.0): (15, 31),  # north edge: the northern neighbour's
        (1600.0, 3100.0): (16, 31),  # north-east corner
        (1600.0, 3000.0): (16, 30),  # south-east corner
        (1500.0, 3100.0): (15, 31),  # north-west corner
        (np.nextafter(1600.0, 0), 3050.0): (15, 30),  # one ulp west of the east edge
    }
    x = np.array([p[0] for p in cases])
    y = np.array([p[1] for p in cases])
    expected = [cell_at(cells, *cr) for cr in cases.values()]
    np.testing.assert_array_equal(index.locate(x, y), expected)


@pytest.mark.parametrize("which", ["regular", "polygon"])
def test_outer_boundary_and_outside(which):
    cells, regular, polygon = synthetic()
    index = regular if which == "regular" else polygon
    boundary = synthetic_boundary()
    # The rings' vertices and points on the hole's axis-parallel edges are exactly on the
    # boundary: inside (closed boundary).
    on = np.concatenate(
        [
            shapely.get_coordinates(boundary),
            np.column_stack([np.linspace(1410.0, 1650.0, 25), np.full(25, 2400.7)]),
            np.column_stack([np.full(25, 1655.1), np.linspace(2410.0, 2600.0, 25)]),
        ]
    )
    got = index.locate(on[:, 0], on[:, 1])
    assert (got >= 0).all()
    assert shapely.intersects_xy(cells.geoms[got], on[:, 0], on[:, 1]).all()
    # Just outside the city and inside the hole.
    out_x = np.array(
        [1013.0, 2000.0, 2995.0, 1500.0, 1500.0, 2500.0, 1020.0, -1e9, 1e300, np.inf, np.nan, 1500.0]
    )
    out_y = np.array(
        [2500.0, 2049.0, 2500.0, 2500.0, 3949.9, 3000.0, 3960.0, 3000.0, 3000.0, 3000.0, 3000.0, np.nan]
    )
    np.testing.assert_array_equal(index.locate(out_x, out_y), -1)
    # The hole's corner at (1400.3, 2400.7) belongs to the cell around it; the north-east
    # corner of the L's east arm, (2990.4, 2870.1), to the cell it touches.
    got = index.locate([1400.3, 2990.4], [2400.7, 2870.1])
    np.testing.assert_array_equal(got, [cell_at(cells, 14, 24), cell_at(cells, 29, 28)])


def test_outer_edge_on_grid_line():
    """Where the outer boundary runs along a grid line on the north or east side, the regular
    index sends the point to the non-existent square beyond (outside); the polygon index, which
    has no squares, keeps the closed boundary."""
    cells = generate_regular_grid(shapely.box(0, 0, 300, 200), 100.0)
    x = [0.0, 0.0, 150.0, 300.0, 150.0, 300.0, 299.999]
    y = [0.0, 100.0, 0.0, 50.0, 200.0, 200.0, 199.999]
    inside = [cell_at(cells, 0, 0), cell_at(cells, 0, 1), cell_at(cells, 1, 0)]
    edge = [cell_at(cells, 2, 0), cell_at(cells, 1, 1), cell_at(cells, 2, 1)]
    last = cell_at(cells, 2, 1)
    np.testing.assert_array_equal(
        RegularGridIndex.from_cells(cells).locate(x, y), inside + [-1, -1, -1, last]
    )
    np.testing.assert_array_equal(PolygonGridIndex(cells.geoms).locate(x, y), inside + edge + [last])


@pytest.mark.parametrize("size", [100.0, 33.3, 0.3])
def test_edges_exact_for_any_cell_size(size):
    """An edge is at col * size as computed in float64; floor(x / size) alone misplaces points
    on or one ulp west of some of these edges when size is not exactly representable."""
    k = np.arange(1.0, 400.0)
    edge = k * size
    along = np.concatenate([edge, np.nextafter(edge, 0.0)])
    across = np.full(len(along), size / 2)
    expected = np.concatenate([k, k - 1]).astype(np.int64)
    row_of_cells = generate_regular_grid(shapely.box(0.0, 0.0, 400 * size, size), size)
    column_of_cells = generate_regular_grid(shapely.box(0.0, 0.0, size, 400 * size), size)
    for cells, x, y, key in ((row_of_cells, along, across, "cols"), (column_of_cells, across, along, "rows")):
        for index in (RegularGridIndex.from_cells(cells), PolygonGridIndex(cells.geoms)):
            np.testing.assert_array_equal(getattr(cells, key)[index.locate(x, y)], expected)


def test_shapes_and_scalars():
    cells, regular, polygon = synthetic()
    for index in (regular, polygon):
        assert index.locate(1550.0, 3050.0).shape == ()
        assert int(index.locate(1550.0, 3050.0)) == cell_at(cells, 15, 30)
        assert index.locate(np.full((2, 3), 1550.0), 3050.0).shape == (2, 3)
        assert index.locate([], []).shape == (0,)
        assert index.locate([1550.0], [3050.0]).dtype == np.int64


def test_polygon_index_agrees_with_regular_index():
    cells, regular, polygon = synthetic()
    x, y = random_points(synthetic_boundary().bounds, 200_000, seed=4)
    got = regular.locate(x, y)
    np.testing.assert_array_equal(polygon.locate(x, y), got)
    np.testing.assert_array_equal(got, brute_force(cells.geoms, x, y))
    # All grid vertices and edge midpoints (including those on the boundary's clipped cells).
    gx, gy = np.meshgrid(np.arange(950.0, 3100.0, 50.0), np.arange(1950.0, 4100.0, 50.0))
    np.testing.assert_array_equal(polygon.locate(gx, gy), regular.locate(gx, gy))


def test_polygon_index_irregular_cells():
    boundary = synthetic_boundary()
    rng = np.random.default_rng(5)
    seeds = np.column_stack([rng.uniform(1000, 3000, 400), rng.uniform(2000, 4000, 400)])
    geoms = np.array([g for g in voronoi_partition(boundary, seeds) if not g.is_empty])
    index = PolygonGridIndex(geoms)
    x, y = random_points(boundary.bounds, 100_000, seed=6)
    np.testing.assert_array_equal(index.locate(x, y), brute_force(geoms, x, y))
    # Vertices and edge midpoints, many of them shared by 2-3 cells, against the rule.
    edges = shapely.get_coordinates(shapely.boundary(geoms))
    px = np.concatenate([edges[:, 0], (edges[1:, 0] + edges[:-1, 0]) / 2])
    py = np.concatenate([edges[:, 1], (edges[1:, 1] + edges[:-1, 1]) / 2])
    bounds = shapely.bounds(geoms)
    delta = 1e-8 * np.median(bounds[:, 2] - bounds[:, 0])
    got = index.locate(px, py)
    tree = shapely.STRtree(geoms)
    pt, cell = tree.query(shapely.points(px, py), predicate="intersects")
    n_ties = 0
    for i in range(len(px)):
        cands = np.sort(cell[pt == i])
        if len(cands) > 1:
            n_ties += 1
            nudged = cands[
                shapely.intersects_xy(geoms[cands], px[i] + delta, py[i] + 0.6180339887498949 * delta)
            ]
            cands = nudged if len(nudged) else cands
        assert got[i] == (cands[0] if len(cands) else -1)
    assert n_ties > 500


def test_haimen_regular_index_is_exact():
    boundary, cells, index = haimen()
    assert 103_500 <= len(cells) <= 126_500
    x, y = random_points(boundary.bounds, 20_000, seed=7)
    got = index.locate(x, y)
    assert 0.3 < (got >= 0).mean() < 0.8
    np.testing.assert_array_equal(got, brute_force(cells.geoms, x, y))
    # Points in boundary cells specifically.
    part = np.flatnonzero(cells.partial)
    squares = shapely.bounds(cells.geoms[part])
    rng = np.random.default_rng(8)
    k = rng.integers(0, len(part), 20_000)
    px = rng.uniform(squares[k, 0], squares[k, 2])
    py = rng.uniform(squares[k, 1], squares[k, 3])
    np.testing.assert_array_equal(index.locate(px, py), brute_force(cells.geoms, px, py))


def test_haimen_polygon_index_matches():
    boundary, cells, regular = haimen()
    polygon = PolygonGridIndex(cells.geoms)
    x, y = random_points(boundary.bounds, 200_000, seed=9)
    np.testing.assert_array_equal(polygon.locate(x, y), regular.locate(x, y))


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        RegularGridIndex([0, 0], [0, 0], 100.0, [shapely.box(0, 0, 100, 100)] * 2, [False, False])
    with pytest.raises(ValueError):
        RegularGridIndex([], [], 100.0, np.array([], dtype=object), np.array([], dtype=bool))
    with pytest.raises(ValueError):
        PolygonGridIndex([shapely.Point(0, 0)])
