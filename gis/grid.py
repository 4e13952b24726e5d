"""The unit grid (万米单元网格): generation, codes, area assignment and demo partitions.

All geometry is in a projected working CRS in metres. A regular cell (col, row) of size s is the
square [col*s, (col+1)*s) x [row*s, (row+1)*s), with col = floor(x/s) and row = floor(y/s), the
rule of PostGIS ST_SquareGrid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import shapely

__all__ = [
    "RegularGridCells",
    "cell_square",
    "generate_regular_grid",
    "reading_order_keys",
    "assign_codes",
    "validate_cell_code",
    "assign_to_areas",
    "voronoi_partition",
    "split_cells_into_blocks",
]

_MAX_CANDIDATES = 50_000_000  # bbox cells; beyond this the size is surely wrong for the CRS
_TILE = 16  # boundary cells are clipped against a 16 x 16-cell piece of the boundary, not all of it
_POLYGONAL = (3, 6)  # shapely type ids of Polygon and MultiPolygon


@dataclass(frozen=True, eq=False)
class RegularGridCells:
    """Cells of a regular grid, sorted by (row descending, col ascending).

    geoms holds each cell clipped to the boundary (Polygon or MultiPolygon); partial is True
    where the square is not contained in the boundary, i.e. where the geometry is clipped.
    """

    cols: np.ndarray  # int64
    rows: np.ndarray  # int64
    geoms: np.ndarray  # shapely geometries
    partial: np.ndarray  # bool
    size: float

    def __len__(self) -> int:
        return len(self.cols)


def cell_square(col, row, size: float):
    """The full square(s) of regular cell(s) (col, row); scalars or arrays."""
    col = np.asarray(col, dtype=np.float64)
    row = np.asarray(row, dtype=np.float64)
    return shapely.box(col * size, row * size, (col + 1.0) * size, (row + 1.0) * size)


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    """Drop the point and line parts that overlay operations may add to a polygonal result."""
    geoms = geoms.copy()
    for i in np.flatnonzero(shapely.get_type_id(geoms) == 7):  # GeometryCollection
        parts = shapely.get_parts(geoms[i])
        polys = parts[np.isin(shapely.get_type_id(parts), _POLYGONAL)]
        geoms[i] = shapely.union_all(polys) if len(polys) else shapely.Polygon()
    return geoms


def generate_regular_grid(boundary, size: float = 100.0) -> RegularGridCells:
    """Square cells of `size` metres covering a (Multi)Polygon boundary, clipped to it.

    Cells are aligned to multiples of size (col = floor(x/size), row = floor(y/size)); a cell is
    kept when its intersection with the boundary has positive area. Squares contained in the
    boundary are kept whole; the others are intersected with the boundary.
    """
    if shapely.get_type_id(boundary) not in _POLYGONAL or shapely.is_empty(boundary):
        raise ValueError("boundary must be a non-empty Polygon or MultiPolygon")
    if not (np.isfinite(size) and size > 0):
        raise ValueError(f"cell size must be a positive number, got {size}")
    minx, miny, maxx, maxy = shapely.bounds(boundary)
    c0, r0 = int(np.floor(minx / size)), int(np.floor(miny / size))
    c1, r1 = int(np.ceil(maxx / size)), int(np.ceil(maxy / size))  # exclusive
    if (c1 - c0) * (r1 - r0) > _MAX_CANDIDATES:
        raise ValueError(f"{(c1 - c0) * (r1 - r0)} candidate cells: is the boundary in metres?")
    rows, cols = np.meshgrid(np.arange(r1 - 1, r0 - 1, -1), np.arange(c0, c1), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    squares = cell_square(cols, rows, size)

    shapely.prepare(boundary)
    full = shapely.contains(boundary, squares)
    edge = np.flatnonzero(~full & shapely.intersects(boundary, squares))

    # Clip each edge cell against the piece of the boundary in its tile, so that the cost of
    # an intersection does not grow with the vertex count of the whole boundary.
    tile_keys = np.stack([(cols[edge] - c0) // _TILE, (rows[edge] - r0) // _TILE], axis=1)
    tiles, tile_of = np.unique(tile_keys, axis=0, return_inverse=True)
    tc, tr = tiles[:, 0] * _TILE + c0, tiles[:, 1] * _TILE + r0
    pieces = shapely.intersection(
        shapely.box(tc * size, tr * size, (tc + _TILE) * size, (tr + _TILE) * size), boundary
    )
    clipped = _polygonal(shapely.intersection(squares[edge], pieces[tile_of.ravel()]))

    geoms = squares.copy()
    geoms[edge] = clipped
    keep = full.copy()
    keep[edge] = shapely.area(clipped) > 0.0
    return RegularGridCells(
        cols=cols[keep].astype(np.int64),
        rows=rows[keep].astype(np.int64),
        geoms=geoms[keep],
        partial=~full[keep],
        size=float(size),
    )


# --- Codes -----------------------------------------------------------------------------------

_COMMUNITY_RE = re.compile(r"[0-9]{12}")
_CELL_CODE_RE = re.compile(r"[0-9]{14,15}")


def reading_order_keys(geoms) -> tuple[np.ndarray, np.ndarray]:
    """(row_key, col_key) that number irregular cells west→east, north→south.

    Each cell is represented by shapely.point_on_surface; row_key = floor(y / h) with h the
    median cell height (bounding boxes), i.e. horizontal bands of one typical cell; col_key = x.
    """
    geoms = np.asarray(geoms)
    bounds = shapely.bounds(geoms)
    h = float(np.median(bounds[:, 3] - bounds[:, 1]))
    if not h > 0:
        raise ValueError("cannot order cells: median cell height is not positive")
    pts = shapely.point_on_surface(geoms)
    return np.floor(shapely.get_y(pts) / h).astype(np.int64), shapely.get_x(pts)


def assign_codes(community_codes, row_key, col_key) -> np.ndarray:
    """15-digit cell codes: 12-digit community code + 3-digit sequence (001-999).

    Within each community, cells are numbered north→south by row_key descending, then
    west→east by col_key ascending, ties in input order. For a regular grid pass (rows, cols);
    for an irregular one use reading_order_keys(geoms). Raises ValueError for a community code
    that is not 12 digits or a community with more than 999 cells.
    """
    community_codes = np.asarray(community_codes, dtype=str)
    row_key, col_key = np.asarray(row_key), np.asarray(col_key)
    if not community_codes.shape == row_key.shape == col_key.shape or community_codes.ndim != 1:
        raise ValueError("community_codes, row_key and col_key must be 1-D arrays of equal length")
    names, group = np.unique(community_codes, return_inverse=True)
    for name in names:
        if not _COMMUNITY_RE.fullmatch(name):
            raise ValueError(
                f"community code {name!r} is not 12 digits (district 6 + street 3 + community 3)"
            )
    counts = np.bincount(group, minlength=len(names))
    if counts.size and counts.max() > 999:
        worst = int(np.argmax(counts))
        raise ValueError(f"community {names[worst]} has {counts[worst]} cells; a 3-digit sequence allows 999")
    order = np.lexsort((col_key, -row_key, group))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    seq = np.empty(len(order), dtype=np.int64)
    seq[order] = np.arange(len(order)) - starts[group[order]] + 1
    return np.char.add(community_codes, np.char.zfill(seq.astype(str), 3))


def validate_cell_code(code: str) -> str:
    """Return the code if it is a 15-digit (or legacy 14-digit, 2-digit sequence) cell code.

    Surrounding whitespace is removed; anything but ASCII digits raises ValueError.
    """
    if not isinstance(code, str):
        raise ValueError(f"cell code must be a string, got {type(code).__name__}")
    code = code.strip()
    if not _CELL_CODE_RE.fullmatch(code):
        raise ValueError(f"invalid cell code {code!r}: expected 15 digits (or 14 with a 2-digit sequence)")
    return code


# --- Areas -----------------------------------------------------------------------------------


def assign_to_areas(cell_geoms, area_geoms, max_distance: float | None = 0.0) -> np.ndarray:
    """Index of the area (street, community...) each cell belongs to, -1 for none.

    A cell goes to the area that contains its representative point (shapely.point_on_surface;
    points may be passed as they are), the lowest area index if several do. A cell whose point
    is in no area stays -1 by default; with max_distance > 0 it goes to the nearest area within
    that distance, with None to the nearest area at any distance.
    """
    pts = shapely.point_on_surface(np.asarray(cell_geoms))
    area_geoms = np.asarray(area_geoms)
    out = np.full(len(pts), -1, dtype=np.int64)
    if len(area_geoms) == 0 or len(pts) == 0:
        return out
    tree = shapely.STRtree(area_geoms)
    _first_match(out, tree.query(pts, predicate="intersects"))
    missing = np.flatnonzero(out < 0)
    if len(missing) and (max_distance is None or max_distance > 0):
        pairs = tree.query_nearest(pts[missing], max_distance=max_distance, all_matches=True)
        pairs[0] = missing[pairs[0]]
        _first_match(out, pairs)
    return out


def _first_match(out: np.ndarray, pairs: np.ndarray) -> None:
    """out[i] = lowest tree index paired with input i, for the inputs present in pairs."""
    src, dst = pairs
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    first = np.ones(len(src), dtype=bool)
    first[1:] = src[1:] != src[:-1]
    out[src[first]] = dst[first]


# --- Demo partitions -------------------------------------------------------------------------


def voronoi_partition(boundary, seeds_xy) -> list:
    """Voronoi regions of the seeds clipped to the boundary, in seed order.

    A made-up partition (e.g. pseudo-streets) for a city whose inner borders are unknown. A
    seed whose region misses the boundary gets an empty polygon.
    """
    seeds = np.asarray(seeds_xy, dtype=np.float64)
    if seeds.ndim != 2 or seeds.shape[1] != 2 or len(seeds) == 0:
        raise ValueError("seeds_xy must be an (n, 2) array with n >= 1")
    if len(np.unique(seeds, axis=0)) != len(seeds):
        raise ValueError("seeds_xy contains duplicate points")
    if len(seeds) == 1:
        return [boundary]
    regions = shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=boundary, ordered=True)
    clipped = _polygonal(shapely.intersection(shapely.get_parts(regions), boundary))
    return list(clipped)


def split_cells_into_blocks(cols, rows, max_cells: int = 999, target: int = 600) -> np.ndarray:
    """Group cells into k = ceil(n / target) compact blocks of at most min(target, max_cells).

    Deterministic recursive bisection: a set meant for k blocks is sorted along its longer
    axis (cols west→east, or rows north→south; ties by the other axis) and cut at
    floor(n * (k // 2) / k) into sets for k // 2 and k - k // 2 blocks. Block ids run 0..k-1
    in recursion order (west or north part first). Used for pseudo-communities.
    """
    cols = np.asarray(cols, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    cap = min(int(target), int(max_cells))
    if cap < 1:
        raise ValueError("target and max_cells must be >= 1")
    if cols.shape != rows.shape or cols.ndim != 1:
        raise ValueError("cols and rows must be 1-D arrays of equal length")
    out = np.empty(len(cols), dtype=np.int64)
    next_id = 0
    stack = [(np.arange(len(cols)), -(-len(cols) // cap))]
    while stack:
        idx, k = stack.pop()
        if k <= 1:
            out[idx] = next_id
            next_id += 1
            continue
        c, r = cols[idx], rows[idx]
        order = np.lexsort((-r, c)) if np.ptp(c) >= np.ptp(r) else np.lexsort((c, -r))
        k1 = k // 2
        n1 = len(idx) * k1 // k
        stack.append((idx[order[n1:]], k - k1))  # popped second
        stack.append((idx[order[:n1]], k1))
    return out
