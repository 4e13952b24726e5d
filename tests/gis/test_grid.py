
import numpy as np
import pytest
import shapely

from gis.grid import (
    RegularGridCells,
    assign_codes,
    assign_to_areas,
    cell_square,
    generate_regular_grid,
    reading_order_keys,
    split_cells_into_blocks,
    validate_cell_code,
    voronoi_partition,
)
from tests.gis.shapes import haimen_boundary, synthetic_boundary


def test_cell_square():
    assert cell_square(3, -2, 100.0).equals(shapely.box(300, -200, 400, -100))
    squares = cell_square(np.array([0, 1]), np.array([0, 0]), 50.0)
    assert shapely.area(squares).tolist() == [2500.0, 2500.0]


def test_regular_grid_synthetic():
    boundary = synthetic_boundary()
    cells = generate_regular_grid(boundary, 100.0)
    assert isinstance(cells, RegularGridCells) and len(cells) == len(cells.geoms)
    # Exact cover of the boundary, cells aligned to floor(x / size), no overlaps.
    assert shapely.area(cells.geoms).sum() == pytest.approx(boundary.area, rel=1e-12)
    assert shapely.union_all(cells.geoms).symmetric_difference(boundary).area < 1e-6
    squares = cell_square(cells.cols, cells.rows, 100.0)
    assert shapely.covers(squares, cells.geoms).all()
    assert np.all(shapely.equals(squares[~cells.partial], cells.geoms[~cells.partial]))
    assert np.all(shapely.area(cells.geoms[cells.partial]) < 10_000.0)
    assert np.all(shapely.area(cells.geoms) > 0)
    assert set(np.unique(shapely.get_type_id(cells.geoms))) <= {3, 6}
    assert len(set(zip(cells.cols.tolist(), cells.rows.tolist(), strict=True))) == len(cells)
    # Sorted by row descending, then column ascending.
    order = np.lexsort((cells.cols, -cells.rows))
    np.testing.assert_array_equal(order, np.arange(len(cells)))
    # Cells over the hole are gone.
    assert not ((cells.cols == 15) & (cells.rows == 25)).any()
    assert (
        cells.cols.min() == 10
        and cells.rows.min() == 20
        and cells.cols.max() == 29
        and cells.rows.max() == 39
    )


def test_regular_grid_boundary_on_grid_lines():
    cells = generate_regular_grid(shapely.box(0, 0, 300, 200), 100.0)
    assert len(cells) == 6 and not cells.partial.any()
    cells = generate_regular_grid(shapely.box(-50, -50, 150, 50), 100.0)
    assert len(cells) == 6 and cells.partial.all()
    np.testing.assert_array_equal(cells.cols, [-1, 0, 1, -1, 0, 1])
    np.testing.assert_array_equal(cells.rows, [0, 0, 0, -1, -1, -1])


def test_regular_grid_rejects():
    with pytest.raises(ValueError):
        generate_regular_grid(shapely.LineString([(0, 0), (1, 1)]))
    with pytest.raises(ValueError):
        generate_regular_grid(shapely.box(0, 0, 10, 10), 0.0)
    with pytest.raises(ValueError, match="metres"):
        generate_regular_grid(shapely.box(0, 0, 1e6, 1e6), 0.1)


def test_haimen_grid():
    boundary = haimen_boundary()
    assert 1100e6 < boundary.area < 1200e6
    cells = generate_regular_grid(boundary, 100.0)
    assert 103_500 <= len(cells) <= 126_500  # ~115,000 cells of 1 ha
    assert shapely.area(cells.geoms).sum() == pytest.approx(boundary.area, rel=1e-9)
    assert shapely.is_valid(cells.geoms).all()
    assert 0 < cells.partial.sum() < 0.05 * len(cells)


def test_assign_codes_regular_order():
    # 3 x 2 cells in one community, given in scrambled order.
    cols = np.array([1, 0, 2, 2, 0, 1])
    rows = np.array([0, 1, 1, 0, 0, 1])
    codes = assign_codes(np.full(6, "320614001001"), rows, cols)
    expected = {(0, 1): 1, (1, 1): 2, (2, 1): 3, (0, 0): 4, (1, 0): 5, (2, 0): 6}
    for c, r, code in zip(cols, rows, codes, strict=True):
        assert code == f"320614001001{expected[(c, r)]:03d}"


def test_assign_codes_per_community():
    communities = np.array(["320614001002", "320614001001", "320614001002", "320614001001"])
    codes = assign_codes(communities, np.array([5, 5, 5, 4]), np.array([2, 9, 1, 0]))
    assert codes.tolist() == ["320614001002002", "320614001001001", "320614001002001", "320614001001002"]
    assert all(len(c) == 15 for c in codes)


def test_assign_codes_limits():
    with pytest.raises(ValueError, match="999"):
        assign_codes(np.full(1000, "320614001001"), np.zeros(1000), np.arange(1000))
    assert assign_codes(np.full(999, "320614001001"), np.zeros(999), np.arange(999))[-1] == "320614001001999"
    with pytest.raises(ValueError, match="12 digits"):
        assign_codes(np.array(["32061400100"]), np.zeros(1), np.zeros(1))


def test_reading_order_keys_match_regular_order():
    # On a regular grid every representative point lies inside its square, so the bands are
    # the rows and the irregular rule numbers cells exactly like the regular one.
    cells = generate_regular_grid(synthetic_boundary(), 100.0)
    blocks = split_cells_into_blocks(cells.cols, cells.rows, target=100)
    community = np.char.add("320614001", np.char.zfill(blocks.astype(str), 3))
    regular = assign_codes(community, cells.rows, cells.cols)
    np.testing.assert_array_equal(regular, assign_codes(community, *reading_order_keys(cells.geoms)))
    assert len(np.unique(regular)) == len(cells)


def test_reading_order_keys_irregular():
    # Two bands of cells whose heights vary: the band, not the exact y, orders them.
    geoms = np.array(
        [
            shapely.box(0, 100, 100, 190),  # north band, west
            shapely.box(100, 120, 200, 200),  # north band, east (centre higher than the west one)
            shapely.box(0, 0, 100, 100),  # south band
        ]
    )
    row_key, col_key = reading_order_keys(geoms[[1, 2, 0]])
    codes = assign_codes(np.full(3, "320614001001"), row_key, col_key)
    assert codes.tolist() == ["320614001001002", "320614001001003", "320614001001001"]


def test_validate_cell_code():
    assert validate_cell_code("320614001001001") == "320614001001001"
    assert validate_cell_code(" 32061400100101\n") == "32061400100101"
    for bad in (
        "3206140010010",
        "3206140010010011",
        "32061400100100a",
        "３２０６１４００１００１００１",
        "",
        None,
        320614001001001,
    ):
        with pytest.raises(ValueError):
            validate_cell_code(bad)


def test_assign_to_areas():
    areas = [shapely.box(0, 0, 100, 100), shapely.box(100, 0, 200, 100), shapely.box(0, 100, 200, 200)]
    cells = np.array(
        [
            shapely.box(10, 10, 20, 20),  # in area 0
            shapely.box(150, 50, 160, 60),  # in area 1
            shapely.box(90, 90, 110, 110),  # straddles: representative point decides
            shapely.box(300, 0, 310, 10),  # outside: nearest area is 1
        ]
    )
    result = assign_to_areas(cells, areas)
    assert result[:2].tolist() == [0, 1]
    assert result[2] == int(
        np.argmax(shapely.contains_xy(areas, *shapely.point_on_surface(cells[2]).coords[0]))
    )
    assert result[3] == -1
    assert assign_to_areas(cells, areas, max_distance=None)[3] == 1
    np.testing.assert_array_equal(assign_to_areas(shapely.point_on_surface(cells), areas), result)
    # A point on the border of two areas goes to the lower index.
    assert assign_to_areas([shapely.Point(100, 50)], areas[::-1]).tolist() == [1]
    assert assign_to_areas(cells, areas, max_distance=50)[3] == -1
    assert assign_to_areas(cells, areas, max_distance=150)[3] == 1
    assert assign_to_areas(cells, []).tolist() == [-1, -1, -1, -1]


def test_voronoi_partition():
    boundary = synthetic_boundary()
    rng = np.random.default_rng(3)
    seeds = np.column_stack([rng.uniform(1100, 2900, 7), rng.uniform(2100, 2800, 7)])
    parts = voronoi_partition(boundary, seeds)
    assert len(parts) == 7
    assert sum(p.area for p in parts) == pytest.approx(boundary.area, rel=1e-9)
    for seed, part in zip(seeds, parts, strict=True):
        assert part.intersects(shapely.Point(seed)) == boundary.intersects(shapely.Point(seed))
        if boundary.contains(shapely.Point(seed)):
            assert part.contains(shapely.Point(seed))
    assert voronoi_partition(boundary, seeds[:1])[0].equals(boundary)
    with pytest.raises(ValueError, match="duplicate"):
        voronoi_partition(boundary, np.vstack([seeds, seeds[:1]]))


def test_split_cells_into_blocks():
    cells = generate_regular_grid(haimen_boundary(), 100.0)
    blocks = split_cells_into_blocks(cells.cols, cells.rows, max_cells=999, target=600)
    sizes = np.bincount(blocks)
    assert len(sizes) == -(-len(cells) // 600) and sizes.max() <= 600 and sizes.min() >= 500
    np.testing.assert_array_equal(blocks, split_cells_into_blocks(cells.cols, cells.rows))
    # Compact: each block's bounding box is not much larger than its cell count.
    for b in range(0, len(sizes), 17):
        c, r = cells.cols[blocks == b], cells.rows[blocks == b]
        w, h = np.ptp(c) + 1, np.ptp(r) + 1
        assert max(w, h) <= 4 * min(w, h) or w * h <= 4 * sizes[b]
    small = split_cells_into_blocks(np.arange(10), np.zeros(10), max_cells=4, target=600)
    assert small.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert split_cells_into_blocks(np.arange(5), np.zeros(5)).tolist() == [0] * 5
